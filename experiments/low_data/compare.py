"""Two runs of the low-data study (``run.py --out A`` and ``--out B``) side by side, paired.

Both runs must have drawn the same cells: the same dataset, group, K and repeat with the same numbers
of training and test images (``run.py`` draws from its seed, so two runs that differ in a training
setting only — ``--steps``, ``--epochs``, ``--lr`` — pair row by row). For every method and K it prints
each run's mean MCA and the paired difference B − A over the repeats (mean, 95 % t-interval, paired
t-test), and which run's networks trained how many steps.

    python experiments/low_data/compare.py experiments/low_data/round28/steps30 experiments/low_data/round28/epochs20
    python experiments/low_data/compare.py A B --out-md diff.md
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

KEY = ("dataset", "group", "k", "repeat", "method")


def read_rows(folder: str | Path) -> dict[tuple, dict]:
    """``results.csv`` of one run keyed by (dataset, group, K, repeat, method); rows without a draw
    (too few images: empty MCA) are left out."""
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a low-data run (no results.csv); give run.py's --out folder")
    out = {}
    with open(path, newline="") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            missing = [c for c in (*KEY, "mca", "n_train", "n_test") if c not in r]
            if missing:
                raise ValueError(f"{path}: no column {', '.join(missing)}")
            if r["mca"] in ("", None):
                continue
            try:
                key = (r["dataset"], r["group"], int(r["k"]), int(r["repeat"]), r["method"])
                out[key] = dict(r, mca=float(r["mca"]))
            except ValueError as e:
                raise ValueError(f"{path} line {line}: {e}") from None
    return out


def compare(a: dict[tuple, dict], b: dict[tuple, dict], name_a: str = "A", name_b: str = "B") -> str:
    """The markdown table of B − A per (dataset, group, method, K); raises when a pair drew other images."""
    from ana_lightning.stats import paired_comparison

    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two runs share no (dataset, group, K, repeat, method): nothing to pair")
    for key in shared:
        for col in ("n_train", "n_test"):
            if a[key][col] != b[key][col]:
                raise ValueError(
                    f"{key}: {col} {a[key][col]} in {name_a} but {b[key][col]} in {name_b}: "
                    "the runs drew different images and cannot be paired"
                )
    lines = [
        f"| dataset | group | method | K / class | steps {name_a} | steps {name_b} | repeats | MCA {name_a} "
        f"| MCA {name_b} | {name_b} − {name_a} | 95% CI | p (paired t) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    methods = list(dict.fromkeys(x[4] for x in shared))
    by_cell: dict[tuple, list[tuple]] = {}  # (dataset, group, method, K) -> its repeats' keys
    for x in shared:
        by_cell.setdefault((x[0], x[1], x[4], x[2]), []).append(x)
    for (d, g, m, k), keys in sorted(
        by_cell.items(), key=lambda i: (*i[0][:2], methods.index(i[0][2]), i[0][3])
    ):
        mca_a, mca_b = [a[x]["mca"] for x in keys], [b[x]["mca"] for x in keys]
        c = paired_comparison(mca_b, mca_a)  # B - A
        ci = "n/a" if len(keys) < 2 else f"[{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}]"
        p = "n/a" if len(keys) < 2 else f"{c['p_ttest']:.3g}"
        steps = ["/".join(sorted({str(run[x].get("steps") or "–") for x in keys}, key=str)) for run in (a, b)]
        lines.append(
            f"| {d} | {g} | {m} | {k} | {steps[0]} | {steps[1]} | {len(keys)} | {np.mean(mca_a):.3f} "
            f"| {np.mean(mca_b):.3f} | {c['mean_diff']:+.3f} | {ci} | {p} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="run.py --out folder of the reference run")
    p.add_argument("b", help="run.py --out folder of the run compared with it")
    p.add_argument("--out-md", default=None, help="also write the table here")
    args = p.parse_args(argv)
    name_a, name_b = Path(args.a).name or "A", Path(args.b).name or "B"
    if name_a == name_b:
        name_a, name_b = "A", "B"
    table = compare(read_rows(args.a), read_rows(args.b), name_a, name_b)
    print(table)
    if args.out_md:
        Path(args.out_md).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
