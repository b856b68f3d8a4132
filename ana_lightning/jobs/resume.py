"""Resuming a training run: which checkpoint (``ckpt_path=last``, a file, a SLURM requeue), into which
run folder, whether the run is already finished (``training_finished.json``), and the checks that a
checkpoint can be resumed with this config. Used by :func:`ana_lightning.jobs.train.train`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from ..distributed import global_rank, requeue_checkpoint, sweep_dir
from ..utils import CheckpointError, UnsafeCheckpointError, find_last_checkpoint, read_checkpoint

__all__ = [
    "FINISHED",
    "resume_point",
    "check_same_split",
    "is_sweep_job",
    "check_resume_fits",
    "mark_finished",
    "finished_run",
    "resume_step",
    "read_metrics",
]

log = logging.getLogger(__name__)


def resume_point(cfg: DictConfig, run_dir: Path) -> tuple[str | None, Path]:
    """The checkpoint this training job continues from (``ckpt_path``; else, when SLURM requeued the
    job, its ``last.ckpt``) and the run folder it writes into: the interrupted run's own folder when
    the checkpoint belongs to another run (its best checkpoint, logs and reports stay together;
    ``resumed_into.txt`` in this job's folder says where). ``cfg.paths.output_dir`` follows."""
    resume = _resolve_ckpt(cfg.get("ckpt_path"), run_dir, cfg) if cfg.get("train", True) else None
    if resume is None and cfg.get("train", True) and (requeued := requeue_checkpoint(run_dir)) is not None:
        log.info("SLURM restarted this job: resuming from %s", requeued)  # preempted and requeued
        resume = _resumable(str(requeued), "last (SLURM requeue)", cfg)
    if resume and Path(resume).parent.name == "checkpoints" and Path(resume).parent.parent != run_dir:
        # Continue in the interrupted run's folder: its best checkpoint, logs and reports stay together.
        old = Path(resume).parent.parent
        if global_rank() == 0:
            (run_dir / "resumed_into.txt").write_text(
                f"this job resumed {resume}; its outputs are in {old}\n"
            )
        log.info("resuming the run in %s", old)
        with open_dict(cfg):
            cfg.paths.output_dir = str(old)
        run_dir = old
    return resume, run_dir


def _resolve_ckpt(ckpt_path: str | None, run_dir: Path, cfg: DictConfig) -> str | None:
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        if is_sweep_job(run_dir) and not (run_dir / "checkpoints" / "last.ckpt").is_file():
            # a sweep run again into its folder: this job never saved a checkpoint (it had not started, or failed
            # before its first epoch ended); another run's last.ckpt is not this job's
            log.info("ckpt_path=last: %s has no last.ckpt, so this sweep job starts afresh", run_dir)
            return None
        found = find_last_checkpoint(run_dir, Path(cfg.paths.log_dir) / cfg.task_name / "runs")
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path=last: no last.ckpt in {run_dir} or in earlier runs under {Path(cfg.paths.log_dir) / cfg.task_name}"
            )
        log.info("resuming from %s", found)
        return _resumable(str(found), ckpt_path, cfg)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    return _resumable(ckpt_path, ckpt_path, cfg)


