"""``experiment=synthetic_pretrain``: train on synthetic cells, then export the backbone's weights.

The run folder gets ``backbone.pt``: the network's state dict without its classifier head, taken from
the best checkpoint, which :func:`~.models.backbones.load_local_weights` loads into any run of the
same architecture (``model.backbone.weights=<run folder>/backbone.pt``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from .pipeline import train as train_job
from .utils import load_checkpoint_model

__all__ = ["train", "export_backbone", "BACKBONE_FILE"]

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pt"


def _head_prefix(net: nn.Module) -> str | None:
    """Qualified name of the classifier head (``get_classifier()``, else timm's ``pretrained_cfg``)."""
    head = net.get_classifier() if callable(getattr(net, "get_classifier", None)) else None
    if isinstance(head, nn.Module):
        for name, module in net.named_modules():
            if module is head and name:
                return name
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    name = cfg.get("classifier")
    return name if isinstance(name, str) else None


def export_backbone(source: str | Path | nn.Module, out: str | Path) -> Path:
    """Write the backbone of a trained classifier (a checkpoint path or a model with ``.net``) as a
    plain state dict without the classifier head; returns ``out``.
    """
    model = load_checkpoint_model(source) if isinstance(source, str | Path) else source
    net = getattr(model, "net", model)
    if isinstance(getattr(net, "body", None), nn.Module):  # the cell recipe's CellInput wrapper: weights
        net = net.body  # are loaded into the inner network (create_backbone wraps after loading)
    head = _head_prefix(net)
    sd = {
        k: v.detach().cpu().clone()
        for k, v in net.state_dict().items()
        if not (head and (k == head or k.startswith(head + ".")))
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        torch.save(sd, tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


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
