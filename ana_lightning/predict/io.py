"""Files in and out of ``ana-predict``: the images of an input, the prediction CSV/JSON, the predictor a
job's config names."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.images import (
    EXPORT_HINT,
    MICROSCOPE_FORMATS,
    is_ignored,
    is_image_path,
    walk_files,
    warn_overexposed,
)
from .loading import pipeline_args
from .predictor import Prediction, Predictor, PredictSummary

__all__ = ["list_inputs", "path_table", "prediction_columns", "write_predictions", "load_predictor"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- files
def list_inputs(input: str | Path) -> list[Path]:
    """The image files of ``input``: one file, or every image file under a folder (recursively, sorted).

    Hidden files and files without an image extension in a folder are left out (and counted in the log),
    hidden and system folders (``.thumbs``, ``__MACOSX``) are not entered, symlinked folders are followed
    (:func:`~ana_lightning.data.images.walk_files`); a single file is always tried, whatever its name.
    """
    p = Path(input).expanduser()
    if p.is_file():
        return [p]
    if p.is_symlink() and not p.is_dir():
        raise FileNotFoundError(f"input={input} is a broken or looping symlink")
    if not p.is_dir():
        raise FileNotFoundError(f"input={input} is neither an image file nor a folder")
    files, other, hidden = [], [], []
    # symlinked folders followed, once each; dangling/looping symlinks kept: reported as unreadable rows
    for f in walk_files(p):
        if is_ignored(f):
            hidden.append(f)
            continue
        (files if is_image_path(f) else other).append(f)
    vendor = [f for f in other if f.suffix.lower() in MICROSCOPE_FORMATS]
    rest = [f for f in other if f.suffix.lower() not in MICROSCOPE_FORMATS]
    if vendor:
        kinds = sorted({MICROSCOPE_FORMATS[f.suffix.lower()] for f in vendor})
        said = (
            f"{len(vendor)} microscope file(s) ({', '.join(kinds)}, e.g. {vendor[0]}) not read: {EXPORT_HINT}"
        )
        if not files:
            raise FileNotFoundError(f"input={input}: no image files (.jpg, .png, .bmp, .tif); {said}")
        log.warning("%s", said)
    if rest:
        log.info("%d file(s) without an image extension left out, e.g. %s", len(rest), rest[0])
    if hidden:
        log.info("%d hidden or system file(s) left out, e.g. %s", len(hidden), hidden[0])
    if not files:
        raise FileNotFoundError(f"input={input}: no image files (.jpg, .png, .bmp, .tif) in this folder")
    return files


def _clean(p: str) -> str:
    return os.path.normpath(p.strip().replace("\\", "/")).replace("\\", "/")


def path_table(
    files: Sequence[Path], input_root: Path, table: Path, column: str, option: str, what: str = "values"
) -> dict[Path, tuple[str, int]]:
    """``{file: (value, CSV line)}`` from a CSV with columns ``path`` and ``column`` (``group_by``'s
    specimens, ``truth``'s labels). A row's path matches relative to ``input``, as an absolute or
    working-directory path (``./`` and ``\\`` allowed), or by file name when only one row has that
    name; a path listed twice with two values is refused. Files without a row are left out for the
    caller to name (an empty value is returned as it is). ``option``: the config key that names ``column``,
    and ``what`` the values are, for errors."""
    from ..data.records import read_csv_rows

    rd = iter(read_csv_rows(table, f"{option}:"))
    header = [h.strip() for h in next(rd, [])]
    if "path" not in header or column not in header:
        raise ValueError(f"{table}: needs columns 'path' and '{column}' ({option}=…); has {header}")
    ip, iv = header.index("path"), header.index(column)
    by_key: dict[str, tuple[str, int]] = {}
    by_name: dict[str, list[tuple[str, int]]] = {}
    base = input_root if input_root.is_dir() else input_root.parent
    for n, row in enumerate(rd, start=2):
        if not any(c.strip() for c in row):
            continue
        p = row[ip].strip() if ip < len(row) else ""
        value = row[iv].strip() if iv < len(row) else ""
        if not p:
            raise ValueError(f"{table}:{n}: the row has no path")
        key = _clean(p)
        for k in {key, str((base / key).resolve()), str(Path(key).resolve())}:
            if k in by_key and by_key[k][0] != value:
                raise ValueError(
                    f"{table}:{n}: {p} is listed twice with different {what} "
                    f"({by_key[k][0]!r} on line {by_key[k][1]}, {value!r} here)"
                )
            by_key[k] = (value, n)
        by_name.setdefault(Path(key).name, []).append((value, n))
    out = {}
    for f in files:
        rel = _clean(f.relative_to(input_root).as_posix()) if input_root.is_dir() else f.name
        hit = by_key.get(rel) or by_key.get(str(f.resolve())) or by_key.get(_clean(str(f)))
        if hit is None and len(by_name.get(f.name, ())) == 1:
            hit = by_name[f.name][0]
        if hit is not None:
            out[f] = hit
    return out


def prediction_columns(class_names: Sequence[str]) -> list[str]:
    """The CSV header: path, status, error, predicted label(s), top-3, hierarchy path, every probability."""
    return [
        "path",
        "status",
        "error",
        "pred",
        "confidence",
        "top1",
        "top1_prob",
        "top2",
        "top2_prob",
        "top3",
        "top3_prob",
        "level1",
        "level2",
        "level3",
        "level1_prob",
        "level2_prob",
        "level3_prob",
        *[f"p_{c}" for c in class_names],
    ]


def _row(pred: Prediction, predictor: Predictor) -> tuple[dict[str, str], dict[str, Any]]:
    names = predictor.class_names
    if not pred.ok:
        row = dict.fromkeys(prediction_columns(names), "")
        row.update(path=pred.path, status="error", error=pred.error or "")
        return row, {"path": pred.path, "status": "error", "error": pred.error}
    probs = pred.probabilities
    assert probs is not None
    top = predictor.top_k(probs, 3)
    trees = [predictor.path(probs, c) for c in pred.labels]  # [(node, p)] per level, per label
    paths = [tuple(n for n, _ in t) for t in trees]
    conf = [predictor.rule.confidence(probs, c) for c in pred.labels]
    row = {
        "path": pred.path,
        "status": "ok",
        "error": "",
        "pred": ";".join(pred.labels),
        "confidence": ";".join(f"{c:.6f}" for c in conf),
    }
    for j in range(3):
        row[f"top{j + 1}"], row[f"top{j + 1}_prob"] = (
            (top[j][0], f"{top[j][1]:.6f}") if j < len(top) else ("", "")
        )
    for lvl in range(3):
        row[f"level{lvl + 1}"] = ";".join(p[lvl] for p in paths)
        row[f"level{lvl + 1}_prob"] = ";".join("" if t[lvl][1] is None else f"{t[lvl][1]:.6f}" for t in trees)
    row.update({f"p_{c}": f"{float(x):.6f}" for c, x in zip(names, probs, strict=True)})
    js = {
        "path": pred.path,
        "status": "ok",
        "labels": list(pred.labels),
        "confidence": conf,
        "top3": [{"label": c, "prob": p} for c, p in top],
        "hierarchy": [
            {
                f"level{j + 1}{suffix}": (t[j][0] if suffix == "" else t[j][1])
                for j in range(3)
                for suffix in ("", "_prob")
            }
            for t in trees
        ],
        "probabilities": {c: float(x) for c, x in zip(names, probs, strict=True)},
    }
    return row, js


def write_predictions(
    predictions: Iterable[Prediction],
    predictor: Predictor,
    csv_path: str | Path,
    json_path: str | Path | None = None,
) -> PredictSummary:
    """Write rows as they come (a CSV and a JSON document), so memory stays flat for any number of images."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    n = failed = 0
    shares: list[tuple[str, float]] = []  # each whole image's saturated pixels, for one warning
    info = asdict(predictor.info)
    header = {"model": {**info, "source": predictor.source, "backend": predictor.backend_name}}
    jf = open(json_path, "w") if json_path else None  # noqa: SIM115 - closed in finally
    try:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=prediction_columns(predictor.class_names))
            w.writeheader()
            if jf:  # a JSON document written piece by piece: {"model": …, "predictions": [ … ], "summary": …}
                jf.write(json.dumps(header, indent=1)[:-2] + ',\n "predictions": [\n')
            for pred in predictions:
                row, js = _row(pred, predictor)
                w.writerow(row)
                if jf:
                    jf.write(("  " if n == 0 else ",\n  ") + json.dumps(js))
                n += 1
                failed += not pred.ok
                if pred.saturated is not None:
                    shares.append((pred.path, pred.saturated))
            if jf:
                jf.write('\n ],\n "summary": ' + json.dumps({"images": n, "failed": failed}) + "\n}\n")
    finally:
        if jf:
            jf.close()
    warn_overexposed(shares, "image")
    return PredictSummary(n, failed, csv_path, Path(json_path) if json_path else None)


