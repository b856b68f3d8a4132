"""Does ``ana-predict`` (a checkpoint or the exported file) give on a run's cells what the run measured?

    ana-predict ckpt_path=<run>/export/model.onnx input=<I3A training folder> hydra.run.dir=outputs/pred
    python experiments/i3a_cells/predict_check.py outputs/<run> outputs/pred [--split test] [--out table.md]

Scores ana-predict's per-cell rows (``predictions.csv``, one row per cell crop) against the labels of one
split of the run's ``split_manifest.csv`` (class names from its ``classes.csv``) and prints the MCA beside
the run's own ``<split>/mca`` from ``metrics.json``. A model handed to a lab should read its cells as the
run did: the two agree to rounding when ana-predict prepares each cell as the run's datamodule did.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf
from report_out import emit


def _real(path: str | Path) -> str:
    return os.path.realpath(os.fspath(path))


def check(run: Path, predictions: Path, split: str = "test", root: Path | None = None) -> dict:
    """``{"cells", "scored", "errors", "recall": {class: recall}, "mca", "run_mca"}`` of one split."""
    run = Path(run)
    predictions = Path(predictions)
    if predictions.is_dir():
        predictions = predictions / "predictions.csv"
    if root is None:
        root = Path(str(OmegaConf.load(run / "config_resolved.yaml").data.root))
    with open(run / "classes.csv", newline="") as f:
        node_to_class = {r["tree_label"]: r["class"] for r in csv.DictReader(f)}
    with open(run / "split_manifest.csv", newline="") as f:
        truth = {
            _real(root / r["path"]): node_to_class[r["label"]]
            for r in csv.DictReader(f)
            if r["split"] == split
        }
    if not truth:
        raise ValueError(f"{run / 'split_manifest.csv'} has no {split!r} rows")
    with open(predictions, newline="") as f:
        rows = {_real(r["path"]): r for r in csv.DictReader(f)}
    if "pred" not in next(iter(rows.values()), {}):
        raise ValueError(f"{predictions} has no per-image 'pred' column: was it a field-mode run?")
    hits, totals, errors = Counter(), Counter(), 0
    for path, label in truth.items():
        r = rows.get(path)
        if r is None or r["status"] != "ok":
            errors += 1
            continue
        totals[label] += 1
        hits[label] += r["pred"] == label
    recall = {c: hits[c] / totals[c] for c in node_to_class.values() if totals[c]}
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    return {
        "cells": len(truth),
        "scored": sum(totals.values()),
        "errors": errors,
        "recall": recall,
        "mca": sum(recall.values()) / len(recall) if recall else float("nan"),
        "run_mca": metrics.get(f"{split}/mca"),
    }


def table(res: dict, split: str) -> str:
    run_mca = f"{res['run_mca']:.4f}" if res["run_mca"] is not None else "–"
    lines = [
        f"| {split} cells | scored | not predicted | MCA from ana-predict | the run's {split}/mca |",
        "|---|---|---|---|---|",
        f"| {res['cells']} | {res['scored']} | {res['errors']} | **{res['mca']:.4f}** | {run_mca} |",
        "",
        "| " + " | ".join(res["recall"]) + " |",
        "|" + "---|" * len(res["recall"]),
        "| " + " | ".join(f"{v:.3f}" for v in res["recall"].values()) + " |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "run", type=Path, help="the training run folder (split_manifest.csv, classes.csv, metrics.json)"
    )
    ap.add_argument("predictions", type=Path, help="ana-predict's run folder or its predictions.csv")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--root", type=Path, default=None, help="the cells folder (default: the run's data.root)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    emit(table(check(a.run, a.predictions, a.split, a.root), a.split), a.out)


if __name__ == "__main__":
    main()
