"""Two cross-validation sweeps of the same folds compared on their validation cells: each fold's best
validation MCA, paired by fold — the figure the pre-registered recipe questions decide on.

    python experiments/i3a_cells/val_compare.py outputs/cv_drop outputs/cv_base [--out table.md]

A fold's figure is ``val/mca_best`` from its ``metrics.json`` (runs since round 14), else the largest
``val/mca`` of its ``csv/**/metrics.csv`` (older runs); the epoch at which it was reached comes from
the CSV curve when there is one. The table lists A, B, A − B per fold, the mean difference with its
95 % t-interval (:func:`ana_lightning.stats.paired_comparison`) and in how many folds A is higher.
No model is run. Both sweeps must hold the same folds (checked by each fold's validation cells in
``split_manifest.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from ana_lightning.crossval import fold_jobs
from ana_lightning.stats import paired_comparison


def best_val(run: Path, required: bool = True) -> tuple[float, int | None] | None:
    """``(best val MCA, 0-based epoch or None)`` of one run folder; without any record of it, an error
    (``required``) or None."""
    curve: list[tuple[float, int]] = []
    for log in sorted(run.glob("csv/**/metrics.csv")):
        with open(log, newline="") as f:
            curve += [
                (float(r["val/mca"]), int(float(r["epoch"]))) for r in csv.DictReader(f) if r.get("val/mca")
            ]
    metrics = run / "metrics.json"
    saved = json.loads(metrics.read_text()).get("val/mca_best") if metrics.is_file() else None
    if saved is None and not curve:
        if not required:
            return None
        raise SystemExit(
            f"{run}: neither metrics.json's val/mca_best nor a csv/**/metrics.csv curve of val/mca (a run "
            "without a validation split, such as experiment=i3a_cells since round 17: compare runs of the research "
            "split, 'data.split_fractions=[0.6,0.2,0.2]')"
        )
    best = (
        max(curve, key=lambda t: (t[0], -t[1])) if curve else (float(saved), None)
    )  # ties: the first epoch, as ModelCheckpoint keeps
    if saved is not None and curve and abs(best[0] - float(saved)) > 1e-6:
        raise SystemExit(f"{run}: metrics.json says val/mca_best {saved}, its CSV curve's best is {best[0]}")
    return (float(saved) if saved is not None else best[0]), best[1]


def val_cells(run: Path) -> set[str]:
    if not (run / "split_manifest.csv").is_file():
        raise SystemExit(f"{run}: no split_manifest.csv (is it a fold job of ana-train?)")
    with open(run / "split_manifest.csv", newline="") as f:
        return {r["path"] for r in csv.DictReader(f) if r["split"] == "val"}


def compare(a: Path, b: Path) -> str:
    ja, jb = ({(j["repeat"], j["fold"]): Path(j["dir"]) for j in fold_jobs(s)} for s in (a, b))
    if not ja or set(ja) != set(jb):
        raise SystemExit(f"{a} and {b} hold different folds: {sorted(ja)} vs {sorted(jb)}")
    rows, va, vb = [], [], []
    repeats = any(r for r, _ in ja)  # repeated CV: "repeat/fold"
    for key in sorted(ja):
        if val_cells(ja[key]) != val_cells(jb[key]):
            raise SystemExit(f"fold {key}: {ja[key]} and {jb[key]} validate on different cells")
        (x, ex), (y, ey) = best_val(ja[key]), best_val(jb[key])
        va.append(x)
        vb.append(y)
        ep = lambda e: "" if e is None else f" ({e})"  # noqa: E731
        fold = f"{key[0]}/{key[1]}" if repeats else str(key[1])
        rows.append(f"| {fold} | {y:.3f}{ep(ey)} | {x:.3f}{ep(ex)} | {x - y:+.3f} |")
    c = paired_comparison(va, vb)
    higher = sum(x > y for x, y in zip(va, vb, strict=True))
    return "\n".join(
        [
            f"| {'repeat/fold' if repeats else 'fold'} | {b.name} best val MCA (epoch) | {a.name} best val MCA (epoch) "
            f"| {a.name} − {b.name} |",
            "|---|---|---|---|",
            *rows,
            f"| **mean** | {c['mean_b']:.3f} | {c['mean_a']:.3f} | **{c['mean_diff']:+.3f}** "
            f"[{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}]; higher in {higher} of {len(va)} |",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="the candidate's sweep folder")
    ap.add_argument("b", type=Path, help="the baseline's sweep folder (the same folds)")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    text = compare(args.a, args.b)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
