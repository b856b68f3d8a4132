"""Do the automatic specimen groups depend on the ID gaps of this copy? (round 18)

    python experiments/i3a_cells/grouping_check.py [--root <I3A training folder>] [--out grouping_check.md]

The shared I3A folder lacks whole blocks of consecutive IDs (specimens kept aside), so the reader's
grouping (``data.grouping=auto``: runs of consecutive IDs cut at ID gaps and at steps of the per-cell median
intensity, merged to >= min(250, class/5) cells) sees two ID gaps per class. In a complete copy of the contest
set those gaps are filled and only the intensity steps are left. This script groups every class twice with the
reader's own function — the IDs as they are, and renumbered 0, 1, 2, … (no gap) — and prints, per class: the
groups each way, how many boundaries of the first grouping the second keeps (within ±10 cells), how many it
places where the first has none, and how many
groups of the second join two groups of the first (≥ 50 cells of each). Joined groups are coarser, not leaky: a
specimen split in two would need a cut inside it, which neither grouping can be checked for without a specimen
column. No model, no training; it reads the images once for their median intensity.
"""

from __future__ import annotations

import argparse
import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import DEFAULT_ROOT  # noqa: E402

from ana_lightning.data.specimens import cell_median, class_min_size, consecutive_id_groups  # noqa: E402


def _boundaries(groups: list[int]) -> list[int]:
    return [k for k in range(1, len(groups)) if groups[k] != groups[k - 1]]


def compare_groupings(ids: list[int], values: list[float], min_size: int = 250, near: int = 10) -> dict:
    """One class's cells (IDs ascending, their median intensities): the reader's grouping as given and
    renumbered without gaps, compared (module docstring)."""
    floor = class_min_size(len(ids), min_size)  # as group_i3a_specimens
    with_gaps = consecutive_id_groups(ids, values, min_size=floor)
    gapless = consecutive_id_groups(list(range(len(ids))), values, min_size=floor)
    b_with, b_without = _boundaries(with_gaps), _boundaries(gapless)
    kept = sum(any(abs(k - b) <= near for b in b_without) for k in b_with)
    new = sum(not any(abs(k - b) <= near for b in b_with) for k in b_without)
    joined = 0
    for g in set(gapless):
        parts = np.bincount([with_gaps[k] for k in range(len(ids)) if gapless[k] == g])
        parts = np.sort(parts[parts > 0])
        joined += int(len(parts) > 1 and parts[-2] >= 50)
    gaps = sum(ids[k] != ids[k - 1] + 1 for k in range(1, len(ids)))
    return {
        "cells": len(ids),
        "id_gaps": gaps,
        "groups": max(with_gaps) + 1,
        "groups_gapless": max(gapless) + 1,
        "boundaries": len(b_with),
        "boundaries_kept": kept,
        "boundaries_new": new,
        "joined": joined,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the I3A training folder")
    ap.add_argument("--min-size", type=int, default=250, help="data.group_min_size")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    gt = args.root / "gt_training.csv"
    if not gt.is_file():
        print(f"no {gt}: give --root <I3A training folder>", file=sys.stderr)
        return 2
    by_class: dict[str, list[int]] = {}
    with open(gt, newline="") as f:
        for row in list(csv.reader(f))[1:]:
            if len(row) >= 2 and row[0].strip().isdigit():
                by_class.setdefault(row[1].strip(), []).append(int(row[0]))
    lines = [
        "| class | cells | ID gaps | groups | groups without the gaps | boundaries kept (±10 cells) | new boundaries | "
        "gapless groups joining two |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = (
        "cells",
        "id_gaps",
        "groups",
        "groups_gapless",
        "boundaries",
        "boundaries_kept",
        "boundaries_new",
        "joined",
    )
    total = dict.fromkeys(keys, 0)
    for name, ids in by_class.items():
        ids = sorted(ids)
        files = [(args.root / f"{i:05d}.png", args.root / f"{i:05d}_Mask.png") for i in ids]
        with ThreadPoolExecutor(4) as pool:
            values = list(
                pool.map(lambda p: cell_median(str(p[0]), str(p[1]) if p[1].is_file() else None), files)
            )
        r = compare_groupings(ids, values, args.min_size)
        for k in total:
            total[k] += r[k]
        lines.append(
            f"| {name} | {r['cells']} | {r['id_gaps']} | {r['groups']} | {r['groups_gapless']} | "
            f"{r['boundaries_kept']} of {r['boundaries']} | {r['boundaries_new']} | {r['joined']} |"
        )
    t = total
    lines.append(
        f"| **all** | {t['cells']} | {t['id_gaps']} | {t['groups']} | {t['groups_gapless']} | "
        f"{t['boundaries_kept']} of {t['boundaries']} | {t['boundaries_new']} | {t['joined']} |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
