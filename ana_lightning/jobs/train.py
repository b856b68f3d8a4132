"""The training job (``ana-train``, ``conf/train.yaml``): build everything from the config with
``hydra.utils.instantiate`` (datamodule, model, trainer with callbacks and loggers), fit, calibrate,
test the best checkpoint and write the run folder's reports. Returns the metrics (the one named by
``optimized_metric`` is what a Hydra sweeper optimises) and the objects used.

Resuming (``ckpt_path``, SLURM requeues, finished runs) is :mod:`ana_lightning.jobs.resume`; the
DDP/SLURM plumbing (relaunch inside sweeps, ranks preparing data one at a time, testing after a
``ddp_spawn`` fit) is :mod:`ana_lightning.distributed`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from ..calibration import calibrate_run, report_test_calibration
from ..distributed import ddp_job, one_at_a_time, tester_for
from ..reports import write_metrics_json, write_test_report
from ..stats import run_intervals
from ..utils import checkpoint_safe_globals, load_checkpoint_model
from .common import build_datamodule, build_trainer, finish_wandb, headline, log_report_images
from .resume import check_resume_fits, finished_run, mark_finished, read_metrics, resume_point
from .resume import resume_step as resume_step_of

__all__ = ["train"]

log = logging.getLogger(__name__)


def _check_settings(cfg: DictConfig) -> None:
    """Values torch would reject only after the run folder and split are written, named by their key."""
    _keep_epoch(cfg)
    for key in ("model.optimizer.lr", "model.optimizer.weight_decay"):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float)) and (value < 0 or (key.endswith(".lr") and value == 0)):
            raise ValueError(
                f"{key}={value}: must be {'positive' if key.endswith('.lr') else 'zero or positive'}"
            )


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
        raise ValueError(
            f"the data ({data}) is multi-label, but the model ({target}) is a single-label softmax "
            "classifier: add model=sigmoid_ensemble (e.g. experiment=mixed_ensemble, or model=sigmoid_ensemble "
            "monitor=val/loss monitor_mode=min)"
        )
    raise ValueError(
        f"the data ({data}) gives the model {unknown}, which {target} does not take: choose a model= that "
        "fits this data"
    )


# With no validation split the trainer runs no validation loop (nothing to select an epoch on).
_NO_VALIDATION_TRAINER = {"limit_val_batches": 0, "num_sanity_val_steps": 0}


KEEP_EPOCH = ("best", "last")


def _keep_epoch(cfg: DictConfig) -> str:
    """``keep_epoch`` (``best`` when unset), refused by name when it is neither ``best`` nor ``last``."""
    keep = str(cfg.get("keep_epoch") or "best")
    if keep not in KEEP_EPOCH:
        raise ValueError(f"keep_epoch={cfg.get('keep_epoch')!r}: must be one of {KEEP_EPOCH}")
    return keep


def _keeping_last_epoch(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """A copy of ``cfg`` that trains the fixed schedule and keeps its last epoch: the monitored
    ``ModelCheckpoint`` keeps the latest epoch as ``final-epochNNN.ckpt`` (what gets tested, exported and
    named in ``best_checkpoint.txt``), and early stopping (any other callback that reads a validation
    metric) is dropped, so "the last epoch" is the schedule's. Also returns the dropped callbacks' keys."""
    cfg = copy.deepcopy(cfg)  # the caller's config stays as composed
    dropped = []
    with open_dict(cfg):
        callbacks = cfg.get("callbacks") or {}
        for name in list(callbacks):
            cb = callbacks[name]
            if not isinstance(cb, DictConfig) or cb.get("monitor") is None:
                continue
            if str(cb.get("_target_", "")).endswith("ModelCheckpoint"):
                cb.monitor = None
                cb.filename = "final-epoch{epoch:03d}"
                cb.save_top_k = 1
                # unused without a monitor, but part of the callback's state key, which must differ from
                # the unmonitored last_checkpoint's (mode "min") for Lightning to keep both
                cb.mode = "max"
            else:
                callbacks.pop(name)
                dropped.append(f"callbacks.{name}")
    return cfg, dropped


def _without_validation(cfg: DictConfig, sizes: dict[str, int]) -> DictConfig:
    """The config of a run with an empty validation split (``data.split_fractions=[0.8,0,0.2]``, or a
    split manifest without ``val`` rows): train the fixed schedule and keep the last epoch. Callbacks
    that watch a validation metric change: a monitored ``ModelCheckpoint`` keeps the latest epoch as
    ``final-epochNNN.ckpt`` (what gets tested, exported and named in ``best_checkpoint.txt``), early
    stopping is dropped. A scheduler that needs a validation metric is an error naming the key."""
    sched = str(OmegaConf.select(cfg, "model.scheduler._target_", default="") or "")
    if sched.endswith("ReduceLROnPlateau"):
        raise ValueError(
            f"the validation split is empty ({sizes}) but model.scheduler={sched} steps on val/loss: "
            "give the validation split a share (data.split_fractions) or use a schedule of fixed length "
            "(e.g. the cosine one of conf/model/*.yaml)"
        )
    cfg, dropped = _keeping_last_epoch(cfg)
    if str(cfg.get("optimized_metric") or "").startswith("val/") and _sweeping_hyperparameters():
        # a trial would train in full and hand the sweeper nothing: refused before any training
        raise ValueError(
            f"hparams_search optimises optimized_metric={cfg.optimized_metric}, a validation metric, but the "
            f"validation split is empty ({sizes}): give it a share, e.g. 'data.split_fractions=[0.6,0.2,0.2]' "
            "(experiment=i3a_cells trains without one since round 17)"
        )
    fractions = OmegaConf.select(cfg, "data.split_fractions", default=None)
    asked = (
        fractions is not None and len(fractions) > 1 and float(fractions[1]) == 0.0
    )  # [0.8,0,0.2]: on purpose
    log.log(
        logging.INFO if asked else logging.WARNING,
        "the validation split is empty (%s): a fixed schedule of %s epochs, the last one kept "
        "(checkpoints/final-epochNNN.ckpt) with no epoch selection, early stopping or temperature "
        "calibration%s. This is how a fixed recipe is trained (experiment=i3a_cells) and how the model to ship "
        "is refit on every labelled group once the recipe has been chosen on validation splits.",
        ", ".join(f"{k} {v}" for k, v in sizes.items()),
        OmegaConf.select(cfg, "trainer.max_epochs", default="?"),
        f" (left out: {', '.join(dropped)})" if dropped else "",
    )
    return cfg


def _sweeping_hyperparameters() -> bool:
    """Whether this run is a trial of a hyperparameter search (``hparams_search=…`` chosen)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.initialized() and bool(HydraConfig.get().runtime.choices.get("hparams_search"))
    except Exception:  # noqa: BLE001 - outside Hydra: not a sweep
        return False


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train (and test with the best checkpoint); returns the metrics and the objects used."""
    _check_settings(cfg)  # before anything is written
    with ddp_job():  # in a multirun, DDP ranks 1..N-1 are started as this job, not the sweep
        return _train(cfg)


def _train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume, run_dir = resume_point(
        cfg, run_dir
    )  # ckpt_path, or a SLURM requeue; maybe the interrupted run's folder
    finished = finished_run(resume, run_dir, cfg) if resume else None
    if finished is not None and ((run_dir / "metrics.json").is_file() or not cfg.get("test", True)):
        return read_metrics(run_dir), {
            "cfg": cfg,
            "datamodule": None,
            "model": None,
            "trainer": None,
            "run_dir": run_dir,
        }
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))

    dm = build_datamodule(cfg)
    with one_at_a_time(run_dir):  # ranks started together by SLURM/torchrun: one prepares, the others wait
        dm.prepare_data()
    dm.setup("fit")
    validates = bool(dm.splits.get("val"))
    keep = _keep_epoch(cfg)
    if not validates:
        cfg = _without_validation(cfg, {k: len(v) for k, v in dm.splits.items()})
    elif keep == "last":
        cfg, dropped = _keeping_last_epoch(cfg)
        log.info(
            "keep_epoch=last: the fixed schedule's last epoch is kept, tested and exported "
            "(checkpoints/final-epochNNN.ckpt); the validation split is still scored every epoch and used "
            "for temperature calibration, not to pick the epoch%s",
            f" (left out: {', '.join(dropped)})" if dropped else "",
        )
    model_kwargs = dm.model_kwargs(loss_weights=cfg.get("class_weighted_loss", True))
    _check_model_fits_data(cfg, model_kwargs)
    model = instantiate(cfg.model, **model_kwargs)
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    if callable(
        getattr(model, "set_support_source", None)
    ):  # Siamese: validation scores against the training split
        model.set_support_source(
            dm.make_dataset(dm.splits["train"], train=False), batch_size=dm.hparams.batch_size
        )
    if resume:
        check_resume_fits(resume, model, bool(cfg.get("trust_checkpoint")))
    trainer = build_trainer(cfg, run_dir, **({} if validates else _NO_VALIDATION_TRAINER))
    if validates and keep == "last" and cfg.get("monitor"):  # no checkpoint tracks the best epoch then
        # before the checkpoint callbacks, so a checkpoint saved at the end of a validation holds its result
        first_ckpt = next(
            (i for i, c in enumerate(trainer.callbacks) if isinstance(c, ModelCheckpoint)), None
        )
        trainer.callbacks.insert(
            len(trainer.callbacks) if first_ckpt is None else first_ckpt,
            BestOfMonitor(str(cfg.monitor), str(cfg.get("monitor_mode") or "max")),
        )
    resume_step = (
        resume_step_of(resume, run_dir, bool(cfg.get("trust_checkpoint"))) if cfg.get("train", True) else None
    )
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
    best: dict[str, float] = {}
    if cfg.get("train", True) and finished is None:
        trust = bool(cfg.get("trust_checkpoint"))
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            trainer.fit(model, datamodule=dm, ckpt_path=resume, weights_only=not trust if resume else None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        if not trainer.interrupted and trainer.is_global_zero:
            mark_finished(trainer, run_dir)
        cal = _calibrate(cfg, trainer, dm) if validates else {}  # fitted only when this call trained
        metrics.update(cal)
        best = _best_validation(trainer)
        metrics.update(best)
    ckpt = (
        trainer.checkpoint_callback.best_model_path
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint)
        else ""
    )
    if finished is not None:  # a finished run that was never tested: test the checkpoint it kept
        from ..models.hierarchy_pipeline import resolve_checkpoint

        # best-* or final-*, whichever it kept (whatever keep_epoch says now); an error when it kept none
        ckpt = str(resolve_checkpoint(run_dir))
    if cfg.get("test", True) and not dm.splits.get("test"):
        log.warning(
            "the test split is empty (data.split_fractions=%s): nothing to test; the run's model is %s",
            list(OmegaConf.select(cfg, "data.split_fractions", default=[]) or []),
            ckpt or "the current weights (no checkpoint was saved)",
        )
        if ckpt and trainer.is_global_zero:
            (run_dir / "best_checkpoint.txt").write_text(str(Path(ckpt).resolve()) + "\n")
    elif cfg.get("test", True):
        if not ckpt:
            log.warning("no best checkpoint was saved; testing the current weights")
        log.info("testing %s", ckpt or "current weights")
        tester = tester_for(trainer)  # ddp_spawn: test in this process, where the reports are written
        results = tester.test(model, datamodule=dm, ckpt_path=ckpt or None)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if trainer.is_global_zero:
            test_metrics.update(report_test_calibration(model, dm, dm.splits["test"], run_dir))
            test_metrics.update(cal)  # val/temperature, val/ece: how the served probabilities were calibrated
            test_metrics.update(best)  # e.g. val/mca_best: what a choice made on validation compares
        if callable(getattr(dm, "split_flags", None)):
            test_metrics.update(dm.split_flags("test"))  # test images sharing a group with train (0 = clean)
        metrics.update(test_metrics)
        if trainer.is_global_zero:
            # bootstrap 95% intervals, resampling groups / duplicates together as the split keeps them
            test_metrics.update(
                run_intervals(model, dm.splits["test"], test_metrics, together=getattr(dm, "together", ()))
            )
            metrics.update(test_metrics)
            write_metrics_json(test_metrics, run_dir / "metrics.json")
            write_test_report(
                model, run_dir, dm.splits["test"], test_metrics, stage="test", class_nodes=dm.class_nodes()
            )
            log_report_images(trainer, run_dir)
            if ckpt:
                (run_dir / "best_checkpoint.txt").write_text(str(Path(ckpt).resolve()) + "\n")
            log.info(
                "%s; model: %s",
                headline(test_metrics, "test", dm.splits["test"], run_dir / "test_report.md"),
                Path(ckpt).resolve() if ckpt else "the current weights (no checkpoint was saved)",
            )
    for lg in trainer.loggers:
        lg.finalize("success")
    finish_wandb()
    return metrics, {"cfg": cfg, "datamodule": dm, "model": model, "trainer": trainer, "run_dir": run_dir}


class BestOfMonitor(L.Callback):
    """The best value of ``monitor`` over the validation passes inside ``fit`` (sanity checks aside), for runs
    whose checkpoint does not track it (``keep_epoch=last``). Its state is saved in checkpoints, so a
    resumed run remembers the epochs before the crash."""

    def __init__(self, monitor: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"monitor_mode must be max or min, got {mode!r}")
        self.monitor, self.mode, self.best = monitor, mode, None

    @property
    def state_key(self) -> str:
        return f"BestOfMonitor{{{self.monitor!r}}}"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or trainer.state.fn != "fit" or value is None or not torch.isfinite(value):
            return
        v = float(value)
        if self.best is None or (v > self.best if self.mode == "max" else v < self.best):
            self.best = v

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def _best_validation(trainer: L.Trainer) -> dict[str, float]:
    """``<monitor>_best`` (e.g. ``val/mca_best``): the best value of each monitored validation metric
    over the epochs, the score of the ``best-*`` checkpoint (with ``keep_epoch=last``: of the best epoch,
    which is not the kept one). It goes into ``metrics.json``, so a choice made on validation compares
    sweeps with ``ana-compare 'metrics=[val/mca_best]'``."""
    out = {}
    for cb in trainer.checkpoint_callbacks:
        score = getattr(cb, "best_model_score", None)
        if getattr(cb, "monitor", None) and score is not None and torch.isfinite(score):
            out[f"{cb.monitor}_best"] = float(score)
    for cb in trainer.callbacks:
        if isinstance(cb, BestOfMonitor) and cb.best is not None:
            out.setdefault(f"{cb.monitor}_best", cb.best)
    return out


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
