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
from torch import nn

from .utils import load_checkpoint_model

__all__ = ["export_backbone", "BACKBONE_FILE"]

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


def __getattr__(name: str) -> Any:
    """The synthetic-pretraining job moved to :mod:`ana_lightning.jobs.pretrain` (this old import path still works)."""
    if name in ("train",):
        import importlib

        return getattr(importlib.import_module("ana_lightning.jobs.pretrain"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
