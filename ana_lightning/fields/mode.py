"""Does ``ana-predict`` read whole fields, and at what scale was the model trained?

:func:`training_scale` reads what a checkpoint stores (nucleus diameter, field or cell model, cell mask);
:func:`field_mode` decides from it and the ``ana-predict`` config whether to run field mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.images import bit_depth, channels, check_bit_depth, check_channels, set_bit_depth, set_channels
from ..data.readers import reader_class
from .predictor import Predictor

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

__all__ = [
    "FIELD_KEYS",
    "training_scale",
    "export_scale",
    "model_input",
    "model_bit_depth",
    "agreed_bit_depth",
    "use_bit_depth",
    "use_channels",
    "field_mode",
]

#: ana-predict keys that switch on field mode when given (fields=auto).
FIELD_KEYS = ("nucleus_diameter_px", "pixel_size", "overlays", "group_by", "per_cell_csv", "cells_out")


def training_scale(ckpt_path: str | Path | None) -> dict[str, Any]:
    """What a checkpoint says about the scale and input its model was trained on:
    ``{"nucleus_diameter_px": float | None, "input_kind": "field" | "cell" | None,
    "cell_mask": "apply" | "channel" | "none", "crop_fraction": float | None, "bit_depth": int | None,
    "channels": tuple | None}`` (``bit_depth``: ``data.bit_depth``, the camera bit depth its files with more than
    8 bits were read at; ``channels``: ``data.channels``, the order its TIFFs of several channels were read in).

    Read from the datamodule hyperparameters Lightning stores in the checkpoint
    (``data.nucleus_diameter_px``; ``data.input_kind``, or ``data.reader`` a contest cell layout →
    ``cell``, with ``data.mask``, how its cell masks were used, as ``cell_mask``, and
    ``data.crop_fraction``, how its cells were framed around their masks, as ``crop_fraction``). An
    ICPR 2012 layout has masks only sometimes: the datamodule's saved state says whether the run's
    cells had them (``cell_masks``); without them (or a checkpoint from before that was saved) neither
    the mask nor the framing was used. Anything else (an exported file) gives the defaults here:
    :func:`export_scale` writes these keys into the exported metadata, and :func:`field_mode` reads
    them from there."""
    out: dict[str, Any] = {
        "nucleus_diameter_px": None,
        "input_kind": None,
        "cell_mask": "none",
        "crop_fraction": None,
        "bit_depth": None,
        "channels": None,
    }
    p = Path(str(ckpt_path or ""))
    if not ckpt_path or p.suffix.lower() not in (".ckpt", ".pt", ".pth") or not p.is_file():
        return out
    try:  # never the trusting way: a checkpoint that needs it simply tells nothing here
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        return out
    if not isinstance(ckpt, dict):
        return out
    dm = dict(ckpt.get("datamodule_hyper_parameters") or {})
    state = next(
        (v for v in ckpt.values() if isinstance(v, dict) and isinstance(v.get("ana_data"), dict)), {}
    )
    meta = dict(ckpt.get("ana_lightning") or {})
    d = meta.get("nucleus_diameter_px", dm.get("nucleus_diameter_px"))
    out["nucleus_diameter_px"] = float(d) if d else None
    kind = meta.get("input_kind") or dm.get("input_kind")
    # a contest cell layout (by name or as a _target_ reader config) means a model of cell crops
    contest = getattr(reader_class(dm.get("reader")), "contest", None)
    if not kind and contest is not None:
        kind = "cell"
    out["input_kind"] = kind
    # whether the run's cells came with masks; older checkpoints do not say: I3A cells always do
    masked = kind == "cell" and (bool(state["cell_masks"]) if "cell_masks" in state else contest == "i3a2014")
    out["cell_mask"] = str(dm.get("mask") or "none") if masked else "none"
    frac = dm.get("crop_fraction")
    out["crop_fraction"] = float(frac) if masked and frac else None
    try:  # a hierarchy bundle stores its members' in its own metadata
        out["bit_depth"] = check_bit_depth(meta.get("bit_depth", dm.get("bit_depth")), "data.bit_depth")
    except ValueError:  # not a depth this version reads: nothing said
        out["bit_depth"] = None
    try:
        out["channels"] = check_channels(meta.get("channels", dm.get("channels")), "data.channels")
    except ValueError:
        out["channels"] = None
    return out


def export_scale(ckpt_path: str | Path | None) -> dict[str, Any]:
    """The :func:`training_scale` keys an exported file must carry so that ``ana-predict`` and
    ``ana-app`` read fields with it as with its checkpoint (cell or field model, nucleus scale, cell
    mask, framing); ``{}`` when the checkpoint says nothing of them."""
    scale = training_scale(ckpt_path)
    reading = {k: v for k in ("bit_depth", "channels") if (v := scale.pop(k))}
    if "channels" in reading:
        reading["channels"] = list(reading["channels"])
    if scale["input_kind"] is None and scale["nucleus_diameter_px"] is None:
        return reading
    return {**scale, **reading}


#: What ana-predict / ana-app read files with, as the model's run did (``auto``): the config key (= the ``data.``
#: key), its check, and what to give when a pipeline's models disagree.
_READ_SETTINGS = {
    "bit_depth": (check_bit_depth, "bit_depth=<the camera's>"),
    "channels": (check_channels, "channels=[…] (their order)"),
}


def _model_setting(cfg: DictConfig, predictor: Predictor | None, key: str) -> Any:
    """``cfg[key]`` when it is not ``auto``, else the model's ``data.<key>``: what an exported file carries in
    its metadata (:func:`export_scale`; with ``predictor``), else what its checkpoint stores (each model of a
    ``pipeline.*``: they must agree)."""
    check, ask = _READ_SETTINGS[key]
    asked = cfg.get(key, "auto")
    if not (isinstance(asked, str) and asked.lower() == "auto"):
        return check(asked, key)
    exported = (getattr(getattr(predictor, "info", None), "extra", None) or {}).get(key)
    if exported:
        return check(exported, f"the model's data.{key}")
    from ..models.hierarchy_pipeline import pipeline_checkpoints
    from ..predict.loading import pipeline_args

    pipe = pipeline_args(cfg.get("pipeline")) is not None
    sources = (
        pipeline_checkpoints(cfg.pipeline)
        if pipe
        else [cfg.get("ckpt_path") or getattr(predictor, "source", "")]
    )
    return _agreed(sources, key, ask)


def model_bit_depth(cfg: DictConfig, predictor: Predictor | None = None) -> int | None:
    """The bit depth ana-predict / ana-app read files with more than 8 bits at: the config's ``bit_depth``
    when it is a number (or null), else (``auto``) the model's ``data.bit_depth`` (:func:`_model_setting`);
    ``None`` = the file's own range."""
    return _model_setting(cfg, predictor, "bit_depth")


