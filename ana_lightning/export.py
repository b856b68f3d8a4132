"""``ana-export``: a checkpoint → an ONNX or TorchScript model file plus a Markdown model card.

The exported module takes a normalised ``(N, 3, S, S)`` float32 batch (any ``N``) and returns the
class probabilities ``(N, K)``. The file carries the :class:`~ana_lightning.predict.ModelInfo` (task,
classes, input size, normalisation, thresholds) as JSON metadata, so :class:`~ana_lightning.predict.Predictor`
(and so ``ana-predict`` and ``ana-app``) use it exactly as the checkpoint. Every export is checked
against PyTorch on the same batches (max abs difference ≤ ``atol``), at two batch sizes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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

DISCLAIMER = (
    "This model is a **research and diagnostic aid**. Its output is a suggestion that must be confirmed by "
    "an expert reading the slide (a trained immunofluorescence reader); it is not a medical device and "
    "has not been validated for clinical decisions."
)


#: The model card's intended-use line, also shown by ana-app.
INTENDED_USE = (
    "Suggesting the ICAP anti-nuclear antibody pattern(s) of HEp-2 indirect immunofluorescence field images "
    "(FITC, as in training), to support research and a trained reader's interpretation. Not for: deciding a "
    "diagnosis or a treatment without an expert, cell crops or stains unlike the training data, patterns "
    "outside the classes below (the model always answers with one of them)."
)


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, info: ModelInfo, opset_version: int | None,
                 dynamo: bool) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("format=onnx needs onnx, onnxscript and onnxruntime: pip install 'ana-lightning[export]'") from None

    kwargs: dict = {"input_names": ["image"], "output_names": ["probabilities"], "opset_version": opset_version}
    if dynamo:
        kwargs.update(dynamo=True, external_data=False, verbose=False,
                      dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=4096)}})
    else:
        kwargs.update(dynamo=False, dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
    try:
        with torch.no_grad(), _lightning_traceable(), _quiet_exporter():
            torch.onnx.export(module, (example,), str(path), **kwargs)
    except ModuleNotFoundError as e:
        raise ExportError(f"ONNX export needs {e.name}: pip install onnx onnxscript (or pass dynamo=false)") from None
    except Exception as e:  # noqa: BLE001
        hint = " Try dynamo=false (the TorchScript-based exporter)." if dynamo else ""
        raise ExportError(f"ONNX export of {info.class_path} failed: {type(e).__name__}: {str(e)[:500]}.{hint}") from None
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
        raise ExportError(f"TorchScript tracing of {info.class_path} failed: {type(e).__name__}: {str(e)[:500]}") from None
    traced.save(str(path), _extra_files={f"{METADATA_KEY}.json": info.to_json()})


def check_parity(reference: nn.Module, exported: Predictor, image_size: int, batch_sizes: Sequence[int] = (1, 5),
                 seed: int = 0) -> float:
    """Max abs difference of the exported model's probabilities vs PyTorch on the same random batches."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in batch_sizes:
        x = torch.randn(n, 3, image_size, image_size, generator=gen)
        with torch.inference_mode():
            want = reference(x).float().numpy()
        got = exported.predict_proba(x.numpy())
        if got.shape != want.shape:
            raise ExportError(f"exported model returned shape {got.shape} for a batch of {n}, PyTorch {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export_model(ckpt_path: str | Path | None, format: str = "onnx", output: str | Path | None = None,
                 opset_version: int | None = 18, dynamo: bool = True, atol: float = 1e-4,
                 trust_checkpoint: bool = False, card: bool = True, pipeline: Mapping[str, Any] | None = None,
                 support: str | Path | None = None) -> ExportResult:
    """Export ``ckpt_path`` to ``format`` (``onnx`` | ``torchscript``) at ``output`` (a file, or a folder
    that gets ``model.onnx`` / ``model.torchscript.pt``), check it against PyTorch, and write its model
    card beside it (``model_card.md`` for ``model.onnx``).

    Every checkpoint kind: softmax, sigmoid ensemble, Siamese (its stored support set, or ``support``, a
    folder, baked into the file), multi-head, a hierarchy bundle; or ``pipeline`` (``level1``, ``level2``,
    ``level3`` checkpoints or run folders): its bundle is written beside the output first. A hierarchical
    model is exported as one file whose output is the level-1, level-2 and leaf probabilities side by side.
    """
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {sorted(FORMATS)}")
    out = Path(output).expanduser() if output else Path("model" + FORMATS[fmt])
    if out.is_dir() or not out.suffix:
        out = out / ("model" + FORMATS[fmt])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"output={output}: cannot create the folder {out.parent}: {e.strerror}") from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ExportError(f"output={output}: {out.parent if not out.exists() else out} is not writable; "
                          "choose another output=<file or folder>")

    args = pipeline_args(pipeline)
    if args is not None:
        if ckpt_path:
            raise ValueError("give either ckpt_path or pipeline.level1/level2/level3, not both")
        model, meta = load_pipeline(**args, trust_checkpoint=trust_checkpoint)
        ckpt_path = model.pipeline.write_bundle(out.with_name(out.name.split(".")[0] + "_pipeline.ckpt"))
        log.info("wrote the pipeline's bundle %s", ckpt_path)
    elif not ckpt_path:
        raise ValueError("ana-export needs ckpt_path=<file.ckpt | bundle.ckpt> (or pipeline.level1=… level2=… level3=…)")
    else:
        ckpt_path = Path(ckpt_path).expanduser()
        model, meta = load_model(ckpt_path, map_location="cpu", trust_checkpoint=trust_checkpoint)
        use_support(model, support)
    ckpt_path = Path(ckpt_path)
    model = model.float().eval()
    info = ModelInfo.from_model(model, meta)
    rule = decision_rule(info)
    module = ProbabilityModel(model, rule).eval()
    example = torch.randn(2, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(1))
    log.info("exporting %s (%s, %d classes, %d px) to %s", ckpt_path, info.task, len(info.class_names), info.image_size, out)
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
    card_path = out.with_name(out.name.split(".")[0] + "_card.md")
    if card:
        write_model_card(card_path, info, ckpt_path, out, fmt, diff, batch_sizes,
                         opset_version=opset_version if fmt == "onnx" else None)
    return ExportResult(out, card_path, diff, batch_sizes)


