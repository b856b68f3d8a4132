"""A second specimen-grouped validation split that keeps a run's test cells exactly.

Recipe candidates are chosen on validation MCA over two grouped splits; the second split must not
touch the test cells of the first, or the final test figure would have been used for selection.
This script reads a run's ``split_manifest.csv`` (with its ``group`` column), keeps every test row,
and per class swaps the validation groups with as many training groups of the closest total size
(the largest-first tie-break is deterministic). Train it with ``data.split_manifest=<written file>``::

    python experiments/i3a_cells/second_split.py outputs/<run>/split_manifest.csv outputs/split_b.csv
    ana-train experiment=i3a_cells data.root=... data.split_manifest=outputs/split_b.csv
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd


def swap_validation(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with, per label, the validation groups swapped for training groups (test kept)."""
    if "group" not in manifest.columns:
        raise ValueError("the manifest has no group column: it was not written by a grouped split")
    out = manifest.copy()
    for label, rows in manifest.groupby("label"):
        sizes = rows.groupby("group").size()
        split_of = rows.groupby("group")["split"].first()
        val = sorted(g for g in sizes.index if split_of[g] == "val")
        train = sorted(g for g in sizes.index if split_of[g] == "train")
        if not val or len(train) < len(val):
            raise ValueError(
                f"label {label}: {len(val)} validation and {len(train)} training group(s), cannot swap"
                + (
                    " (a run of experiment=i3a_cells has no validation split since round 17: train it with "
                    "'data.split_fractions=[0.6,0.2,0.2]', the research split)"
                    if not val
                    else ""
                )
            )
        target = int(sizes[val].sum())
        best = min(
            itertools.combinations(train, len(val)),
            key=lambda c: (abs(int(sizes[list(c)].sum()) - target), [-sizes[g] for g in c]),
        )
        out.loc[out["group"].isin(val), "split"] = "train"
        out.loc[out["group"].isin(best), "split"] = "val"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, help="a grouped run's split_manifest.csv")
    ap.add_argument("out", type=Path, help="where to write the second split's manifest")
    args = ap.parse_args()
    new = swap_validation(pd.read_csv(args.manifest))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(args.out, index=False)
    print(new.groupby(["split"]).size().to_string())
    print("validation groups:", ", ".join(sorted(new.loc[new["split"] == "val", "group"].unique())))


if __name__ == "__main__":
    main()
