"""The hierarchy report: per-level accuracy, MCA, confusion matrices, per-class tables and the path of
every image, from per-level confusion matrices computed once (:func:`ana_lightning.metrics.confusion_details`,
the house's one MCA definition)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.hierarchy import LEVELS
from ..metrics import MCA_DEFINITION, confusion_details, confusion_matrix
from ..models.routing import PathPrediction
from ..taxonomy import Taxonomy
from .tables import plot_confusion_matrix, write_classification_report

__all__ = ["NO_LEAF", "hierarchy_level_details", "write_hierarchy_report"]

#: How a path that ends at level 2 (no level-3 model for that group) shows in reports.
NO_LEAF = "(no leaf)"

Truth = Sequence[tuple[str | None, str | None, str | None]]


def hierarchy_level_details(truth: Truth, pred: PathPrediction, tree: Taxonomy) -> dict[int, dict[str, Any]]:
    """Per level (1, 2, 3), over the images whose label reaches it: the class ``labels`` (the tree's
    nodes seen in truth or prediction, then :data:`NO_LEAF`), the image count ``n`` and
    :func:`~ana_lightning.metrics.confusion_details` (``acc``, ``mca``, per-class values, confusion matrix)."""
    predicted = (pred.level1, pred.level2, [p or NO_LEAF for p in pred.leaf])
    out: dict[int, dict[str, Any]] = {}
    for j, lv in enumerate(LEVELS):
        keep = [i for i, t in enumerate(truth) if t[j] is not None]
        if not keep:
            continue
        y_true = [truth[i][j] for i in keep]
        y_pred = [predicted[j][i] for i in keep]
        present = set(y_true) | set(y_pred)
        labels = [n for n in tree.nodes(lv) if n in present] + ([NO_LEAF] if NO_LEAF in present else [])
        d = confusion_details(confusion_matrix(y_true, y_pred, labels))
        # numpy arrays: a level with one class gives 1x1 / length-1 tables, which must stay tables
        out[lv] = {
            "labels": labels,
            "n": len(keep),
            **{k: v.numpy() if hasattr(v, "numpy") else v for k, v in d.items()},
        }
    return out


def write_hierarchy_report(
    out_dir: str | Path,
    paths: Sequence[str],
    truth: Truth,
    pred: PathPrediction,
    tree: Taxonomy,
    stage: str = "test",
    summary: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Per-level confusion matrices, per-class reports, ``{stage}_hierarchy_report.md`` and
    ``{stage}_paths.csv`` (true and predicted path of every image). Returns the metrics
    ``{stage}/level{1,2,3}_{acc,mca}``; a level is scored on the images whose label reaches it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    details = hierarchy_level_details(truth, pred, tree)
    metrics: dict[str, float] = {}
    lines = [
        f"# {stage.capitalize()}: hierarchical pipeline",
        "",
        f"{MCA_DEFINITION}, level by level.",
        "",
        "| level | images | accuracy | MCA |",
        "|---|---|---|---|",
    ]
    for lv, d in details.items():
        acc, mca, labels = d["acc"], d["mca"], d["labels"]
        metrics[f"{stage}/level{lv}_acc"], metrics[f"{stage}/level{lv}_mca"] = acc, mca
        name = f"{stage}_level{lv}"
        plot_confusion_matrix(
            d["confmat"], labels, out_dir / f"{name}_confusion_matrix.png", title=f"level {lv}: MCA {mca:.3f}"
        )
        display = [tree.display_name(c) if tree.is_code(c) else c for c in labels]
        write_classification_report(
            d,
            labels,
            out_dir,
            summary={f"{stage}/level{lv}_acc": acc, f"{stage}/level{lv}_mca": mca},
            display_names=display,
            stage=name,
        )
        lines.append(f"| {lv} | {d['n']} | {acc:.4f} | {mca:.4f} |")
    with open(out_dir / f"{stage}_paths.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "path",
                "true_level1",
                "true_level2",
                "true_leaf",
                "pred_level1",
                "pred_level2",
                "pred_leaf",
                "path_score",
            ]
        )
        for i, p in enumerate(paths):
            t = ["" if v is None else v for v in truth[i]]
            w.writerow(
                [p, *t, pred.level1[i], pred.level2[i], pred.leaf[i] or "", f"{float(pred.score[i]):.5f}"]
            )
    if summary:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {float(v):.4f} |" for k, v in sorted(summary.items()) if np.ndim(v) == 0]
    lines += ["", *[f"![level {lv}]({stage}_level{lv}_confusion_matrix.png)" for lv in details], ""]
    (out_dir / f"{stage}_hierarchy_report.md").write_text("\n".join(lines))
    return metrics