# ---------------------------------------------------------------------------------------------- model card
def _run_folder(ckpt_path: Path) -> Path | None:
    """The training run folder of ``<run>/checkpoints/<file>.ckpt``."""
    run = ckpt_path.resolve().parent.parent
    if ckpt_path.resolve().parent.name == "checkpoints" and (run / "config_resolved.yaml").is_file():
        return run
    here = ckpt_path.resolve().parent  # a hierarchy bundle in its eval_hierarchy folder
    return here if (here / "evaluated.txt").is_file() and (here / "config_resolved.yaml").is_file() else None


def _training_data_section(run: Path | None, info: ModelInfo) -> list[str]:
    from omegaconf import OmegaConf

    from .data.splits import SPLITS, load_manifest
    from .taxonomy import Taxonomy

    md = ["## Training data", ""]
    if run is None:
        return md + ["Not available: the checkpoint is not inside its training run folder (no split manifest "
                     "or resolved config next to it).", ""]
    try:
        data = OmegaConf.load(run / "config_resolved.yaml").get("data", {})
        target = str(data.get("_target_", "?")).rsplit(".", 1)[-1]
        where = data.get("root") or data.get("cache_dir") or "?"
        md.append(f"- Data module: `{target}`, from `{where}`")
        if "Synthetic" in target:
            md.append(f"- **Synthetic** HEp-2 fields from the built-in simulator ({data.get('n_per_class')} per class, "
                      f"rendered at {data.get('render_size')} px): a model trained on them only has not seen a real slide.")
        md.append(f"- Split: fractions {list(data.get('split_fractions', []))}, seed {data.get('seed')} "
                  "(stratified, grouped by patient where known, duplicates kept together)")
    except Exception as e:  # noqa: BLE001 - the card is still useful without it
        md.append(f"- (config_resolved.yaml unreadable: {e})")
    manifest = run / "split_manifest.csv"
    if manifest.is_file():
        try:
            splits = load_manifest(manifest, taxonomy=Taxonomy.load())
        except Exception as e:  # noqa: BLE001
            return md + [f"- (split manifest unreadable: {e})", ""]
        counts = {s: Counter(c for r in splits[s] for c in r.codes) for s in SPLITS}
        groups = {s: len({r.group for r in splits[s] if r.group}) for s in SPLITS}
        md += ["", "| class | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
        for c in info.class_names:
            md.append(f"| {c} | " + " | ".join(str(counts[s][c]) for s in SPLITS) + " |")
        md.append("| **images** | " + " | ".join(f"**{len(splits[s])}**" for s in SPLITS) + " |")
        if any(groups.values()):
            md.append("| groups (patients) | " + " | ".join(str(groups[s]) for s in SPLITS) + " |")
    return md + [""]


def _metrics_section(run: Path | None, ckpt_path: Path) -> list[str]:
    import csv
    import json

    md = ["## Metrics on its test split", ""]
    metrics_file = run / "metrics.json" if run else None
    if metrics_file is None or not metrics_file.is_file():
        return md + ["Not available (no metrics.json in the training run folder).", ""]
    best = run / "best_checkpoint.txt"
    if best.is_file() and Path(best.read_text().strip()).resolve() != ckpt_path.resolve():
        md += [f"> **Note:** these metrics belong to `{Path(best.read_text().strip()).name}`, the run's best checkpoint, "
               f"not to the exported `{ckpt_path.name}`.", ""]
    metrics = json.loads(metrics_file.read_text())
    md += ["| metric | value |", "|---|---|"]
    md += [f"| `{k}` | {v:.4f} |" if isinstance(v, int | float) else f"| `{k}` | {v} |" for k, v in sorted(metrics.items())]
    per_class = run / "test_per_class.csv"
    if per_class.is_file():
        with open(per_class, newline="") as f:
            rows = list(csv.DictReader(f))
        md += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        md += [f"| {r['name']} | {float(r['precision']):.3f} | {float(r['recall']):.3f} | {float(r['f1']):.3f} | {r['support']} |"
               for r in rows]
        n = sum(int(r["support"]) for r in rows)
        if n < 10 * max(1, len(rows)):
            md += ["", f"Only {n} test images ({n / max(1, len(rows)):.1f} per class): these figures are very uncertain."]
    return md + [""]


_HEADLINE = ("test/mca", "test/acc", "test/macro_f1", "test/micro_f1", "test/exact_match", "test/level1_mca",
             "test/level2_mca", "test/level3_mca")


def _run_metrics(run: Path | None, ckpt_path: Path) -> dict[str, Any]:
    import json

    for folder in (run, ckpt_path.resolve().parent):  # a training run, or the eval_hierarchy folder of a bundle
        if folder is not None and (folder / "metrics.json").is_file():
            try:
                return json.loads((folder / "metrics.json").read_text())
            except ValueError:
                return {}
    return {}


def _is_synthetic(run: Path | None) -> bool | None:
    from omegaconf import OmegaConf

    if run is None:
        return None
    try:
        data = OmegaConf.load(run / "config_resolved.yaml").get("data", {})
    except Exception:  # noqa: BLE001
        return None
    target = str(data.get("_target_", ""))
    return "Synthetic" in target or ("Hierarchy" in target and not data.get("root"))  # hierarchy: root null = simulator


def _real_data_section(run: Path | None, metrics: dict[str, Any]) -> list[str]:
    """The run's headline test figures, said plainly to be on real or on synthetic images."""
    md = ["## Real-data figures", ""]
    synthetic = _is_synthetic(run)
    figures = [(k, metrics[k]) for k in _HEADLINE if isinstance(metrics.get(k), int | float)]
    if synthetic:
        return md + ["None: this run was trained and tested on **synthetic** fields only; its figures below say "
                     "nothing about real slides. Evaluate it on real images (`ana-eval`) before any use.", ""]
    if not figures:
        return md + ["Not available (no test metrics in the run folder).", ""]
    where = "real images of the run's own held-out test split" if synthetic is False else "the run's test split"
    md += [f"On {where}:", "", "| metric | value |", "|---|---|"]
    md += [f"| `{k}` | {float(v):.4f} |" for k, v in figures]
    return md + [""]


def _calibration_section(info: ModelInfo, metrics: dict[str, Any], run: Path | None) -> list[str]:
    t = info.extra.get("temperature")
    md = ["## Calibration", ""]
    if isinstance(t, dict):
        fitted = {k: v for k, v in t.items() if v}
        md.append("Each model of the pipeline carries its own temperature, fitted on its validation split after training: "
                  + (", ".join(f"{k} {[round(float(x), 3) for x in v]}" for k, v in fitted.items()) or "none (uncalibrated)")
                  + ".")
    elif t:
        md.append(f"The probabilities are temperature-scaled (T = {[round(float(x), 3) for x in t]}), fitted on the "
                  "validation split after training; the argmax (and multi-label decisions, whose thresholds moved with "
                  "T) are those of the raw model.")
    else:
        md.append("Not calibrated (trained with calibrate=false, or before calibration existed): the probabilities are "
                  "raw softmax/sigmoid outputs and may be over-confident.")
    if isinstance(metrics.get("test/ece"), int | float):
        md += ["", "| expected calibration error (test split, 15 bins) | value |", "|---|---|",
               f"| uncalibrated | {float(metrics.get('test/ece_uncalibrated', float('nan'))):.4f} |",
               f"| as served | {float(metrics['test/ece']):.4f} |"]
        if run is not None and (run / "test_reliability_diagram.png").is_file():
            md += ["", "Reliability diagram: `test_reliability_diagram.png` in the run folder."]
    else:
        md += ["", "Calibration error: not measured for this run (no `test/ece` in its metrics.json)."]
    return md + [""]


def write_model_card(path: str | Path, info: ModelInfo, ckpt_path: Path, model_path: Path, fmt: str, max_abs_diff: float,
                     batch_sizes: Sequence[int], opset_version: int | None = None) -> Path:
    """The Markdown model card: classes, training data, test metrics, thresholds, intended use, disclaimer."""
    from . import __version__ as version
    from .taxonomy import Taxonomy

    tree = Taxonomy.load()
    run = _run_folder(ckpt_path)
    title = info.class_path.rsplit(".", 1)[-1] + (f" ({info.extra['backbone']})" if info.extra.get("backbone") else "")
    md = [
        f"# Model card: {title}, ANA pattern classifier",
        "",
        f"> {DISCLAIMER}",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Model",
        "",
        f"- File: `{model_path.name}` ({fmt}{f', opset {opset_version}' if opset_version else ''}), sha256 `{_sha256(model_path)}`",
        f"- From checkpoint: `{ckpt_path.name}`, sha256 `{_sha256(ckpt_path)}`",
        f"- Trained as: `{info.class_path}`; task `{info.task}`",
        f"- Exported: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} with ana-lightning {version}, "
        f"torch {torch.__version__}",
        f"- Input: RGB field image, any size, resized to {info.image_size}×{info.image_size} (area interpolation), "
        f"scaled to [0, 1] and normalised with mean {list(info.mean)}, std {list(info.std)}; tensor `image` (N, 3, "
        f"{info.image_size}, {info.image_size}), any batch size N",
        f"- Output: `probabilities` (N, {len(decision_rule(info).output_names)}) in the order "
        + ("level-1 nodes, level-2 nodes, then the leaves below" if info.task == "hierarchical" else "of the classes below"),
        f"- Parity with the PyTorch model: max abs difference {max_abs_diff:.2e} on random batches of "
        f"{', '.join(map(str, batch_sizes))} images",
        "",
        "## Decision rule and thresholds",
        "",
    ]
    if info.task == "multi_label":
        thr = info.thresholds or (0.5,) * len(info.class_names)
        md += ["Every class whose probability reaches its threshold is predicted (none if no class does).", "",
               "| class | threshold |", "|---|---|", *[f"| {c} | {t:.3f} |" for c, t in zip(info.class_names, thr, strict=True)]]
    elif info.task == "single_label":
        md += ["Single-label: the most probable class is predicted (softmax; no threshold)."]
    elif info.task == "hierarchical":
        md += [f"Hierarchical ({info.extra.get('routing')} routing over the ICAP tree): the outputs are the level-1, level-2 "
               "and leaf probabilities side by side; the predicted path is always a path of the tree (leaf under its "
               "level-2 node, under its level-1 node), with P(level 1), P(level 1)·P(level 2 | level 1) and the path "
               "probability. A group without a level-3 model ends at level 2."]
    else:
        md += [f"Task `{info.task}`: see its decision rule in `ana_lightning.predict`."]
        if info.thresholds:
            md += ["", "Thresholds: " + ", ".join(f"{c} {t:.3f}" for c, t in zip(info.class_names, info.thresholds, strict=True))]
    md += ["", "## Classes", "", "| index | code | pattern | level 1 | level 2 |", "|---|---|---|---|---|"]
    for i, c in enumerate(info.class_names):
        if tree.is_code(c):
            md.append(f"| {i} | {c} | {tree.names[tree.parse_code(c)]} | {tree.level_of(c, 1)} | {tree.level_of(c, 2)} |")
        else:
            md.append(f"| {i} | {c} | | | |")
    md.append("")
    metrics = _run_metrics(run, ckpt_path)
    md += _real_data_section(run, metrics)
    md += _calibration_section(info, metrics, run)
    md += _training_data_section(run, info)
    md += _metrics_section(run, ckpt_path)
    md += [
        "## Limitations",
        "",
        "- Patterns outside the class list, mixed patterns (for a single-label model), unusual magnification, "
        "other substrates or stains, and out-of-focus or saturated fields get confident-looking wrong answers.",
        "- Figures above come from the run's own held-out test split; they say little about another lab's slides.",
        "",
        "## How to use",
        "",
        f"`ana-predict ckpt_path={model_path.name} input=<image or folder>` or `ana-app ckpt_path={model_path.name}`; "
        "the preprocessing above is read from the file.",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(md))
    return path


def __getattr__(name: str) -> Any:
    """The ana-export job moved to :mod:`ana_lightning.jobs.export` (this old import path still works)."""
    if name in ("run_export",):
        import importlib

        return getattr(importlib.import_module("ana_lightning.jobs.export"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