def _output_paths(output: str | None, run_dir: Path) -> tuple[Path, Path]:
    if not output:
        return run_dir / "predictions.csv", run_dir / "predictions.json"
    out = Path(output).expanduser()
    if out.suffix.lower() in (".csv", ".json"):
        return out.with_suffix(".csv"), out.with_suffix(".json")
    return out / "predictions.csv", out / "predictions.json"


def load_predictor(cfg, command: str = "ana-predict") -> Predictor:
    """The :class:`Predictor` a job's config names: ``ckpt_path`` (a checkpoint, hierarchy bundle, ONNX or
    TorchScript file; ``support`` for Siamese models) or ``pipeline.level1/level2/level3`` (or ``multihead``)."""
    pipe = pipeline_args(cfg.get("pipeline"))
    if pipe is not None and cfg.get("ckpt_path"):
        raise ValueError(f"{command}: give either ckpt_path or pipeline.level1/level2/level3, not both")
    if pipe is not None:
        predictor = Predictor.from_pipeline(
            pipe, device=cfg.get("device", "auto"), trust_checkpoint=bool(cfg.get("trust_checkpoint"))
        )
    elif not cfg.get("ckpt_path"):
        raise ValueError(
            f"{command} needs ckpt_path=<file.ckpt | file.onnx | bundle.ckpt> "
            "(or pipeline.level1=… pipeline.level2=… pipeline.level3=…)"
        )
    else:
        predictor = Predictor.load(
            cfg.ckpt_path,
            device=cfg.get("device", "auto"),
            trust_checkpoint=bool(cfg.get("trust_checkpoint")),
            threads=cfg.get("torch_threads"),
            support=cfg.get("support"),
        )
    use_cell_tta(predictor, cfg.get("tta", "auto"))
    return predictor


