"""Multi-label run-folder report, drawn from metrics already computed (never recomputed here).

Writes, for a stage (``test``): ``{stage}_report.md`` (summary, per-class table, off-by-N, at least
N correct, label cardinality), ``{stage}_per_class.csv``, ``{stage}_predictions.csv`` and the plots
``{stage}_per_class_f1.png``, ``{stage}_off_by_n.png``, ``{stage}_pr_curves.png`` and
``{stage}_error_cooccurrence.png`` (logged to W&B by the pipeline when that logger is on).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics import MCA_DEFINITION
from ..metrics_multilabel import SCALAR_KEYS
from .tables import summary_rows

__all__ = [
    "write_multilabel_report",
    "plot_per_class_f1",
    "plot_off_by_n",
    "plot_pr_curves",
    "plot_error_cooccurrence",
]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if math.isnan(f) else f"{f:.{digits}f}"


def plot_per_class_f1(
    f1: Any, support: Any, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    plt = _plt()
    f1, support = _np(f1), _np(support)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * k + 2), 4))
    ax.bar(range(k), f1, color=["tab:blue" if s > 0 else "lightgrey" for s in support])
    ax.set_xticks(
        range(k),
        [f"{c}\n(n={int(s)})" for c, s in zip(class_names, support, strict=True)],
        rotation=90 if k > 12 else 0,
        fontsize=7 if k > 16 else 8,
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(title or "per-class F1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_off_by_n(counts: Any, path: str | Path, title: str = "") -> Path:
    plt = _plt()
    counts = _np(counts)
    last = max(int(np.flatnonzero(counts).max(initial=0)), 3)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(range(last + 1), counts[: last + 1], color="tab:orange")
    ax.set_xticks(range(last + 1))
    ax.set_xlabel("wrong labels per image (false positives + false negatives)")
    ax.set_ylabel("images")
    ax.set_title(title or "off-by-N errors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pr_curves(
    curves: Sequence[tuple[Any, Any]], ap: Any, class_names: Sequence[str], path: str | Path
) -> Path:
    plt = _plt()
    ap = _np(ap)
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for i, ((p, r), c) in enumerate(zip(curves, class_names, strict=True)):
        if math.isnan(float(ap[i])):
            continue  # no positive image of this class: no curve
        ax.plot(_np(r), _np(p), color=cmap(i % cmap.N), lw=1.2, label=f"{c} (AP {float(ap[i]):.2f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall per class")
    ax.legend(
        fontsize=6 if len(class_names) > 12 else 8, loc="lower left", ncol=2 if len(class_names) > 12 else 1
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_error_cooccurrence(matrix: Any, class_names: Sequence[str], path: str | Path) -> Path:
    plt = _plt()
    m = _np(matrix)
    names = list(class_names) + ["none"]
    k = len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * k + 2.5), max(4.5, 0.35 * k + 1.5)))
    im = ax.imshow(m, cmap="Reds")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7 if k > 16 else 9)
    ax.set_yticks(range(k), names, fontsize=7 if k > 16 else 9)
    ax.set_xlabel("wrongly predicted (false positive)")
    ax.set_ylabel("missed (false negative)")
    ax.set_title("errors that occur together (images)")
    if k <= 34:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        int(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6 if k > 16 else 8,
                        color="white" if m[i, j] > 0.6 * m.max() else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_multilabel_report(
    out_dir: str | Path,
    details: Mapping[str, Any],
    class_names: Sequence[str],
    summary: Mapping[str, Any],
    paths: Sequence[str],
    probs: torch.Tensor,
    preds: torch.Tensor,
    target: torch.Tensor,
    thresholds: torch.Tensor,
    decision_note: str,
    stage: str = "test",
    display_names: Sequence[str] | None = None,
) -> Path:
    """Write the whole multi-label report into ``out_dir``; returns the Markdown file."""
    from ..taxonomy import Taxonomy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if display_names is None:
        tree = Taxonomy.load()
        display_names = [tree.display_name(c) if tree.is_code(c) else c for c in class_names]
    th = _np(thresholds)
    rows = []
    for i, c in enumerate(class_names):
        rows.append(
            {
                "class": c,
                "name": display_names[i],
                "precision": float(_np(details["precision"])[i]),
                "recall": float(_np(details["recall"])[i]),
                "f1": float(_np(details["f1"])[i]),
                "support": int(_np(details["support"])[i]),
                "predicted": int(_np(details["predicted"])[i]),
                "auroc": float(_np(details["auroc"])[i]),
                "ap": float(_np(details["ap"])[i]),
                "threshold": float(th[i]),
            }
        )
    with open(out_dir / f"{stage}_per_class.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    prob, pred, tgt = _np(probs), _np(preds).astype(int), _np(target).astype(int)
    with open(out_dir / f"{stage}_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "pred", "n_errors", *[f"p_{c}" for c in class_names]])
        for i, p in enumerate(paths):
            true = ";".join(c for c, t in zip(class_names, tgt[i], strict=True) if t)
            guess = ";".join(c for c, t in zip(class_names, pred[i], strict=True) if t)
            w.writerow([p, true, guess, int((pred[i] != tgt[i]).sum()), *[f"{x:.5f}" for x in prob[i]]])

    s = details["scalars"]
    plot_per_class_f1(
        details["f1"],
        details["support"],
        class_names,
        out_dir / f"{stage}_per_class_f1.png",
        title=f"{stage}: micro F1 {s['micro_f1']:.3f}, exact match {s['exact_match']:.3f}",
    )
    plot_off_by_n(
        details["off_by_n"],
        out_dir / f"{stage}_off_by_n.png",
        title=f"{stage}: wrong labels per image (n={details['n_images']})",
    )
    plot_pr_curves(details["pr_curves"], details["ap"], class_names, out_dir / f"{stage}_pr_curves.png")
    plot_error_cooccurrence(
        details["error_cooccurrence"], class_names, out_dir / f"{stage}_error_cooccurrence.png"
    )

    n = details["n_images"]
    md = [
        f"# {stage.capitalize()} report (multi-label)",
        "",
        f"{n} images, {len(class_names)} classes ({int((_np(details['support']) > 0).sum())} present in the "
        f"ground truth). Decision rule: {decision_note}.",
        "",
        f"{MCA_DEFINITION}.",
        "",
    ]
    md += ["| metric | value |", "|---|---|"]
    keys = [f"{stage}/{k}" for k in SCALAR_KEYS if f"{stage}/{k}" in summary]
    keys += sorted(k for k in summary if k not in keys and np.ndim(_np(summary[k])) == 0)
    md += summary_rows(summary, keys)  # with bootstrap intervals: 0.83 [0.78, 0.88]
    md += [
        "",
        "## Per class",
        "",
        "| class | name | precision | recall | F1 | support | predicted | AUROC | AP | threshold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['class']} | {r['name']} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} | {r['support']} | "
        f"{r['predicted']} | {_fmt(r['auroc'])} | {_fmt(r['ap'])} | {r['threshold']:.2f} |"
        for r in rows
    ]
    md.append("")
    md.append("AUROC / AP are n/a for a class without positive (AUROC: or negative) test images.")
    counts = _np(details["off_by_n"])
    last = max(int(np.flatnonzero(counts).max(initial=0)), 2)
    md += [
        "",
        "## Off-by-N errors",
        "",
        "N = false positives + false negatives of an image (N = 0: exact match).",
        "",
        "| N | images | fraction |",
        "|---|---|---|",
    ]
    md += [f"| {i} | {int(counts[i])} | {counts[i] / max(n, 1):.3f} |" for i in range(last + 1)]
    md += [
        "",
        "## At least N correct labels",
        "",
        "The fraction of images whose prediction contains at least N of their true labels, two ways: over the "
        "images with at least N true labels (`at_least_N_correct`), and over all images, where an image with "
        "fewer than N true labels counts as a miss (`at_least_N_correct_all`: the reference repository's "
        "`evaluate_multilabel.py` definition).",
        "",
        f"| N | images with ≥ N labels | over those (`at_least_N_correct`) | over all {n} images (`at_least_N_correct_all`, reference) |",
        "|---|---|---|---|",
    ]
    md += [f"| {k} | {m} | {_fmt(v)} | {_fmt(va)} |" for k, (v, m, va) in sorted(details["at_least"].items())]
    ct, cp = _np(details["cardinality_true"]), _np(details["cardinality_pred"])
    top = max(int(np.flatnonzero(ct).max(initial=0)), int(np.flatnonzero(cp).max(initial=0)), 1)
    md += [
        "",
        "## Label cardinality",
        "",
        f"Mean labels per image: true {s['label_cardinality_true']:.3f}, predicted {s['label_cardinality_pred']:.3f}.",
        "",
        "| labels per image | true | predicted |",
        "|---|---|---|",
    ]
    md += [f"| {i} | {int(ct[i])} | {int(cp[i])} |" for i in range(top + 1)]
    md += [
        "",
        "## Plots",
        "",
        f"![per-class F1]({stage}_per_class_f1.png)",
        "",
        f"![off-by-N]({stage}_off_by_n.png)",
        "",
        f"![precision-recall curves]({stage}_pr_curves.png)",
        "",
        f"![error co-occurrence]({stage}_error_cooccurrence.png)",
        "",
        f"Per-image predictions: `{stage}_predictions.csv`; per-class values: `{stage}_per_class.csv`.",
        "",
    ]
    path = out_dir / f"{stage}_report.md"
    path.write_text("\n".join(md))
    return path
