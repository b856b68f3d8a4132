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
import csv
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import DEFAULT_ROOT, _test_cells, best_checkpoint  # noqa: E402


def run_probabilities(
    run: Path, root: Path, split: str
) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """``split`` cell paths of a run, their class names, the run's best checkpoint's probabilities
    (``N×classes``, the model's class order) and that order."""
    import yaml

    from ana_lightning.data.contest import apply_mask
    from ana_lightning.data.images import load_image
    from ana_lightning.data.transforms import build_transform
    from ana_lightning.utils import load_checkpoint_model

    model = load_checkpoint_model(best_checkpoint(run))
    model.eval()
    mode = yaml.safe_load(open(run / "config_resolved.yaml"))["data"]["mask"]
    tf = build_transform(int(model.hparams.image_size), None, model.hparams.mean, model.hparams.std)
    paths, labels = _test_cells(run, root, split)
    if not paths:
        raise SystemExit(f"{run}: its split_manifest.csv has no {split} cells")
    x = torch.stack(
        [
            tf(apply_mask(load_image(p), load_image(str(Path(p).with_suffix("")) + "_Mask.png"), mode))
            for p in paths
        ]
    )
    with torch.no_grad():
        prob = torch.cat([model(x[i : i + 256]).softmax(-1) for i in range(0, len(x), 256)]).numpy()
    return paths, labels, prob, list(model.class_names)


def group_table(runs: list[Path], root: Path, split: str = "val") -> tuple[dict[str, float], list[dict]]:
    """MCA per run (keys ``run 1``, ``run 2``, … in the order given) and of the runs' mean
    probabilities (``mean``), and one row per specimen group with the same keys."""
    probs, names, paths, labels = [], None, None, None
    for run in runs:
        p_paths, p_labels, prob, p_names = run_probabilities(run, root, split)
        if paths is not None and (p_paths != paths or p_names != names):
            raise SystemExit(f"{run}: its {split} cells or classes differ from {runs[0]}'s (another split?)")
        paths, labels, names = p_paths, p_labels, p_names
        probs.append(prob)
    y = np.array([names.index(c) for c in labels])
    preds = [p.argmax(1) for p in probs] + [np.mean(probs, 0).argmax(1)]
    keys = [f"run {i + 1}" for i in range(len(runs))] + ["mean"]

    def mca(pred: np.ndarray) -> float:
        return float(np.mean([np.mean(pred[y == k] == k) for k in range(len(names)) if np.any(y == k)]))

    by_path = {}
    for r in csv.DictReader(open(runs[0] / "split_manifest.csv")):
        if r["split"] == split:
            by_path[str(r["path"])] = r["group"]
    groups = np.array([by_path.get(p, by_path.get(os.path.relpath(p, root), "")) for p in paths])
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
    return {k: mca(p) for k, p in zip(keys, preds, strict=True)}, rows


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
