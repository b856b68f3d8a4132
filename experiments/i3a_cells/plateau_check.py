"""Does a diffuse level under the pattern decide Speckled against Centromere? Each cell's *plateau* beside how a
grouped CV read it, per specimen and in plateau bins.

    python experiments/i3a_cells/plateau_check.py outputs/<cv sweep> --root <I3A training folder> --out-md table.md

A cell's plateau is the median, over its mask eroded by 3 px, of the cell as the recipe's network normalises it
(:func:`texture_check.normalised_intensity`: the background, the median outside the mask, subtracted, divided by
the 99th percentile inside, clipped to [0, 1]). Centromere dots lie on a dark nucleus (a low plateau); fine
speckles fill the nucleoplasm (a high one). A specimen's plateau is the median over its cells. Beside it: the share
of its cells the sweep's fold models read right (``oof_predictions.csv``, every cell tested by the fold model
that never saw its specimen; groups from ``folds_manifest.csv``) and what they were read as most often, and, per
class, the recall of its cells in plateau bins. Spearman's rho over the specimens of the classes asked
(``--classes``, default Speckled and Centromere) relates the plateau to the share read right, with the sign
each class would give if the network leant on it. Nothing is fitted: it describes, it chooses nothing.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

BINS = (0.0, 0.3, 0.45, 0.6, 1.0)
ERODE = 3


def plateau(image: np.ndarray, mask: np.ndarray) -> float:
    """The median normalised intensity over ``mask`` eroded by ``ERODE`` px (the whole mask when the erosion
    leaves fewer than 20 pixels). ``image``: H×W or H×W×C (the max over the channels, as the network reads it)."""
    from scipy import ndimage as ndi
    from texture_check import normalised_intensity

    x = (image.max(axis=2) if image.ndim == 3 else image).astype(np.float32)
    m = (mask.max(axis=2) if mask.ndim == 3 else mask) > 0
    core = ndi.binary_erosion(m, iterations=ERODE)
    if core.sum() < 20:
        core = m
    return float(np.median(normalised_intensity(x, m, "a plateau")[core]))


def cell_rows(
    sweep: Path, root: Path, classes: list[str], repeat: int | None = None
) -> tuple[list[dict], int]:
    """One row per out-of-fold cell of ``classes`` (true class): path, specimen, true, pred, plateau."""
    from PIL import Image
    from specimen_lists import read_sweep

    from ana_lightning.data.contest import read_i3a2014
    from ana_lightning.taxonomy import Taxonomy

    oof, _, group_of, rep = read_sweep(sweep, repeat)
    unknown = sorted(set(classes) - {r["true"] for r in oof})
    if unknown:
        raise SystemExit(f"--classes {unknown}: no such true class in {sweep / 'oof_predictions.csv'}")
    data = read_i3a2014(root, Taxonomy.load(), check_images=False)
    mask_of = {}
    for img, m in data.masks.items():
        mask_of[img] = m
        try:
            mask_of[Path(img).resolve().relative_to(root.resolve()).as_posix()] = m
        except ValueError:
            pass
    rows = []
    for r in oof:
        if int(r["repeat"]) != rep or r["true"] not in classes:
            continue
        path = r["path"]
        full = path if Path(path).is_absolute() else str(root / path)
        mask = mask_of.get(path) or mask_of.get(full)
        if mask is None:
            raise SystemExit(f"{path}: no mask for this cell under {root} (is --root the sweep's data.root?)")
        if path not in group_of:
            raise SystemExit(f"{path}: not in {sweep / 'folds_manifest.csv'}")
        with Image.open(full) as im, Image.open(mask) as mk:
            value = plateau(np.asarray(im), np.asarray(mk))
        rows.append(
            {"path": path, "specimen": group_of[path], "true": r["true"], "pred": r["pred"], "plateau": value}
        )
    return rows, rep


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties); nan for fewer than 3 pairs."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else float("nan")


def specimen_table(rows: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["specimen"]].append(r)
    out = []
    for g, rs in by.items():
        v = np.array([r["plateau"] for r in rs])
        preds = Counter(r["pred"] for r in rs)
        out.append(
            {
                "specimen": g,
                "true": rs[0]["true"],
                "cells": len(rs),
                "plateau": float(np.median(v)),
                "q25": float(np.percentile(v, 25)),
                "q75": float(np.percentile(v, 75)),
                "right": float(np.mean([r["pred"] == r["true"] for r in rs])),
                "read_as": preds.most_common(1)[0][0],
            }
        )
    return sorted(out, key=lambda s: (s["true"], s["plateau"]))


def bin_recall(rows: list[dict], classes: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Per class: (cells, recall) in each plateau bin of ``BINS`` (the last bin closed)."""
    out = {}
    for c in classes:
        rs = [r for r in rows if r["true"] == c]
        cells = []
        for i, (lo, hi) in enumerate(zip(BINS[:-1], BINS[1:], strict=True)):
            last = i == len(BINS) - 2
            inside = [r for r in rs if lo <= r["plateau"] < hi or (last and r["plateau"] == hi)]
            cells.append(
                (len(inside), float(np.mean([r["pred"] == c for r in inside])) if inside else float("nan"))
            )
        out[c] = cells
    return out


