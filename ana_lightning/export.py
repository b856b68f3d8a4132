"""``ana-export``: a checkpoint → an ONNX or TorchScript model file plus a Markdown model card.

The exported module takes a normalised ``(N, 3, S, S)`` float32 batch (any ``N``) and returns the
class probabilities ``(N, K)``. The file carries the :class:`~ana_lightning.predict.ModelInfo` (task,
classes, input size, normalisation, thresholds) as JSON metadata, so :class:`~ana_lightning.predict.Predictor`
(and so ``ana-predict`` and ``ana-app``) use it exactly as the checkpoint. Every export is checked
against PyTorch on the same batches (max abs difference ≤ ``atol``), at two batch sizes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .fields.mode import export_scale
from .model_card import (  # noqa: F401 - _real_data_section: its old import path
    DISCLAIMER,
    INTENDED_USE,
    _real_data_section,
    write_model_card,
)
from .predict import (
    METADATA_KEY,
    DecisionRule,
    ModelInfo,
    Predictor,
    decision_rule,
    load_model,
    load_pipeline,
    pipeline_args,
    use_support,
)

__all__ = ["FORMATS", "ExportError", "ExportResult", "ProbabilityModel", "export_model", "write_model_card"]

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class ExportError(RuntimeError):
    """An export that failed or does not reproduce the PyTorch model."""


@dataclass
class ExportResult:
    model_path: Path
    card_path: Path
    max_abs_diff: float
    batch_sizes: tuple[int, ...]


class ProbabilityModel(nn.Module):
    """The exported graph: image batch → the task's outputs (:meth:`DecisionRule.model_outputs`:
    the model's ``predict_proba``, else the task's activation on its logits)."""

    def __init__(self, model: nn.Module, rule: DecisionRule):
        super().__init__()
        self.model = model
        self.rule = rule

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.rule.model_outputs(self.model, image)


def _export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    info: ModelInfo,
    opset_version: int | None,
    dynamo: bool,
) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError(
            "format=onnx needs onnx, onnxscript and onnxruntime: pip install 'ana-lightning[export]'"
        ) from None

    kwargs: dict = {
        "input_names": ["image"],
        "output_names": ["probabilities"],
        "opset_version": opset_version,
    }
    if dynamo:
        kwargs.update(
            dynamo=True,
            external_data=False,
            verbose=False,
            dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=4096)}},
        )
    else:
        kwargs.update(dynamo=False, dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
    try:
        with torch.no_grad(), _lightning_traceable(), _quiet_exporter():
            torch.onnx.export(module, (example,), str(path), **kwargs)
    except ModuleNotFoundError as e:
        raise ExportError(
            f"ONNX export needs {e.name}: pip install onnx onnxscript (or pass dynamo=false)"
        ) from None
    except Exception as e:  # noqa: BLE001
        hint = " Try dynamo=false (the TorchScript-based exporter)." if dynamo else ""
        raise ExportError(
            f"ONNX export of {info.class_path} failed: {type(e).__name__}: {str(e)[:500]}.{hint}"
        ) from None
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    proto.producer_name = "ana-lightning"
    proto.doc_string = f"ANA pattern classifier ({info.task}, {len(info.class_names)} classes): image → probabilities. {DISCLAIMER}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _lightning_traceable() -> Iterator[None]:
    """Tracing walks a LightningModule's properties, and ``.trainer`` raises outside a Trainer; Lightning's
    own ``to_torchscript`` sets this class flag for the duration (pytorch/pytorch#67146)."""
    import lightning as L

    before = L.LightningModule._jit_is_scripting
    L.LightningModule._jit_is_scripting = True
    try:
        yield
    finally:
        L.LightningModule._jit_is_scripting = before


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's dynamo exporter logs every optimisation pass at INFO; keep warnings only."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, info: ModelInfo) -> None:
    log.info("TorchScript is deprecated in recent PyTorch releases; prefer format=onnx for new deployments")
    try:
        with torch.no_grad(), _lightning_traceable(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            traced = torch.jit.trace(module, (example,), check_trace=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(
            f"TorchScript tracing of {info.class_path} failed: {type(e).__name__}: {str(e)[:500]}"
        ) from None
    traced.save(str(path), _extra_files={f"{METADATA_KEY}.json": info.to_json()})


def _cell_tta(model: nn.Module) -> dict[str, Any]:
    """``{"cell_tta": True}`` when the model's cell input averages the 8 dihedral views at evaluation
    (``model.backbone.cell_input.tta``): the exported graph does it, so callers pass each cell once."""
    from .models.cells import CellInput

    return {"cell_tta": True} if any(isinstance(m, CellInput) and m.tta for m in model.modules()) else {}


def check_parity(
    reference: nn.Module,
    exported: Predictor,
    image_size: int,
    batch_sizes: Sequence[int] = (1, 5),
    seed: int = 0,
) -> float:
    """Max abs difference of the exported model's probabilities vs PyTorch on the same random batches."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in batch_sizes:
        x = torch.randn(n, 3, image_size, image_size, generator=gen)
        with torch.inference_mode():
            want = reference(x).float().numpy()
        got = exported.predict_proba(x.numpy())
        if got.shape != want.shape:
            raise ExportError(
                f"exported model returned shape {got.shape} for a batch of {n}, PyTorch {want.shape}"
            )
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export_paths(output: str | Path | None, format: str = "onnx") -> tuple[Path, Path]:
    """Where :func:`export_model` writes: ``(the model file, its model card)``. ``output`` is a file, or a
    folder (or a name without a suffix) that gets ``model.onnx`` / ``model.torchscript.pt``; the card is
    ``<stem>_card.md`` beside the file (``model_card.md`` for ``model.onnx``)."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {sorted(FORMATS)}")
    out = Path(output).expanduser() if output else Path("model" + FORMATS[fmt])
    if out.is_dir() or not out.suffix:
        out = out / ("model" + FORMATS[fmt])
    return out, out.with_name(out.name.split(".")[0] + "_card.md")


def export_model(
    ckpt_path: str | Path | None,
    format: str = "onnx",
    output: str | Path | None = None,
    opset_version: int | None = 18,
    dynamo: bool = True,
    atol: float = 1e-4,
    trust_checkpoint: bool = False,
    card: bool = True,
    pipeline: Mapping[str, Any] | None = None,
    support: str | Path | None = None,
) -> ExportResult:
    """Export ``ckpt_path`` to ``format`` (``onnx`` | ``torchscript``) at ``output`` (a file, or a folder
    that gets ``model.onnx`` / ``model.torchscript.pt``), check it against PyTorch, and write its model
    card beside it (``model_card.md`` for ``model.onnx``).

    Every checkpoint kind: softmax, sigmoid ensemble, Siamese (its stored support set, or ``support``, a
    folder, baked into the file), multi-head, a hierarchy bundle; or ``pipeline`` (``level1``, ``level2``,
    ``level3`` checkpoints or run folders): its bundle is written beside the output first. A hierarchical
    model is exported as one file whose output is the level-1, level-2 and leaf probabilities side by side.
    """
    fmt = str(format).lower()
    out, card_path = export_paths(output, fmt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"output={output}: cannot create the folder {out.parent}: {e.strerror}") from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ExportError(
            f"output={output}: {out.parent if not out.exists() else out} is not writable; "
            "choose another output=<file or folder>"
        )

    args = pipeline_args(pipeline)
    if args is not None:
        if ckpt_path:
            raise ValueError("give either ckpt_path or pipeline.level1/level2/level3, not both")
        model, meta = load_pipeline(**args, trust_checkpoint=trust_checkpoint)
        ckpt_path = model.pipeline.write_bundle(out.with_name(out.name.split(".")[0] + "_pipeline.ckpt"))
        log.info("wrote the pipeline's bundle %s", ckpt_path)
        scale = export_scale(ckpt_path)
    elif not ckpt_path:
        raise ValueError(
            "ana-export needs ckpt_path=<file.ckpt | bundle.ckpt> (or pipeline.level1=… level2=… level3=…)"
        )
    else:
        ckpt_path = Path(ckpt_path).expanduser()
        model, meta = load_model(ckpt_path, map_location="cpu", trust_checkpoint=trust_checkpoint)
        scale = export_scale(ckpt_path)  # read once: it loads the checkpoint
        if support:  # read as the model's run read its files (its data.bit_depth and data.channels)
            from .data.images import set_bit_depth, set_channels

            set_bit_depth(scale.get("bit_depth"))
            set_channels(scale.get("channels"))
        use_support(model, support)
    ckpt_path = Path(ckpt_path)
    model = model.float().eval()
    info = ModelInfo.from_model(model, meta)
    # how its inputs are prepared (cell or field model, nucleus scale, cell mask, framing), so the
    # exported file reads a lab's fields as its checkpoint does (ana-predict, ana-app: fields.mode);
    # a contest-class model's class_nodes come with the checkpoint's metadata (load_model)
    info = replace(info, extra={**info.extra, **scale, **_cell_tta(model)})
    rule = decision_rule(info)
    module = ProbabilityModel(model, rule).eval()
    example = torch.randn(2, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(1))
    log.info(
        "exporting %s (%s, %d classes, %d px) to %s",
        ckpt_path,
        info.task,
        len(info.class_names),
        info.image_size,
        out,
    )
    if fmt == "onnx":
        _export_onnx(module, example, out, info, opset_version, dynamo)
    else:
        _export_torchscript(module, example, out, info)

    exported = Predictor.load(out, device="cpu")
    if exported.info != info:
        raise ExportError(f"{out}: the stored metadata does not read back as written")
    batch_sizes = (1, 5)
    diff = check_parity(module, exported, info.image_size, batch_sizes)
    log.info("parity with PyTorch: max abs difference %.2e over batch sizes %s", diff, batch_sizes)
    if not diff <= atol:
        raise ExportError(f"{out} differs from the PyTorch model by up to {diff:.3e} (> atol={atol})")
    if card:
        write_model_card(
            card_path,
            info,
            ckpt_path,
            out,
            fmt,
            diff,
            batch_sizes,
            opset_version=opset_version if fmt == "onnx" else None,
        )
    return ExportResult(out, card_path, diff, batch_sizes)


def __getattr__(name: str) -> Any:
    """The ana-export job moved to :mod:`ana_lightning.jobs.export` (this old import path still works)."""
    if name in ("run_export",):
        import importlib

        return getattr(importlib.import_module("ana_lightning.jobs.export"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
