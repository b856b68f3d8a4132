"""Does dihedral test-time augmentation help the fold models of a cross-validation sweep?

    python experiments/i3a_cells/tta_check.py outputs/cv_base                  # validation cells: to choose
    python experiments/i3a_cells/tta_check.py outputs/cv_base --split test     # test cells: once chosen
    python experiments/i3a_cells/tta_check.py outputs/<run> [outputs/<run2> ...] --out table.md

Each run's kept checkpoint (``best_checkpoint.txt``, else its ``best-``/``final-`` checkpoint) reads its
own ``--split`` cells twice: one view (``model.backbone.cell_input.tta`` off) and with the mean logits
of the 8 flips / 90° rotations (on). No training. The table pairs the two by run (fold): MCA without and
with TTA, their difference, the mean difference with its 95 % t-interval, in how many folds TTA is higher,
and the inference time per cell both ways on this machine. It also lists the run's own figure for those
cells (its best logged ``val/mca``, or ``test/mca`` from ``metrics.json``), which the figure without TTA must
equal when the run evaluated one view (the same cells, the same checkpoint). The cells are read from
each run's own ``data.root`` unless ``--root`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import DEFAULT_ROOT, batched, best_checkpoint, mca, model_input, read_cells, split_cells  # noqa: E402
from val_compare import best_val  # noqa: E402


def run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders: a cross-validation sweep folder stands for its fold jobs (in repeat, fold order)."""
    from ana_lightning.crossval import fold_jobs

    runs = []
    for p in paths:
        runs += [j["dir"] for j in fold_jobs(p)] or [p]
    return runs


def logged(run: Path, split: str) -> float | None:
    """What the run itself logged for these cells: on ``val`` its best ``val/mca`` (``val_compare.best_val``:
    ``metrics.json``'s ``val/mca_best`` or the ``csv/**/metrics.csv`` curve),
    on ``test`` its ``test/mca`` (``metrics.json``); None when it has no such record."""
    if split == "test":
        path = run / "metrics.json"
        return json.loads(path.read_text()).get("test/mca") if path.is_file() else None
    best = best_val(run, required=False)
    return None if best is None else best[0]


def run_root(run: Path) -> Path:
    """The cells' folder a run trained on: its resolved ``data.root`` (relative to where it ran, here)."""
    import yaml

    root = (yaml.safe_load(open(run / "config_resolved.yaml")).get("data") or {}).get("root")
    if not root:
        sys.exit(f"{run}: its config_resolved.yaml names no data.root; give --root")
    return Path(root)


def check_run(run: Path, root: Path, split: str) -> dict:
    """MCA of ``run``'s kept checkpoint on its ``split`` cells without and with TTA, and seconds per cell."""
    from ana_lightning.utils import load_checkpoint_model

    model = load_checkpoint_model(best_checkpoint(run))
    model.eval()
    net = model.net
    if not hasattr(net, "tta"):
        sys.exit(f"{run}: the network has no CellInput, so no TTA switch (not a cell recipe run)")
    paths, labels, _ = split_cells(run, root, split)
    if not paths:
        sys.exit(f"{run}: its split_manifest.csv has no {split} cells")
    names = list(model.class_names)
    y = np.array([names.index(c) for c in labels])
    x = model_input(model, run, read_cells(paths, run))
    row: dict = {"run": str(run), "cells": len(y)}
    for tta in (False, True):
        net.tta = tta
        t0 = time.perf_counter()
        pred = batched(model, x).argmax(-1).numpy()
        key = "tta" if tta else "plain"
        row[key] = mca(y, pred, len(names))
        row[f"{key}_ms_per_cell"] = 1000 * (time.perf_counter() - t0) / len(y)
    row["logged"] = logged(run, split)
    return row


def table(rows: list[dict], split: str) -> str:
    from ana_lightning.stats import t_interval

    d = np.array([r["tta"] - r["plain"] for r in rows])
    lines = [
        f"Dihedral TTA (8 views) on each run's {split} cells, paired by run",
        "",
        "| run | cells | MCA, one view | MCA, TTA | TTA − one view | the run's own figure |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        own = r["logged"]
        lines.append(
            f"| {Path(r['run']).parent.name}/{Path(r['run']).name} | {r['cells']} | {r['plain']:.3f} | {r['tta']:.3f} "
            f"| {r['tta'] - r['plain']:+.3f} |" + (f" {own:.3f} |" if own is not None else " – |")
        )
    plain, tta = np.mean([r["plain"] for r in rows]), np.mean([r["tta"] for r in rows])
    lo, hi = t_interval(d)
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if len(d) > 1 else ""
    lines.append(
        f"| **mean** | | {plain:.3f} | {tta:.3f} | **{d.mean():+.3f}**{interval}; higher in {(d > 0).sum()} of {len(d)} | |"
    )
    ms_plain = np.mean([r["plain_ms_per_cell"] for r in rows])
    ms_tta = np.mean([r["tta_ms_per_cell"] for r in rows])
    lines += [
        "",
        f"Inference on this machine: {ms_plain:.2f} ms per cell with one view, {ms_tta:.2f} ms with TTA.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run folders, or sweep folders (their numbered jobs)")
    ap.add_argument(
        "--root",
        type=Path,
        help=f"the cells' folder (default: each run's own data.root; else {DEFAULT_ROOT})",
    )
    ap.add_argument("--split", default="val", choices=["val", "test"], help="choose on val; test once chosen")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    rows = [check_run(run, args.root or run_root(run), args.split) for run in run_dirs(args.runs)]
    text = table(rows, args.split)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
