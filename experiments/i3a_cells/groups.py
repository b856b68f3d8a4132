"""Where a cell recipe fails, specimen by specimen, and whether averaging runs helps.

    python experiments/i3a_cells/groups.py outputs/<run>                       # its validation cells
    python experiments/i3a_cells/groups.py outputs/<runA> outputs/<runB> ...   # + the runs' mean
    python experiments/i3a_cells/groups.py --split test outputs/<run>          # the test cells

For each run (trained on the same grouped split: the runs' manifests must list the same cells) its MCA
on the ``--split`` cells, the MCA of the mean of the runs' probabilities (an ensemble that costs one
training per member), and per specimen group: the accuracy of each run and of the mean, and what the
mean predicts most often. Choose recipes on ``val`` (the default); ``--split test`` is for a recipe
already fixed. A run's own ``test_report.md`` has the per-group table of its test cells.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import DEFAULT_ROOT, batched, best_checkpoint, mca, model_input, read_cells, split_cells  # noqa: E402


def run_probabilities(
    run: Path, root: Path, split: str
) -> tuple[list[str], list[str], np.ndarray, list[str], list[str]]:
    """``split`` cell paths of a run, their class names, the run's best checkpoint's probabilities
    (``N×classes``, the model's class order, uncalibrated), that order, and the cells' specimen groups."""
    from ana_lightning.utils import load_checkpoint_model

    model = load_checkpoint_model(best_checkpoint(run))
    model.eval()
    paths, labels, groups = split_cells(run, root, split)
    if not paths:
        raise SystemExit(f"{run}: its split_manifest.csv has no {split} cells")
    prob = batched(model, model_input(model, run, read_cells(paths, run))).softmax(-1).numpy()
    return paths, labels, prob, list(model.class_names), groups


def group_table(runs: list[Path], root: Path, split: str = "val") -> tuple[dict[str, float], list[dict]]:
    """MCA per run (keys ``run 1``, ``run 2``, … in the order given) and of the runs' mean
    probabilities (``mean``), and one row per specimen group with the same keys."""
    probs, names, paths, labels, groups = [], None, None, None, None
    for run in runs:
        p_paths, p_labels, prob, p_names, groups = run_probabilities(run, root, split)
        if paths is not None and (p_paths != paths or p_names != names):
            raise SystemExit(f"{run}: its {split} cells or classes differ from {runs[0]}'s (another split?)")
        paths, labels, names = p_paths, p_labels, p_names
        probs.append(prob)
    y = np.array([names.index(c) for c in labels])
    preds = [p.argmax(1) for p in probs] + [np.mean(probs, 0).argmax(1)]
    keys = [f"run {i + 1}" for i in range(len(runs))] + ["mean"]
    groups = np.array(groups)
    rows = []
    for g in sorted(set(groups)):
        s = groups == g
        common = Counter(names[i] for i in preds[-1][s]).most_common(1)[0]
        rows.append(
            {
                "group": g,
                "true": "+".join(sorted({labels[i] for i in np.flatnonzero(s)})),
                "cells": int(s.sum()),
                **{k: float(np.mean(p[s] == y[s])) for k, p in zip(keys, preds, strict=True)},
                "mean_predicts": f"{common[0]} ({common[1] / s.sum():.2f})",
            }
        )
    return {k: mca(y, p, len(names)) for k, p in zip(keys, preds, strict=True)}, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of one grouped split")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--split", default="val", choices=["val", "test"])
    args = ap.parse_args()
    mcas, rows = group_table(args.runs, args.root.resolve(), args.split)
    keys = list(mcas)
    for i, run in enumerate(args.runs):
        print(f"run {i + 1}: {run}")
    print(f"mean: the mean of the {len(args.runs)} runs' probabilities")
    print(f"\n| group | true class | cells | {' | '.join(keys)} | the mean predicts (share) |")
    print("|---|---|---|" + "---|" * len(keys) + "---|")
    print(f"| **{args.split} MCA** | | | " + " | ".join(f"**{mcas[k]:.3f}**" for k in keys) + " | |")
    for r in rows:
        print(
            f"| {r['group']} | {r['true']} | {r['cells']} | "
            + " | ".join(f"{r[k]:.2f}" for k in keys)
            + f" | {r['mean_predicts']} |"
        )


if __name__ == "__main__":
    main()