def _agreed(checkpoints: Sequence[str | Path], key: str, ask: str) -> Any:
    """The ``data.<key>`` the checkpoints were trained with (:func:`training_scale`; ``None`` when none stores
    one); models trained with different ones are a ``ValueError`` naming them and what to give (``ask``)."""
    found = {v for v in (training_scale(c)[key] for c in checkpoints) if v}
    if len(found) > 1:
        raise ValueError(
            f"the models of this pipeline were trained with different data.{key} ({sorted(found)}): give "
            f"{ask} for these files"
        )
    return next(iter(found), None)


def agreed_bit_depth(checkpoints: Sequence[str | Path], ask: str) -> int | None:
    """The ``data.bit_depth`` the checkpoints were trained at (:func:`_agreed`)."""
    return _agreed(checkpoints, "bit_depth", ask)


def _use(cfg: DictConfig, predictor: Predictor | None, key: str, current, setter, said) -> Any:
    """Set how files are read from now on (``setter``) to :func:`_model_setting` and log ``said(value, source)``
    when that changes it. Called before the model is loaded (``predictor=None``: the checkpoint's, read once; a
    Siamese support folder is read as the model loads) and again after, where only an exported file's metadata
    can add to it."""
    before = current()
    auto = str(cfg.get(key, "auto")).lower() == "auto"
    if predictor is not None and auto and not (predictor.info.extra or {}).get(key):
        return before  # a checkpoint: already read before it loaded
    value = setter(_model_setting(cfg, predictor, key))
    if value and value != before:
        log.info(said(value, f"the model's data.{key}" if auto else key))
    return value


