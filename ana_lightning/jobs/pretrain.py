"""The synthetic-pretraining job (``experiment=synthetic_pretrain``): train, then write the best
checkpoint's backbone to ``<run folder>/backbone.pt`` (:func:`ana_lightning.pretrain.export_backbone`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..pretrain import BACKBONE_FILE, export_backbone
from .train import train as train_job

__all__ = ["train"]

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`~.pipeline.train`, then ``<run folder>/backbone.pt`` from the best checkpoint."""
    metrics, objs = train_job(cfg)
    trainer, run_dir = objs["trainer"], Path(objs["run_dir"])
    if trainer.is_global_zero and cfg.get("train", True):
        best = (
            getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        )
        out = export_backbone(best or objs["model"], run_dir / BACKBONE_FILE)
        log.info(
            "backbone weights (%s) written to %s: use model.backbone.weights=%s",
            "best checkpoint" if best else "last weights",
            out,
            out,
        )
    return metrics, objs
