"""Backbones from timm, with an offline path for pretrained weights.

No weights are ever downloaded by default (``pretrained=False``). A user who has weights gives a
local file (``weights=<file.pth|.pt|.safetensors>``), or sets ``pretrained=true`` with the weights
already in the timm / Hugging Face cache (``HF_HUB_OFFLINE=1`` keeps it from reaching the network).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .cells import CellInput  # importing it also registers the compact timm model "cellnet"

__all__ = ["create_backbone", "load_local_weights", "normalization", "WeightsError"]

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "model.", "net.", "backbone.", "_orig_mod.")


class WeightsError(RuntimeError):
    """A weights file that is missing, unreadable or does not fit the backbone."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a weights file"
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def load_local_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``model``; tensors whose shape differs (a classifier head for a
    different number of classes) are skipped and stay freshly initialised.
    """
    path = Path(path).expanduser()
    sd = _read_state_dict(path)
    own = model.state_dict()
    fitting = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in sd if k in own and own[k].shape != sd[k].shape)
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    n_fit = sum(1 for k in counted if k in fitting)
    if n_fit < 0.5 * len(counted):  # a head may differ; most of the body must fit
        raise WeightsError(
            f"only {n_fit} of {len(counted)} tensors of this backbone are in {path} with the right shape "
            f"({len(sd)} tensors in the file, e.g. {next(iter(sd), '-')!r}; "
            f"the model expects e.g. {next(iter(own))!r}). Is it the weights of another architecture?"
        )
    missing = sorted(set(own) - set(fitting))
    model.load_state_dict(fitting, strict=False)
    log.info(
        "loaded %d/%d tensors from %s (re-initialised: %s)",
        len(fitting),
        len(own),
        path,
        skipped or missing[:5] or "none",
    )


def create_backbone(
    name: str = "resnet18",
    num_classes: int = 0,
    pretrained: bool = False,
    weights: str | None = None,
    drop_rate: float = 0.0,
    in_chans: int = 3,
    cell_input: Mapping[str, Any] | None = None,
    **kwargs,
) -> nn.Module:
    """A timm model with ``num_classes`` outputs (0 = a pooled feature extractor).

    ``cell_input`` (e.g. ``{mask: channel, tta: true}``) puts the model behind
    :class:`~ana_lightning.models.cells.CellInput`: per-cell intensity normalisation and optional
    dihedral test-time augmentation (the cell recipe, ``experiment=i3a_cells``).

    >>> create_backbone("resnet18", num_classes=4)(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 4])
    """
    try:
        model = timm.create_model(
            name,
            pretrained=pretrained,
            num_classes=num_classes,
            drop_rate=drop_rate,
            in_chans=in_chans,
            **kwargs,
        )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models()") from None
        raise
    except TypeError as e:  # a key of another network's config (e.g. cellnet's width on a resnet)
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if bad and bad.group(1) in kwargs:
            key = bad.group(1)
            raise ValueError(
                f"backbone key {key}={kwargs[key]!r} was rejected by the timm backbone {name!r} ({e}); "
                f"it is likely a key of another network's config: drop it, e.g. with the override "
                f"'~model.backbone.{key}'"
            ) from e
        raise
    except Exception as e:  # noqa: BLE001
        if pretrained:
            raise WeightsError(
                f"pretrained weights for {name!r} are not in the local cache and cannot be downloaded here ({e}). "
                "Put a weights file on disk and set model.backbone.weights=<file>, or use pretrained=false."
            ) from None
        raise
    if weights:
        load_local_weights(model, weights)
    if cell_input is not None:
        model = CellInput(model, **dict(cell_input))
    return model


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std that travel with the backbone's weights (timm's ``pretrained_cfg``)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(float(x) for x in cfg["mean"]), tuple(float(x) for x in cfg["std"])