def use_cell_tta(predictor: Predictor, tta: Any) -> None:
    """``tta``: ``auto`` keeps what the model does; ``false`` makes a cell model that averages the 8 dihedral
    views of each cell (``model.backbone.cell_input.tta``, the cell recipe) read each cell once: 8 times
    less compute, for a lab's CPU. A model exported with the views in its graph cannot drop them."""
    if tta is None or str(tta).lower() == "auto":
        return
    if tta is not False and str(tta).lower() != "false":
        raise ValueError(f"tta={tta!r}: auto (as the model was trained) or false (one view per cell)")
    from ..models.cells import CellInput, pause_tta
    from .loading import _TorchBackend

    backend = predictor.backend
    if type(backend) is _TorchBackend:  # a model in memory (checkpoint or pipeline), as Predictor tells them
        views = [m for m in backend.model.modules() if isinstance(m, CellInput) and m.tta]
        pause_tta(backend.model, True)
        log.info(
            "tta=false: %s",
            "each cell is read once, not as the mean of its 8 flips/rotations"
            if views
            else "the model reads each image once already",
        )
    elif predictor.info.extra.get("cell_tta"):
        raise ValueError(
            f"tta=false: {predictor.source} averages each cell's 8 flips/rotations inside its exported graph; "
            "give the model's checkpoint (.ckpt) to read each cell once"
        )
