"""What every job builds from its config: the datamodule, the Trainer with its callbacks and loggers,
and the end of a run (report plots to W&B, one W&B run per job). Everything here is
``hydra.utils.instantiate`` on a config group, as in lightning-hydra-template's ``train.py``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

__all__ = [
    "instantiate_list",
    "build_datamodule",
    "scored_split",
    "build_trainer",
    "stage_of",
    "renamed",
    "test_loop_logged_as",
    "headline",
    "log_report_images",
    "finish_wandb",
]

log = logging.getLogger(__name__)


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """The objects of a config group holding several ``_target_`` entries (``callbacks``, ``logger``);
    entries set to null or without a ``_target_`` are skipped."""
    if not cfg:
        return []
    out = []
    for _, c in cfg.items():
        if isinstance(c, DictConfig) and "_target_" in c:
            out.append(instantiate(c))
    return out


def build_datamodule(cfg: DictConfig, **overrides: Any) -> L.LightningDataModule:
    """The configured datamodule with the augmentation policy of the run."""
    augment = (
        instantiate(cfg.augmentation.train)
        if cfg.get("augmentation") and cfg.augmentation.get("train")
        else None
    )
    if cfg.get("augmentation") and cfg.augmentation.get("batch") and "batch_augment" not in overrides:
        overrides["batch_augment"] = instantiate(cfg.augmentation.batch)  # augmentation=gpu: on the device
    if cfg.data.get("folds") and not cfg.data.get("folds_manifest") and "folds_manifest" not in overrides:
        from ..crossval import default_folds_manifest

        overrides["folds_manifest"] = default_folds_manifest(cfg)  # one per sweep (folds_manifest.csv)
    return instantiate(cfg.data, train_augment=augment, **overrides)


def scored_split(split: str, has_manifest: bool) -> str:
    """The split an evaluation scores: ``split=auto`` is a split manifest's test split when there is one, else
    every image (``all``); any other value is itself."""
    return split if split != "auto" else ("test" if has_manifest else "all")


def build_trainer(cfg: DictConfig, run_dir: Path, **overrides: Any) -> L.Trainer:
    """``cfg.trainer`` with the configured callbacks and loggers, writing into ``run_dir``."""
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir), **overrides
    )


def stage_of(split: str) -> str:
    """The name an evaluation's metrics and report files carry: ``val`` / ``train`` when it read the
    training run's validation or training split (``val/mca``, ``val_report.md``), so that such a figure is
    never taken for a test figure; ``test`` for its test split and for a whole folder (``split=all``)."""
    return split if split in ("train", "val") else "test"


def renamed(key: str, stage: str) -> str:
    """``test/<metric>`` (what the model logs in its test loop) under ``stage``."""
    return f"{stage}/{key.removeprefix('test/')}" if key.startswith("test/") else key


@contextmanager
def test_loop_logged_as(model: L.LightningModule, stage: str) -> Iterator[None]:
    """Inside: the model's test loop logs ``<stage>/<metric>`` instead of ``test/<metric>`` (``val/mca`` for
    ``ana-eval split=val``), so ``trainer.callback_metrics``, callbacks, the loggers (``csv/metrics.csv``, a
    W&B run's charts and summary) and ``trainer.test``'s results all name the split that was read. Models
    without :attr:`~ana_lightning.models.base.ANAModule.test_logged_as` are a ``TypeError`` for a stage other
    than ``test``."""
    if stage == "test":
        yield
        return
    if not hasattr(model, "test_logged_as"):
        raise TypeError(f"{type(model).__name__} cannot log its test loop as {stage!r}: not an ANAModule")
    before = model.test_logged_as
    model.test_logged_as = stage
    try:
        yield
    finally:
        model.test_logged_as = before


def headline(metrics: dict[str, float], stage: str, records: Any, report: Path | str) -> str:
    """One line a user reads at the end of a run: the headline figures with their bootstrap 95 % intervals,
    on how many images of how many groups (specimens, slides, patients), whether any of those groups was
    also trained on, and where the report is. E.g. ``test/mca 0.722 [0.615, 0.839], test/acc 0.719 [0.532,
    0.878] on 2146 images of 6 groups, none of them trained on; report: <run>/test_report.md``."""
    from ..stats import CI_KEYS

    parts = []
    for k in CI_KEYS:
        value = metrics.get(f"{stage}/{k}")
        if value is None:
            continue
        lo, hi = metrics.get(f"{stage}/{k}_ci95_low"), metrics.get(f"{stage}/{k}_ci95_high")
        parts.append(
            f"{stage}/{k} {value:.3f}"
            + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")
        )
    groups = {r.group for r in records if r.group not in (None, "")}
    where = f"{len(records)} images" + (f" of {len(groups)} groups" if groups else " (no groups)")
    shared = metrics.get(f"{stage}/shared_groups_with_train")
    if shared:
        where += (
            f", {int(shared)} of them shared with the training split "
            f"({int(metrics.get(f'{stage}/images_in_train_groups', 0))} images): not a figure on unseen groups"
        )
    elif shared is not None and groups:
        where += ", none of them trained on"
    seen = metrics.get(f"{stage}/images_in_training_split")
    if seen:  # ana-eval of a folder that holds images the checkpoint's run trained on
        where += (
            f", {int(seen)} of them in the training split of the model's run: not a figure on unseen images"
        )
    return f"{', '.join(parts) or 'no headline metric'} on {where}; report: {report}"


def log_report_images(trainer: L.Trainer, run_dir: Path, stage: str = "test") -> None:
    """Report plots (``{stage}_*.png``) go to W&B too when that logger is on."""
    from lightning.pytorch.loggers import WandbLogger

    images = sorted(run_dir.glob(f"{stage}_*.png"))
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and images:
            for img in images:
                lg.log_image(key=f"{stage}/{img.stem.removeprefix(f'{stage}_')}", images=[str(img)])


def finish_wandb() -> None:
    """Each job ends its W&B run, so a Hydra multirun records one run per job."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
