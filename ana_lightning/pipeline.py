"""The jobs behind the console commands: train and evaluate, driven by a composed Hydra config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from .calibration import calibrate_run, report_test_calibration
from .data.splits import (  # noqa: F401 - check_unseen: its old import path
    check_unseen,
    run_manifest,
    seen_in_training,
    training_split_manifest,
)
from .distributed import (
    global_rank,
    one_at_a_time,
    pin_ddp_relaunch_to_job,
    release_ddp_job,
    requeue_checkpoint,
    single_process_tester,
    sync_csv_logger,
)
from .reports import write_metrics_json, write_test_report
from .stats import run_intervals
from .utils import (
    CheckpointError,
    UnsafeCheckpointError,
    checkpoint_safe_globals,
    find_last_checkpoint,
    load_checkpoint_model,
    read_checkpoint,
)

__all__ = ["train", "evaluate", "build_datamodule", "build_trainer"]

log = logging.getLogger(__name__)


def _instantiate_list(cfg: DictConfig | None) -> list[Any]:
    if not cfg:
        return []
    out = []
    for _, c in cfg.items():
        if isinstance(c, DictConfig) and "_target_" in c:
            out.append(instantiate(c))
    return out


def build_datamodule(cfg: DictConfig, **overrides):
    """The configured datamodule with the augmentation policy of the run."""
    augment = instantiate(cfg.augmentation.train) if cfg.get("augmentation") and cfg.augmentation.get("train") else None
    if cfg.get("augmentation") and cfg.augmentation.get("batch") and "batch_augment" not in overrides:
        overrides["batch_augment"] = instantiate(cfg.augmentation.batch)  # augmentation=gpu: on the device
    if cfg.data.get("folds") and not cfg.data.get("folds_manifest") and "folds_manifest" not in overrides:
        from .crossval import default_folds_manifest

        overrides["folds_manifest"] = default_folds_manifest(cfg)  # one per sweep (folds_manifest.csv)
    return instantiate(cfg.data, train_augment=augment, **overrides)


def build_trainer(cfg: DictConfig, run_dir: Path, **overrides) -> L.Trainer:
    callbacks = _instantiate_list(cfg.get("callbacks"))
    loggers = _instantiate_list(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir), **overrides)


def _resolve_ckpt(ckpt_path: str | None, run_dir: Path, cfg: DictConfig) -> str | None:
    trust = bool(cfg.get("trust_checkpoint"))
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        found = find_last_checkpoint(run_dir, Path(cfg.paths.log_dir) / cfg.task_name / "runs")
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path=last: no last.ckpt in {run_dir} or in earlier runs under {Path(cfg.paths.log_dir) / cfg.task_name}"
            )
        log.info("resuming from %s", found)
        return _resumable(str(found), ckpt_path, trust)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    return _resumable(ckpt_path, ckpt_path, trust)


def _resumable(path: str, asked: str, trust_checkpoint: bool = False) -> str:
    """``path`` if it reads as a Lightning checkpoint; a truncated file (a run killed while writing
    it, a copy cut short) is a :class:`CheckpointError` naming it, not a traceback from torch."""
    try:
        read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"ckpt_path={asked}: {e}") from None
    except CheckpointError as e:
        raise CheckpointError(
            f"ckpt_path={asked}: cannot resume from {path}: {e} Resume from another checkpoint of that run "
            "(checkpoints/best-epoch*.ckpt) or start afresh without ckpt_path."
        ) from None
    return path


def _check_settings(cfg: DictConfig) -> None:
    """Values torch would reject only after the run folder and split are written, named by their key."""
    for key in ("model.optimizer.lr", "model.optimizer.weight_decay"):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float)) and (value < 0 or (key.endswith(".lr") and value == 0)):
            raise ValueError(f"{key}={value}: must be {'positive' if key.endswith('.lr') else 'zero or positive'}")


def _check_model_fits_data(cfg: DictConfig, model_kwargs: dict[str, Any]) -> None:
    """The data's model arguments (``pos_weight`` of multi-label data, ``class_weights`` of
    single-label data) must be ones the configured model takes: otherwise say which model fits."""
    import inspect

    from hydra.utils import get_class

    target = cfg.model.get("_target_")
    try:
        params = inspect.signature(get_class(target)).parameters
    except Exception:  # noqa: BLE001 - a factory function or an unusual target: let instantiate speak
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in model_kwargs if k not in params]
    if not unknown:
        return
    data = cfg.data.get("_target_", "").rsplit(".", 1)[-1]
    if "pos_weight" in unknown:
        raise ValueError(f"the data ({data}) is multi-label, but the model ({target}) is a single-label softmax "
                         "classifier: add model=sigmoid_ensemble (e.g. experiment=mixed_ensemble, or model=sigmoid_ensemble "
                         "monitor=val/loss monitor_mode=min)")
    raise ValueError(f"the data ({data}) gives the model {unknown}, which {target} does not take: choose a model= that "
                     "fits this data")


def _check_resume_fits(path: str, model: L.LightningModule, trust_checkpoint: bool) -> None:
    """Resuming with another architecture or class list: a message naming the file and what differs,
    before the run folder changes (not Lightning's dump of state-dict keys)."""
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    saved = ckpt["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    shapes = [k for k in own if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(own[k].shape)]
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
        f"{len(shapes)} of another shape (e.g. {shapes[:2]})")
    raise CheckpointError(
        f"ckpt_path: {path} was trained with another model than this config builds ({detail}). Resume with the "
        "model settings of that run (its config_resolved.yaml), or start afresh without ckpt_path."
    )


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train (and test with the best checkpoint); returns the metrics and the objects used."""
    _check_settings(cfg)  # before anything is written
    ddp_job = pin_ddp_relaunch_to_job()  # in a multirun, DDP ranks 1..N-1 are started as this job, not the sweep
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = _resolve_ckpt(cfg.get("ckpt_path"), run_dir, cfg) if cfg.get("train", True) else None
    if resume is None and cfg.get("train", True) and (requeued := requeue_checkpoint(run_dir)) is not None:
        log.info("SLURM restarted this job: resuming from %s", requeued)  # preempted and requeued
        resume = _resumable(str(requeued), "last (SLURM requeue)", bool(cfg.get("trust_checkpoint")))
    if resume and Path(resume).parent.name == "checkpoints" and Path(resume).parent.parent != run_dir:
        # Continue in the interrupted run's folder: its best checkpoint, logs and reports stay together.
        old = Path(resume).parent.parent
        if global_rank() == 0:
            (run_dir / "resumed_into.txt").write_text(f"this job resumed {resume}; its outputs are in {old}\n")
        log.info("resuming the run in %s", old)
        with open_dict(cfg):
            cfg.paths.output_dir = str(old)
        run_dir = old
    finished = _finished_run(resume, run_dir, cfg) if resume else None
    if finished is not None and ((run_dir / "metrics.json").is_file() or not cfg.get("test", True)):
        return _read_metrics(run_dir), {"cfg": cfg, "datamodule": None, "model": None, "trainer": None, "run_dir": run_dir}
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))

    dm = build_datamodule(cfg)
    with one_at_a_time(run_dir):  # ranks started together by SLURM/torchrun: one prepares, the others wait
        dm.prepare_data()
    dm.setup("fit")
    model_kwargs = dm.model_kwargs(loss_weights=cfg.get("class_weighted_loss", True))
    _check_model_fits_data(cfg, model_kwargs)
    model = instantiate(cfg.model, **model_kwargs)
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    if callable(getattr(model, "set_support_source", None)):  # Siamese: validation scores against the training split
        model.set_support_source(dm.make_dataset(dm.splits["train"], train=False), batch_size=dm.hparams.batch_size)
    if resume:
        _check_resume_fits(resume, model, bool(cfg.get("trust_checkpoint")))
    trainer = build_trainer(cfg, run_dir)
    resume_step = _resume_step(resume, run_dir, bool(cfg.get("trust_checkpoint"))) if cfg.get("train", True) else None
    for lg in trainer.loggers:  # the curve logged before the checkpoint stays in csv/metrics.csv
        if resume_step is not None and callable(getattr(lg, "resume_from_step", None)):
            lg.resume_from_step(resume_step)
    if trainer.is_global_zero:
        dm.write_reports(run_dir)
        OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    cal: dict[str, float] = {}
    if cfg.get("train", True) and finished is None:
        trust = bool(cfg.get("trust_checkpoint"))
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            trainer.fit(model, datamodule=dm, ckpt_path=resume, weights_only=not trust if resume else None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        if not trainer.interrupted and trainer.is_global_zero:
            _mark_finished(trainer, run_dir)
        cal = _calibrate(cfg, trainer, dm)  # fitted only when this call trained
        metrics.update(cal)
    if cfg.get("test", True):
        ckpt = trainer.checkpoint_callback.best_model_path if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else ""
        if finished is not None:  # a finished run that was never tested: test its best checkpoint only
            ckpt = str(next(iter(sorted((run_dir / "checkpoints").glob("best-*.ckpt"))), ""))
        if not ckpt:
            log.warning("no best checkpoint was saved; testing the current weights")
        log.info("testing %s", ckpt or "current weights")
        sync_csv_logger(trainer)  # ddp_spawn: the CSV columns that the fit workers wrote
        tester = single_process_tester(trainer) or trainer  # ddp_spawn: test where the reports are written
        results = tester.test(model, datamodule=dm, ckpt_path=ckpt or None)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if trainer.is_global_zero:
            test_metrics.update(report_test_calibration(model, dm, dm.splits["test"], run_dir))
            test_metrics.update(cal)  # val/temperature, val/ece: how the served probabilities were calibrated
        if callable(getattr(dm, "split_flags", None)):
            test_metrics.update(dm.split_flags("test"))  # test images sharing a group with train (0 = clean)
        metrics.update(test_metrics)
        if trainer.is_global_zero:
            # bootstrap 95% intervals, resampling groups / duplicates together as the split keeps them
            test_metrics.update(run_intervals(model, dm.splits["test"], test_metrics, together=getattr(dm, "together", ())))
            metrics.update(test_metrics)
            write_metrics_json(test_metrics, run_dir / "metrics.json")
            write_test_report(model, run_dir, dm.splits["test"], test_metrics, stage="test")
            _log_report_images(trainer, run_dir)
            if ckpt:
                (run_dir / "best_checkpoint.txt").write_text(str(Path(ckpt).resolve()) + "\n")
    for lg in trainer.loggers:
        lg.finalize("success")
    _finish_wandb()
    release_ddp_job(ddp_job)  # the next job of a multirun starts its own DDP processes
    return metrics, {"cfg": cfg, "datamodule": dm, "model": model, "trainer": trainer, "run_dir": run_dir}


FINISHED = "training_finished.json"


def _mark_finished(trainer: L.Trainer, run_dir: Path) -> None:
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

    spawned = trainer.world_size > 1 and isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)
    if spawned and last.is_file():  # ddp_spawn: the loop state stayed in the workers
        ckpt = read_checkpoint(last)
        epochs, step = int(ckpt.get("epoch", -1)) + 1, int(ckpt.get("global_step", 0))
        why = "max_epochs" if trainer.max_epochs not in (None, -1) and epochs >= trainer.max_epochs else why
    record = {"epochs": epochs, "global_step": step, "stopped_by": why}
    (run_dir / FINISHED).write_text(json.dumps(record, indent=1) + "\n")


def _finished_run(resume: str, run_dir: Path, cfg: DictConfig) -> dict | None:
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
    stopped_early = record["stopped_by"] == "early_stopping" and bool((cfg.get("callbacks") or {}).get("early_stopping"))
    if more_epochs and more_steps and not stopped_early:
        return None
    log.warning(
        "the run in %s is finished (%d epochs, %d optimizer steps, stopped by %s): nothing to resume; its curves stay in "
        "%s. To train on, raise trainer.max_epochs / trainer.max_steps%s.", run_dir, record["epochs"], record["global_step"],
        record["stopped_by"], run_dir / "csv" / "metrics.csv",
        " and switch early stopping off (callbacks.early_stopping=null)" if stopped_early else "")
    return record


def _resume_step(resume: str | None, run_dir: Path, trust_checkpoint: bool = False) -> int | None:
    """The optimizer step the run continues from: of ``resume``, or of the HPC checkpoint that
    Lightning resumes a requeued SLURM job from by itself."""
    if resume is None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if p.stem.rsplit("_", 1)[-1].isdigit() else -1)
        if not hpc or not SLURMEnvironment.detect():
            return None
        resume = str(hpc[-1])
    return int(read_checkpoint(resume, trust_checkpoint=trust_checkpoint).get("global_step", 0))


def _read_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _calibrate(cfg: DictConfig, trainer: L.Trainer, dm) -> dict[str, float]:
    """Fit the temperature of the best checkpoint on the validation split and store it in that file
    (``calibrate=false``: store none); rank 0 works, the others wait. See :mod:`ana_lightning.calibration`."""
    cb = trainer.checkpoint_callback
    best = cb.best_model_path if isinstance(cb, ModelCheckpoint) else ""
    out: dict[str, float] = {}
    if best and trainer.is_global_zero:
        model = load_checkpoint_model(best, map_location=trainer.strategy.root_device)
        out = calibrate_run(model, dm, best, cfg.paths.output_dir, enabled=bool(cfg.get("calibrate", True)))
    trainer.strategy.barrier()
    return out


def _log_report_images(trainer: L.Trainer, run_dir: Path) -> None:
    """Report plots go to W&B too when that logger is on."""
    from lightning.pytorch.loggers import WandbLogger

    images = sorted(run_dir.glob("test_*.png"))
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and images:
            for img in images:
                lg.log_image(key=f"test/{img.stem.removeprefix('test_')}", images=[str(img)])


def _finish_wandb() -> None:
    """Each job ends its W&B run, so a Hydra multirun records one run per job."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate a checkpoint on a dataset folder or split and write the same report as training."""
    if cfg.get("sweep_dir"):  # ana-eval sweep_dir=<cross-validation sweep>: the summary again, from saved predictions
        from .crossval import evaluate_sweep

        return evaluate_sweep(cfg)
    ens = cfg.get("ensemble") or {}
    members = [str(m) for m in (ens.get("members") or [])]
    if not cfg.get("ckpt_path") and not members:
        raise ValueError("ana-eval needs ckpt_path=<file.ckpt> (or ensemble.members=[a.ckpt,b.ckpt])")
    if cfg.get("ckpt_path") and members:
        raise ValueError("give either ckpt_path or ensemble.members, not both")
    trust = bool(cfg.get("trust_checkpoint"))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if members:  # separately trained checkpoints averaged into one model (multi-label or single-label)
        from .models.multilabel import ensemble_from_checkpoints

        model = ensemble_from_checkpoints(members, combine=ens.get("combine", "probs"),
                                          decision_rule=ens.get("decision_rule"), threshold=ens.get("threshold", 0.5),
                                          trust_checkpoint=trust)
    else:
        model = load_checkpoint_model(cfg.ckpt_path, trust_checkpoint=trust)
    ckpt_ref = members[0] if members else str(cfg.ckpt_path)  # whose run folder holds the split manifest
    # The training run's data settings (reader, target, masks, image size, …), with what was typed on top.
    from .data.run_config import command_line_data_overrides, eval_data_config, training_data_config

    trained, class_nodes = training_data_config(ckpt_ref, trust_checkpoint=trust)
    group_chosen, typed = command_line_data_overrides()
    with open_dict(cfg):
        cfg.data = eval_data_config(cfg.data, trained, group_chosen, typed)
    cross = cfg.get("cross_dataset", "auto")
    if cross == "auto":
        cross = bool(trained) and (trained.get("reader") or "folder") != (cfg.data.get("reader") or "folder")
    if cross:
        if members:
            raise ValueError("cross-dataset evaluation takes one checkpoint (ckpt_path), not an ensemble")
        from .cross_dataset import evaluate_cross_dataset

        return evaluate_cross_dataset(cfg, model, class_nodes, trained, run_dir)
    split = cfg.get("split", "auto")
    overrides: dict[str, Any] = {"classes": list(model.class_names), "image_size": int(model.hparams.image_size)}
    manifest = cfg.data.get("split_manifest")
    found = training_split_manifest(ckpt_ref, split, manifest)  # the run's own, beside the checkpoint
    if found is not None:
        overrides["split_manifest"] = str(found)
    dm = build_datamodule(cfg, **overrides)
    dm.prepare_data()
    try:
        dm.setup("test")
    except Exception as e:  # noqa: BLE001
        if "split_manifest" in overrides and split == "auto":
            log.warning("the training run's split manifest does not fit this data (%s); evaluating all images", str(e).splitlines()[0])
            overrides.pop("split_manifest")
            dm = build_datamodule(cfg, **overrides)
            dm.prepare_data()
            dm.setup("test")
            split = "all"
        else:
            raise
    if split == "auto":
        split = "test" if "split_manifest" in overrides or manifest else "all"
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    if callable(getattr(model, "prepare_evaluation", None)):  # e.g. tune an ensemble's thresholds on val, never on test
        val = dm.make_dataset(dm.splits["val"], train=False) if dm.splits.get("val") else None
        model.prepare_evaluation(split, val=val, batch_size=int(cfg.data.batch_size))
    records = [r for s in ("train", "val", "test") for r in dm.splits[s]] if split == "all" else dm.splits[split]
    check_unseen(members or [str(cfg.ckpt_path)], records, split, dm.near_duplicates)
    dataset = dm.make_dataset(records, train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
    trainer = build_trainer(cfg, run_dir)
    results = (single_process_tester(trainer) or trainer).test(model, dataloaders=loader)  # ddp_spawn: in this process
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if split == "test" and callable(getattr(dm, "split_flags", None)):
        metrics.update(dm.split_flags("test"))
    seen = seen_in_training(records, run_manifest(ckpt_ref))
    if seen is not None:
        metrics["test/images_in_training_split"] = float(seen)
    if trainer.is_global_zero:
        metrics.update(report_test_calibration(model, dm, records, run_dir))  # the stored temperature, if any
        metrics.update(run_intervals(model, records, metrics, together=getattr(dm, "together", ())))  # bootstrap 95% CIs
        write_metrics_json(metrics, run_dir / "metrics.json")
        write_test_report(model, run_dir, records, metrics, stage="test")
        which = ", ".join(str(Path(m).resolve()) for m in members) if members else str(Path(cfg.ckpt_path).resolve())
        (run_dir / "evaluated.txt").write_text(f"checkpoint: {which}\nsplit: {split}\nimages: {len(records)}\n")
        _log_report_images(trainer, run_dir)
    log.info("evaluated %s on %d images (%s): %s", members or cfg.ckpt_path, len(records), split,
             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "/" in k and k.count("/") == 1))
    _finish_wandb()
    return metrics, {"model": model, "datamodule": dm, "run_dir": run_dir, "split": split}
