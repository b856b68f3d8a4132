"""Does the network still gain from more training specimens? (round 18)

    python experiments/i3a_cells/specimen_curve.py plan outputs/cv_default17 outputs/curve [--k 1,2] [--seed 0]
    # then, for each line of outputs/curve/plan.csv (the script prints the commands):
    ana-train experiment=i3a_cells data.root=<I3A training folder> data.split_manifest=outputs/curve/k1_f0.csv \\
        recipe_size.cpu.max_epochs=<epochs> hydra.run.dir=outputs/curve/runs/k1_f0
    python experiments/i3a_cells/specimen_curve.py table outputs/cv_default17 outputs/curve [--out-md table.md] [--plot curve.png]

A grouped 5-fold CV of the default recipe (``data.folds=5``, no validation split) trains each fold's model on
the specimen groups of the other folds: about 4.3 per class (3–5; Golgi 3–4). ``plan`` keeps each fold's test
cells and, per class, only the first ``k`` of its training groups in a random order drawn once per fold
(nested: the k=1 group is one of the k=2 groups), and writes one split manifest per fold and ``k``. The number
of optimisation steps is held at the full fold's: ``max_epochs = round(10 × full training cells / kept training
cells)``, so fewer specimens are not also fewer steps. ``table`` prints each fold's test MCA (the recipe's TTA,
last epoch) for every ``k`` and for all groups (the CV's own jobs), the mean ± SD over folds, and paired
differences between neighbouring counts with a t-interval over the folds.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from ana_lightning.stats import t_interval  # noqa: E402

BASE_EPOCHS = 10  # recipe_size.cpu.max_epochs of experiment=i3a_cells


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _groups_per_class(fold: Path) -> float:
    """Training specimen groups per class of a fold of the CV (its split manifest)."""
    rows = [r for r in _rows(fold / "split_manifest.csv") if r["split"] == "train"]
    return len({(r["label"], r["group"]) for r in rows}) / max(1, len({r["label"] for r in rows}))


def _folds(cv: Path) -> list[Path]:
    folds = sorted(
        (p for p in cv.iterdir() if p.is_dir() and (p / "split_manifest.csv").is_file()), key=lambda p: p.name
    )
    if not folds:
        raise SystemExit(
            f"{cv}: no fold folders with a split_manifest.csv (a grouped CV sweep, data.folds=5)"
        )
    for f in folds:
        if any(r["split"] == "val" for r in _rows(f / "split_manifest.csv")):
            raise SystemExit(
                f"{f}: has validation cells; this compares runs of the default split (no validation)"
            )
    return folds


def subsample(
    rows: list[dict[str, str]], k: int, rng: np.random.Generator
) -> tuple[list[dict[str, str]], dict]:
    """Test rows kept; per class the training rows of the first ``k`` groups of a random order (all when the
    class has ``k`` or fewer)."""
    order: dict[str, list[str]] = {}
    for label in sorted({r["label"] for r in rows if r["split"] == "train"}):
        groups = sorted({r["group"] for r in rows if r["split"] == "train" and r["label"] == label})
        order[label] = [groups[i] for i in rng.permutation(len(groups))]
    keep = {g for gs in order.values() for g in gs[:k]}
    out = [r for r in rows if r["split"] == "test" or (r["split"] == "train" and r["group"] in keep)]
    return out, {label: gs[:k] for label, gs in order.items()}


def plan(cv: Path, out: Path, ks: list[int], seed: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for fold in _folds(cv):
        rows = _rows(fold / "split_manifest.csv")
        full = sum(r["split"] == "train" for r in rows)
        for k in ks:
            rng = np.random.default_rng(
                [seed, int(fold.name) if fold.name.isdigit() else 0]
            )  # one order per fold
            kept, groups = subsample(rows, k, rng)
            name = f"k{k}_f{fold.name}"
            with open(out / f"{name}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(kept)
            n = sum(r["split"] == "train" for r in kept)
            lines.append(
                {
                    "run": name,
                    "fold": fold.name,
                    "k": k,
                    "train_cells": n,
                    "full_train_cells": full,
                    "epochs": max(BASE_EPOCHS, round(BASE_EPOCHS * full / n)),
                    "groups": ";".join(g for gs in groups.values() for g in gs),
                }
            )
    with open(out / "plan.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(lines[0]))
        w.writeheader()
        w.writerows(lines)
    return lines


def _mca(run: Path) -> float | None:
    m = run / "metrics.json"
    return float(json.loads(m.read_text())["test/mca"]) if m.is_file() else None


def plot(cv: Path, out: Path, path: Path) -> Path:
    """Test MCA against training groups per class, one line per fold and the mean over folds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = _rows(out / "plan.csv")
    ks = sorted({int(r["k"]) for r in lines})
    folds = sorted({r["fold"] for r in lines}, key=lambda s: (len(s), s))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    curves = []
    for fold in folds:
        full = _groups_per_class(cv / fold)
        xs, ys = [], []
        for x, v in [*((k, _mca(out / "runs" / f"k{k}_f{fold}")) for k in ks), (full, _mca(cv / fold))]:
            if v is not None:
                xs.append(x)
                ys.append(v)
        ax.plot(xs, ys, "o-", color="0.7", lw=1)
        curves.append((xs, ys))
    complete = [c for c in curves if len(c[0]) == len(ks) + 1]
    if complete:
        ax.plot(
            np.mean([c[0] for c in complete], axis=0),
            np.mean([c[1] for c in complete], axis=0),
            "o-",
            color="C0",
            lw=2,
            label=f"mean of {len(complete)} folds",
        )
        ax.legend(loc="lower right")
    ax.set_xlabel("training specimen groups per class")
    ax.set_ylabel("test MCA, unseen specimens")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(cv: Path, out: Path) -> str:
    lines = _rows(out / "plan.csv")
    ks = sorted({int(r["k"]) for r in lines})
    folds = sorted({r["fold"] for r in lines}, key=lambda s: (len(s), s))
    cells = {(r["fold"], int(r["k"])): r for r in lines}
    fig: dict[tuple[str, str], float | None] = {}
    for fold in folds:
        for k in ks:
            fig[(fold, str(k))] = _mca(out / "runs" / f"k{k}_f{fold}")
        fig[(fold, "all")] = _mca(cv / fold)
    cols = [str(k) for k in ks] + ["all"]
    head = " | ".join(f"{c} per class" if c != "all" else "all (the CV's jobs)" for c in cols)
    text = [
        f"| fold | {head} | training cells ({', '.join(cols)}) | epochs |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for fold in folds:
        vals = " | ".join("—" if fig[(fold, c)] is None else f"{fig[(fold, c)]:.3f}" for c in cols)
        n = (
            ", ".join(str(cells[(fold, k)]["train_cells"]) for k in ks)
            + f", {cells[(fold, ks[0])]['full_train_cells']}"
        )
        ep = ", ".join(str(cells[(fold, k)]["epochs"]) for k in ks) + f", {BASE_EPOCHS}"
        text.append(f"| {fold} | {vals} | {n} | {ep} |")
    means = []
    for c in cols:
        v = [fig[(f, c)] for f in folds if fig[(f, c)] is not None]
        means.append(f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f} ({len(v)})" if len(v) > 1 else "—")
    text.append(f"| **mean ± SD (folds)** | {' | '.join(means)} | | |")
    per_class = [_groups_per_class(cv / fold) for fold in folds]
    text.append("")
    text.append(
        f"'all' is every training group of the fold: {np.mean(per_class):.1f} per class on average "
        f"({min(per_class):.1f}–{max(per_class):.1f} by fold)."
    )
    recall: dict[tuple[str, str], list[float]] = {}
    for fold in folds:
        runs = {**{str(k): out / "runs" / f"k{k}_f{fold}" for k in ks}, "all": cv / fold}
        if not all((r / "test_per_class.csv").is_file() for r in runs.values()):
            continue  # per class: the folds with every count
        for c, run in runs.items():
            for row in _rows(run / "test_per_class.csv"):
                recall.setdefault((row["class"], c), []).append(float(row["recall"]))
    names = list(dict.fromkeys(name for name, _ in recall))
    if names:
        n = len(recall[(names[0], "all")])
        text.append("")
        text.append(f"Recall per class, mean over the {n} fold(s) with every count:")
        text.append("")
        text.append(f"| class | {' | '.join(c if c == 'all' else f'{c} per class' for c in cols)} |")
        text.append("|---" * (len(cols) + 1) + "|")
        for name in names:
            text.append(f"| {name} | {' | '.join(f'{np.mean(recall[(name, c)]):.3f}' for c in cols)} |")
    text.append("")
    text.append("| paired difference | mean | 95% t-interval over folds | folds higher |")
    text.append("|---|---|---|---|")
    for a, b in zip(cols[:-1], cols[1:], strict=True):
        d = [fig[(f, b)] - fig[(f, a)] for f in folds if fig[(f, a)] is not None and fig[(f, b)] is not None]
        if len(d) > 1:
            lo, hi = t_interval(d)
            text.append(
                f"| {b} − {a} per class | {np.mean(d):+.3f} | [{lo:+.3f}, {hi:+.3f}] | {sum(x > 0 for x in d)} of {len(d)} |"
            )
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="write the subsampled split manifests and plan.csv")
    p.add_argument("cv", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--k", default="1,2", help="training groups per class, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="<I3A training folder>", help="data.root for the printed commands")
    t = sub.add_parser("table", help="the test MCA per fold and count, and paired differences")
    t.add_argument("cv", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--out-md", type=Path, help="also write the table here")
    t.add_argument("--plot", type=Path, help="also draw the curves (PNG)")
    args = ap.parse_args(argv)
    if args.cmd == "plan":
        for line in plan(args.cv, args.out, [int(k) for k in args.k.split(",")], args.seed):
            print(
                f"ana-train experiment=i3a_cells data.root={args.root} data.split_manifest={args.out / line['run']}.csv "
                f"recipe_size.cpu.max_epochs={line['epochs']} hydra.run.dir={args.out / 'runs' / line['run']}"
            )
        return 0
    text = table(args.cv, args.out)
    print(text)
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(text)
    if args.plot:
        print(f"plot: {plot(args.cv, args.out, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
