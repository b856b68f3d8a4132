"""Run-folder reports, written from metrics already computed (never recomputed here)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..stats import majority_vote

__all__ = [
    "write_metrics_json",
    "write_classification_report",
    "plot_confusion_matrix",
    "write_predictions",
    "summary_rows",
    "write_group_report",
]


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_metrics_json(metrics: Mapping[str, object], path: str | Path) -> Path:
    """``metrics.json`` with the keys exactly as logged (``test/mca``, ``test/acc``, …)."""
    path = Path(path)
    data = {k: _plain(v) for k, v in sorted(metrics.items())}
    data = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def summary_rows(
    summary: Mapping[str, object], keys: Sequence[str] | None = None, digits: int = 4
) -> list[str]:
    """Markdown rows ``| `key` | value |`` of the scalar metrics; a metric with a bootstrap interval
    (``<key>_ci95_low`` / ``_ci95_high``) shows as ``0.83 [0.78, 0.88]`` and its bounds get no row."""
    scalars = {k: _plain(v) for k, v in summary.items() if np.ndim(_plain(v)) == 0}
    keys = [k for k in (keys if keys is not None else sorted(scalars)) if k in scalars and "_ci95_" not in k]
    rows = []
    for k in keys:
        v, lo, hi = scalars[k], scalars.get(f"{k}_ci95_low"), scalars.get(f"{k}_ci95_high")
        text = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"
        if lo is not None and hi is not None and not (math.isnan(float(lo)) or math.isnan(float(hi))):
            text = f"{float(v):.2f} [{float(lo):.2f}, {float(hi):.2f}]"
        rows.append(f"| `{k}` | {text} |")
    return rows


def plot_confusion_matrix(
    confmat: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
    col_names: Sequence[str] | None = None,
) -> Path:
    """Row-normalised confusion matrix (rows = true class), with counts in the cells when small.
    ``col_names``: the predicted side's names when they differ from the rows' (a rectangular matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(_plain(confmat), dtype=float)
    cols = list(class_names if col_names is None else col_names)
    k, m = len(class_names), len(cols)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(5.0, 0.32 * k + 2)
    width = size + 1 if col_names is None else max(5.0, 0.45 * m + 4.5)
    fig, ax = plt.subplots(figsize=(width, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="equal" if col_names is None else "auto")
    ax.set_xticks(range(m), cols, rotation=90, fontsize=7 if m > 16 else 9)
    ax.set_yticks(range(k), class_names, fontsize=7 if k > 16 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if max(k, m) <= 40:
        for i in range(k):
            for j in range(m):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6 if k > 16 else 8,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_classification_report(
    details: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    out_dir: str | Path,
    summary: Mapping[str, object] | None = None,
    display_names: Sequence[str] | None = None,
    stage: str = "test",
) -> tuple[Path, Path]:
    """Per-class precision / recall / F1 / support as CSV and Markdown (with the summary metrics)."""
    out_dir = Path(out_dir)
    cm = np.asarray(_plain(details["confmat"]), dtype=int)
    support = cm.sum(axis=1)
    rows = []
    for i, c in enumerate(class_names):
        rows.append(
            {
                "class": c,
                "name": display_names[i] if display_names else c,
                "precision": float(_plain(details["precision"])[i]),
                "recall": float(_plain(details["recall"])[i]),
                "f1": float(_plain(details["f1"])[i]),
                "support": int(support[i]),
            }
        )
    csv_path = out_dir / f"{stage}_per_class.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from ..metrics import MCA_DEFINITION

    present = int((support > 0).sum())
    md = [
        f"# {stage.capitalize()} report",
        "",
        f"{int(support.sum())} images; {present} of the model's "
        f"{len(class_names)} classes are present in the ground truth. {MCA_DEFINITION}.",
        "",
    ]
    if summary:
        md += ["| metric | value |", "|---|---|"]
        md += summary_rows(summary)
        md.append("")
    md += ["| class | name | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
    md += [
        f"| {r['class']} | {r['name']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        for r in rows
    ]
    md += ["", f"![confusion matrix]({stage}_confusion_matrix.png)", ""]
    md_path = out_dir / f"{stage}_report.md"
    md_path.write_text("\n".join(md))
    return csv_path, md_path


def write_predictions(
    paths: Sequence[str],
    prob: torch.Tensor,
    target: torch.Tensor | None,
    class_names: Sequence[str],
    path: str | Path,
) -> Path:
    """One row per image: path, true label, predicted label, confidence, every class's probability."""
    prob = prob.detach().cpu().float()
    pred = prob.argmax(-1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "pred", "confidence", *[f"p_{c}" for c in class_names]])
        for i, p in enumerate(paths):
            true = class_names[int(target[i])] if target is not None else ""
            w.writerow(
                [
                    p,
                    true,
                    class_names[int(pred[i])],
                    f"{float(prob[i, pred[i]]):.4f}",
                    *[f"{x:.5f}" for x in prob[i].tolist()],
                ]
            )
    return Path(path)


#: The most groups :func:`write_group_report` lists in a Markdown report.
MAX_GROUP_ROWS = 40


def write_group_report(
    groups: Sequence[str | None],
    target: torch.Tensor,
    pred: torch.Tensor,
    class_names: Sequence[str],
    out_dir: str | Path,
    stage: str = "test",
) -> Path | None:
    """Accuracy per group (specimen, slide, patient) as ``{stage}_per_group.csv``, and the same table
    appended to ``{stage}_report.md``: on real cells a model's errors come by whole specimens (one
    specimen read as another class), which a per-class table hides. Each row: the group, its true
    class(es), its images, their accuracy and the most frequent prediction with its share. The report
    also says how many single-class groups a majority vote of their images reads right (a tie is no
    verdict), and shows at most ``MAX_GROUP_ROWS`` groups (the least accurate; the CSV has all).
    Nothing is written when fewer than two images have a group. Returns the CSV path or None."""
    keep = [i for i, g in enumerate(groups) if g not in (None, "")]
    if len(keep) < 2:
        return None
    t = [int(v) for v in _plain(target)]
    p = [int(v) for v in _plain(pred)]
    by: dict[str, list[int]] = {}
    for i in keep:
        by.setdefault(str(groups[i]), []).append(i)
    rows, verdicts = [], []
    for g, idx in sorted(by.items()):
        truth = sorted({class_names[t[i]] for i in idx})
        counts = np.bincount([p[i] for i in idx], minlength=len(class_names))
        top = int(counts.argmax())
        if len(truth) == 1:  # read right when its class wins outright (a tie is no verdict)
            verdicts.append(majority_vote(dict(zip(class_names, counts.tolist(), strict=True))) == truth[0])
        rows.append(
            {
                "group": g,
                "true": "+".join(truth),
                "images": len(idx),
                "accuracy": float(np.mean([p[i] == t[i] for i in idx])),
                "most_predicted": class_names[top],
                "most_predicted_share": float(counts[top] / len(idx)),
            }
        )
    out_dir = Path(out_dir)
    csv_path = out_dir / f"{stage}_per_group.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    shown = rows
    note = ""
    if len(rows) > MAX_GROUP_ROWS:
        shown = sorted(rows, key=lambda r: r["accuracy"])[:MAX_GROUP_ROWS]
        note = f" The {MAX_GROUP_ROWS} least accurate are shown; `{csv_path.name}` has all."
    verdict = ""
    if verdicts:  # what a lab reads off a specimen: the class most of its images are given
        verdict = (
            f" By majority vote of its images, **{sum(verdicts)} of {len(verdicts)}** single-class groups are "
            f"read as their own class."
        )
    md = [
        "",
        "## Per group",
        "",
        f"{len(rows)} groups (the split's grouping: specimen, slide or patient). Errors that come by whole "
        f"groups are a shift between groups, not noise.{verdict}{note}",
        "",
        "| group | true class | images | accuracy | most predicted (share) |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['group']} | {r['true']} | {r['images']} | {r['accuracy']:.3f} | "
        f"{r['most_predicted']} ({r['most_predicted_share']:.2f}) |"
        for r in shown
    ]
    md_path = out_dir / f"{stage}_report.md"
    with open(md_path, "a") as f:
        f.write("\n".join(md) + "\n")
    return csv_path