def use_bit_depth(cfg: DictConfig, predictor: Predictor | None = None) -> int | None:
    """Read every file from now on at :func:`model_bit_depth` (``images.set_bit_depth``) and say so when set
    (see :func:`_use`)."""
    return _use(
        cfg,
        predictor,
        "bit_depth",
        bit_depth,
        set_bit_depth,
        lambda depth, source: (
            f"files with more than 8 bits per pixel are read as {depth}-bit camera data: 0-{2**depth - 1} is the "
            f"full range ({source})"
        ),
    )


def use_channels(cfg: DictConfig, predictor: Predictor | None = None) -> tuple[str, ...] | None:
    """Read every multi-channel TIFF from now on with ``channels`` (``images.set_channels``): the config's order,
    null (by the names each file gives its channels), or ``auto``: the model's ``data.channels``, so files of
    the microscope it was trained on are read as its run read them (see :func:`_use`)."""
    return _use(
        cfg,
        predictor,
        "channels",
        channels,
        set_channels,
        lambda roles, source: (
            f"TIFFs of several channels are read as channels=[{','.join(roles)}] ({source}; channels=null: by the "
            "names each file gives its channels)"
        ),
    )


def model_input(cfg: DictConfig, predictor: Predictor) -> tuple[str, float | None, str, float | None]:
    """``(model kind, model nucleus diameter, cell mask mode, cell crop fraction)`` of the model, from
    the ana-predict config where it says (``model_kind``, ``model_nucleus_diameter_px``, ``cell_mask``,
    ``crop_fraction``), else from the checkpoint (:func:`training_scale`) or what an exported file
    carries (:func:`export_scale`). The crop fraction is the model's ``data.crop_fraction`` (cells
    re-cut so their mask's box spans that share of the crop) unless ``crop_fraction`` is given."""
    source = cfg.get("ckpt_path") or getattr(predictor, "source", "")
    stored = training_scale(source)
    extra = getattr(predictor.info, "extra", {}) or {}
    model_d = (
        cfg.get("model_nucleus_diameter_px")
        or stored["nucleus_diameter_px"]
        or extra.get("nucleus_diameter_px")
    )
    kind = cfg.get("model_kind", "auto")
    if kind in (None, "auto"):
        kind = stored["input_kind"] or extra.get("input_kind") or "field"
    if kind not in ("field", "cell"):
        raise ValueError(f"model_kind={kind!r} must be field, cell or auto")
    # a checkpoint says it; an exported file carries what its checkpoint said (export_scale)
    exported = stored["input_kind"] is None and stored["nucleus_diameter_px"] is None
    mask = cfg.get("cell_mask", "auto")
    if mask in (None, "auto"):
        mask = (extra.get("cell_mask") if exported else None) or stored["cell_mask"]
    frac = cfg.get("crop_fraction", "auto")  # null: the crop_margin cut, whatever the model was trained on
    if frac == "auto":
        frac = extra.get("crop_fraction") if exported else stored["crop_fraction"]
    return kind, (float(model_d) if model_d else None), str(mask), (float(frac) if frac else None)


def field_mode(
    cfg: DictConfig,
    predictor: Predictor,
    inputs: tuple[str, float | None, str, float | None] | None = None,
) -> tuple[str, float | None, str, float | None] | None:
    """:func:`model_input` when ana-predict should read fields, else ``None``: ``fields=true``, a model
    that stores its nucleus scale, a cell model, or a field option given (``FIELD_KEYS``). ``inputs``:
    :func:`model_input` already read (it reads the checkpoint)."""
    fields = cfg.get("fields", "auto")
    if fields is False or str(fields).lower() == "false":
        return None
    kind, model_d, mask, frac = inputs if inputs is not None else model_input(cfg, predictor)
    asked = any(cfg.get(k) not in (None, False) for k in FIELD_KEYS)
    on = fields is True or str(fields).lower() == "true" or model_d is not None or kind == "cell" or asked
    if not on:
        return None
    if kind == "field" and model_d is None:
        source = cfg.get("ckpt_path") or getattr(predictor, "source", "")
        raise ValueError(
            f"{source} does not store the nucleus diameter it was trained at (train with "
            "data.nucleus_diameter_px=<px>), so fields cannot be brought to its scale: give "
            "model_nucleus_diameter_px=<px> (e.g. 13 for a model trained on 256-px simulator fields resized to 128), "
            "or fields=false to resize whole images as before"
        )
    return kind, model_d, mask, frac