def is_sweep_job(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is the folder of one job of a Hydra multirun: Hydra says so, or the folder above
    holds the sweep's ``multirun.yaml`` (the DDP ranks of a sweep job run its command in run mode)."""
    return sweep_dir() is not None or (Path(run_dir).parent / "multirun.yaml").is_file()


#: The data settings that decide which images a run trains on and which it tests on.
SPLIT_KEYS = (
    "reader",
    "level",
    "classes",
    "csv",
    "group_column",
    "grouping",
    "group_min_size",
    "group_level",
    "near_duplicates",
    "split_fractions",
    "seed",
    "split_order",
    "split_manifest",
    "folds",
    "fold",
    "repeats",
    "repeat",
)


def check_same_split(ckpt: Mapping[str, Any], path: str, cfg: DictConfig) -> None:
    """A checkpoint (loaded from ``path``) resumed with another split than the one it was trained on (another
    ``data.fold`` or ``data.seed``, a sweep run again with its folds in another order) would go on training on
    images this job tests on: refused, naming the settings that differ. Checkpoints without stored data
    settings pass."""
    from ..data.run_config import stored_data_state

    stored = stored_data_state(ckpt)
    if stored is None or cfg.get("data") is None:
        return
    saved = stored[0]
    own = {k: _plain(cfg.data[k]) for k in SPLIT_KEYS if k in cfg.data}
    differ = [
        f"data.{k}: checkpoint {saved[k]!r}, this job {own[k]!r}"
        for k in SPLIT_KEYS
        if k in saved and k in own and _plain(saved[k]) != own[k]
    ]
    if differ:
        raise CheckpointError(
            f"ckpt_path: {path} was trained on another split than this job's ({'; '.join(differ)}): resuming it "
            "would go on training on images this job keeps apart. In a sweep run again into its folder, give the "
            "sweep list as it was first given (each job folder holds its own job's checkpoint); otherwise start "
            "afresh without ckpt_path."
        )


def _plain(value: Any) -> Any:
    """A config value as plain Python, lists and tuples alike (a split's fractions come back as either)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _resumable(path: str, asked: str, cfg: DictConfig) -> str:
    """``path`` if it reads as a Lightning checkpoint of this job's split (:func:`check_same_split`); a
    truncated file (a run killed while writing it, a copy cut short) is a :class:`CheckpointError` naming it,
    not a traceback from torch."""
    try:
        ckpt = read_checkpoint(path, trust_checkpoint=bool(cfg.get("trust_checkpoint")))
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"ckpt_path={asked}: {e}") from None
    except CheckpointError as e:
        raise CheckpointError(
            f"ckpt_path={asked}: cannot resume from {path}: {e} Resume from another checkpoint of that run "
            "(checkpoints/best-epoch*.ckpt) or start afresh without ckpt_path."
        ) from None
    check_same_split(ckpt, path, cfg)
    return path


def check_resume_fits(path: str, model: L.LightningModule, trust_checkpoint: bool) -> None:
    """Resuming with another architecture or class list: a message naming the file and what differs,
    before the run folder changes (not Lightning's dump of state-dict keys)."""
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    saved = ckpt["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    shapes = [
        k
        for k in own
        if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or extra or shapes):
        return
    hp = ckpt.get("hyper_parameters") or {}
    differ = []
    for key in ("backbone", "class_names", "num_classes", "image_size"):
        a, b = hp.get(key), model.hparams.get(key)
        if a is not None and b is not None and a != b:
            differ.append(f"{key}: checkpoint {a!r}, this config {b!r}")
    detail = "; ".join(differ) or (
        f"{len(missing)} weights missing from it (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}), "
        f"{len(shapes)} of another shape (e.g. {shapes[:2]})"
    )
    raise CheckpointError(
        f"ckpt_path: {path} was trained with another model than this config builds ({detail}). Resume with the "
        "model settings of that run (its config_resolved.yaml), or start afresh without ckpt_path."
    )


FINISHED = "training_finished.json"


def mark_finished(trainer: L.Trainer, run_dir: Path) -> None:
    """Record that ``fit`` ran to its end (not killed, preempted or interrupted), and why it stopped."""
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        why = "max_steps"
    elif trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs:
        why = "max_epochs"
    else:
        why = "early_stopping"
    epochs, step = int(trainer.current_epoch), int(trainer.global_step)
    last = run_dir / "checkpoints" / "last.ckpt"
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    spawned = trainer.world_size > 1 and isinstance(
        getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher
    )
    if spawned and last.is_file():  # ddp_spawn: the loop state stayed in the workers
        ckpt = read_checkpoint(last)
        epochs, step = int(ckpt.get("epoch", -1)) + 1, int(ckpt.get("global_step", 0))
        why = "max_epochs" if trainer.max_epochs not in (None, -1) and epochs >= trainer.max_epochs else why
    record = {"epochs": epochs, "global_step": step, "stopped_by": why}
    (run_dir / FINISHED).write_text(json.dumps(record, indent=1) + "\n")


def finished_run(resume: str, run_dir: Path, cfg: DictConfig) -> dict | None:
    """The finish record of the run that ``resume`` belongs to when resuming it would train nothing
    more (same limits, same last.ckpt), else None; says so in the log."""
    record_path = run_dir / FINISHED
    if not record_path.is_file() or Path(resume).name.startswith("hpc_ckpt"):
        return None
    record = json.loads(record_path.read_text())
    trust = bool(cfg.get("trust_checkpoint"))
    if int(read_checkpoint(resume, trust_checkpoint=trust).get("global_step", -1)) != record["global_step"]:
        return None  # a checkpoint from before the end (e.g. a best-*.ckpt named explicitly)
    max_epochs = cfg.trainer.get("max_epochs")
    max_steps = cfg.trainer.get("max_steps")
    more_epochs = max_epochs in (None, -1) or int(max_epochs) > record["epochs"]
    more_steps = max_steps in (None, -1) or int(max_steps) > record["global_step"]
    stopped_early = record["stopped_by"] == "early_stopping" and bool(
        (cfg.get("callbacks") or {}).get("early_stopping")
    )
    if more_epochs and more_steps and not stopped_early:
        return None
    log.warning(
        "the run in %s is finished (%d epochs, %d optimizer steps, stopped by %s): nothing to resume; its curves stay in "
        "%s. To train on, raise trainer.max_epochs / trainer.max_steps%s.",
        run_dir,
        record["epochs"],
        record["global_step"],
        record["stopped_by"],
        run_dir / "csv" / "metrics.csv",
        " and switch early stopping off (callbacks.early_stopping=null)" if stopped_early else "",
    )
    return record


def resume_step(resume: str | None, run_dir: Path, trust_checkpoint: bool = False) -> int | None:
    """The optimizer step the run continues from: of ``resume``, or of the HPC checkpoint that
    Lightning resumes a requeued SLURM job from by itself."""
    if resume is None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        hpc = sorted(
            run_dir.glob("hpc_ckpt_*.ckpt"),
            key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if p.stem.rsplit("_", 1)[-1].isdigit() else -1,
        )
        if not hpc or not SLURMEnvironment.detect():
            return None
        resume = str(hpc[-1])
    return int(read_checkpoint(resume, trust_checkpoint=trust_checkpoint).get("global_step", 0))


def read_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
