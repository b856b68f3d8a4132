"""How the fold models of grouped CVs read their cells framed another way (round 9).

    python experiments/i3a_cells/framing_check.py outputs/cv_i3a outputs/cv_frame [--split val] \\
        [--framings 0.6,1.0] [--out table.md]

Datasets frame a cell differently: the I3A crops leave a margin (the mask's bounding box spans ~0.70 of
the crop side), a tight crop is the box itself (1.0), a field cutter leaves whatever margin it was given.
Each cell of a fold's ``--split`` cells (validation by default: this decides) is re-cut around its mask
so that the box spans ``f`` of a square crop (:func:`ana_lightning.data.masks.recrop`; past the cell
image, the background level), then given to the fold model the way its run prepares cells (its
``data.mask``, and its own ``data.crop_fraction`` re-cut when it has one). ``as given`` is the cell
unchanged. For each CV folder: MCA per fold and framing; then every later folder paired by fold with the
first (mean difference, 95 % t-interval, folds higher; :func:`ana_lightning.stats.paired_comparison`),
and the recall per class under the tightest framing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ablation as A  # noqa: E402


def framed_predictions(
    run: Path, root: Path, split: str, framings: list[float]
) -> tuple[np.ndarray, list[str], dict]:
    """``(true class indices, class names, {framing: predicted indices})`` of a run's ``split`` cells."""
    from ana_lightning.data.masks import recrop
    from ana_lightning.utils import load_checkpoint_model

    model = load_checkpoint_model(A.best_checkpoint(run))
    model.eval()
    paths, labels = A._test_cells(run, root, split)
    names = list(model.class_names)
    y = np.array([names.index(c) for c in labels])
    raw = A.read_cells(paths, run)
    pred = {"as given": A.batched(model, A.model_input(model, run, raw)).argmax(-1).numpy()}
    for f in framings:
        cells = [recrop(im, m, f) for im, m in raw]
        pred[f"{f:g}"] = A.batched(model, A.model_input(model, run, cells)).argmax(-1).numpy()
    return y, names, pred


def check(cvs: list[Path], root: Path, split: str, framings: list[float]) -> dict:
    """``{cv: {fold: {"mca": {framing: MCA}, "recall": {framing: {class: recall}}}}}``."""
    from ana_lightning.crossval import fold_jobs

    out: dict = {}
    for cv in cvs:
        out[cv] = {}
        jobs = fold_jobs(cv)
        if not jobs:
            raise SystemExit(f"{cv}: no fold jobs in it - is it a CV sweep folder?")
        for job in jobs:
            run = job["dir"]
            y, names, pred = framed_predictions(run, root, split, framings)
            out[cv][job["fold"]] = {
                "mca": {k: A.mca(y, p, len(names)) for k, p in pred.items()},
                "recall": {
                    k: {n: float(np.mean(p[y == i] == i)) for i, n in enumerate(names) if (y == i).any()}
                    for k, p in pred.items()
                },
            }
            print(
                cv, job["fold"], {k: round(v, 3) for k, v in out[cv][job["fold"]]["mca"].items()}, flush=True
            )
    return out


def tables(res: dict, split: str) -> str:
    from ana_lightning.stats import paired_comparison

    cvs = list(res)
    first = res[cvs[0]]
    framings = list(next(iter(first.values()))["mca"])
    lines = [
        f"MCA on each fold's {split} cells, re-cut so the mask's box spans f of the crop side",
        "",
        "| CV | " + " | ".join(f"fold {k}" for k in sorted(first)) + " | framing |",
        "|---|" + "---|" * len(first) + "---|",
    ]
    for cv in cvs:
        for fr in framings:
            vals = [res[cv][k]["mca"][fr] for k in sorted(res[cv])]
            lines.append(f"| {cv.name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {fr} |")
    lines += [
        "",
        "| CV | framing | mean ± SD | vs " + cvs[0].name + ", paired (t-interval) | folds higher |",
        "|---|---|---|---|---|",
    ]
    for cv in cvs:
        folds = sorted(res[cv])
        for fr in framings:
            vals = [res[cv][k]["mca"][fr] for k in folds]
            sd = np.std(vals, ddof=1) if len(vals) > 1 else float("nan")
            cmp = ""
            higher = ""
            if cv != cvs[0] and sorted(first) == folds and len(folds) > 1:
                base = [first[k]["mca"][fr] for k in folds]
                c = paired_comparison(vals, base)
                cmp = f"{c['mean_diff']:+.3f} [{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}]"
                higher = f"{sum(a > b for a, b in zip(vals, base, strict=True))} of {len(folds)}"
            lines.append(f"| {cv.name} | {fr} | {np.mean(vals):.3f} ± {sd:.3f} | {cmp} | {higher} |")
    tight = framings[-1]
    classes = list(next(iter(first.values()))["recall"][tight])
    lines += [
        "",
        f"Recall per class, framing {tight}, mean over the folds whose cells hold the class",
        "",
        "| CV | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for cv in cvs:
        rec = [np.nanmean([res[cv][k]["recall"][tight].get(c, np.nan) for k in res[cv]]) for c in classes]
        lines.append(f"| {cv.name} | " + " | ".join(f"{r:.2f}" for r in rec) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from report_out import emit

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "cvs", type=Path, nargs="+", help="CV sweep folders; later ones are paired with the first"
    )
    ap.add_argument("--root", type=Path, default=A.DEFAULT_ROOT, help="the I3A training folder")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--framings", default="0.6,1.0", help="shares of the crop side the mask's box spans")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    framings = [float(f) for f in args.framings.split(",") if f.strip()]
    for f in framings:
        if not 0 < f <= 1:
            raise SystemExit(f"--framings: {f} is not in (0, 1]")
    text = tables(check(args.cvs, args.root, args.split, framings), args.split)
    emit(text, args.out)


if __name__ == "__main__":
    main()