def markdown(specimens: list[dict], bins: dict, sweep: Path, rep: int) -> str:
    lines = [
        f"# Plateau under the pattern against the out-of-fold reading: {sweep.name} (repeat {rep})",
        "",
        f"Plateau: median normalised intensity over the mask eroded by {ERODE} px (a specimen: the median over its "
        "cells, [quartiles]). Right: share of the specimen's cells its fold model read as their class.",
        "",
        "| class | specimen | cells | plateau [q25, q75] | right | read most often as |",
        "|---|---|---|---|---|---|",
    ]
    for s in specimens:
        lines.append(
            f"| {s['true']} | {s['specimen']} | {s['cells']} | {s['plateau']:.2f} [{s['q25']:.2f}, {s['q75']:.2f}] "
            f"| {s['right']:.2f} | {s['read_as']} |"
        )
    lines += ["", "Spearman's rho, specimen plateau against share read right:", ""]
    for c in sorted({s["true"] for s in specimens}):
        ss = [s for s in specimens if s["true"] == c]
        rho = spearman([s["plateau"] for s in ss], [s["right"] for s in ss])
        lines.append(f"- {c} ({len(ss)} specimens): {rho:+.2f}")
    head = " | ".join(
        f"[{lo}, {hi}{']' if i == len(BINS) - 2 else ')'}"
        for i, (lo, hi) in enumerate(zip(BINS[:-1], BINS[1:], strict=True))
    )
    lines += ["", "Recall of each class's cells by plateau (cells in brackets):", "", f"| class | {head} |"]
    lines.append("|---" * len(BINS) + "|")
    for c, cells in bins.items():
        lines.append(
            f"| {c} | " + " | ".join("–" if n == 0 else f"{rec:.2f} ({n})" for n, rec in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from report_out import emit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "sweep", type=Path, help="a finished CV sweep folder (oof_predictions.csv, folds_manifest.csv)"
    )
    ap.add_argument("--root", type=Path, required=True, help="the I3A cell folder the sweep read (data.root)")
    ap.add_argument("--classes", default="Speckled,Centromere", help="true classes to read (comma-separated)")
    ap.add_argument(
        "--repeat", type=int, default=None, help="the repeat (default: the first with predictions)"
    )
    ap.add_argument("--out-md", type=Path, default=None, help="also write the tables here")
    a = ap.parse_args(argv)
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    rows, rep = cell_rows(a.sweep, a.root, classes, a.repeat)
    text = markdown(specimen_table(rows), bin_recall(rows, classes), a.sweep, rep)
    emit(text, a.out_md)


if __name__ == "__main__":
    main()
