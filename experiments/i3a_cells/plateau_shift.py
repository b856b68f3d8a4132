"""Does a fold model's Speckled/Centromere decision follow the plateau? The CV's fold models read their own
test cells with the diffuse level under the pattern moved (a counterfactual; nothing is trained or fitted).

    python experiments/i3a_cells/plateau_shift.py outputs/<cv sweep> [--amounts 0.15,0.3] [--out-md table.md]

Inside each cell's mask, in the units the network reads (:func:`plateau_check.plateau`'s: ``b`` the median
outside the mask, ``t`` the 99th percentile inside, ``I = clip((x - b) / (t - b), 0, 1)``), the plateau is

- lifted by ``a``: ``I' = a + (1 - a) I`` (a dark nucleoplasm gets a diffuse level ``a``; the dots stay at the top),
- sunk by ``a``: ``I' = max(I - a, 0) / (1 - a)`` (a diffuse level up to ``a`` goes dark; the dots stay at the top),

and written back as ``x' = b + I' (t - b)`` (pixels above ``t`` kept; the change ramps in over the mask's outer
3 px, so the moved level has no hard edge; the same change added to every colour channel). Each fold job's kept checkpoint reads its test cells of ``--classes`` as it was tested (dihedral TTA when
the run used it), once unchanged and once per condition. The table pools the folds (every cell once): the share
of each class's cells read as each of ``--classes`` (the rest: another class), and the same per specimen. The
unchanged reading is checked against the sweep's own ``oof_predictions.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

RAMP = 3  # px over which the change ramps in from the mask's edge

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import batched, best_checkpoint, model_input, read_cells, split_cells  # noqa: E402
from report_out import emit  # noqa: E402
from tta_check import run_dirs, run_root  # noqa: E402


def move_plateau(image: np.ndarray, mask: np.ndarray, kind: str, a: float) -> np.ndarray:
    """``image`` (H×W or H×W×C, 8-bit) with its plateau lifted (``kind='lift'``) or sunk (``'sink'``) by ``a``
    inside ``mask`` (module docstring). ``a`` in [0, 1)."""
    from scipy import ndimage as ndi
    from texture_check import normalised_intensity

    if kind not in ("lift", "sink"):
        raise ValueError(f"kind {kind!r}: 'lift' or 'sink'")
    if not 0 <= a < 1:
        raise ValueError(f"amount {a}: must lie in [0, 1)")
    x = (image.max(axis=2) if image.ndim == 3 else image).astype(np.float32)
    m = (mask.max(axis=2) if mask.ndim == 3 else mask) > 0
    inside = x[m]
    b = float(np.median(x[~m])) if (~m).sum() >= 16 else float(np.percentile(inside, 5))
    t = float(np.percentile(inside, 99))
    level = normalised_intensity(x, m, "a plateau shift")
    moved = a + (1 - a) * level if kind == "lift" else np.maximum(level - a, 0) / (1 - a)
    target = b + moved * max(t - b, 1e-3)
    # ramped in over the mask's outer RAMP px, so the moved level has no hard edge (the plateau statistic,
    # over the mask eroded by 3 px, sees the whole change)
    weight = np.clip(ndi.distance_transform_edt(m) / RAMP, 0.0, 1.0)
    change = np.where(m & (x <= t), weight * (target - x), 0.0)
    if image.ndim == 3:
        change = change[..., None]
    return np.clip(np.round(image.astype(np.float32) + change), 0, 255).astype(np.uint8)


def conditions(amounts: list[float]) -> dict:
    """``{name: shift(image, mask)}``: unchanged, then lift and sink by each amount."""

    def make(kind, a):
        def f(im, m):
            return move_plateau(im, m, kind, a)

        f.with_mask = True
        return f

    out = {"none": lambda im: im}
    for kind in ("lift", "sink"):
        for a in amounts:
            out[f"{kind} {a:g}"] = make(kind, a)
    return out


def read_fold(run: Path, root: Path, classes: list[str], conds: dict) -> list[dict]:
    """One row per test cell of ``classes`` in ``run``: path, specimen, true class, prediction per condition."""
    from ana_lightning.utils import load_checkpoint_model

    model = load_checkpoint_model(best_checkpoint(run))
    model.eval()
    paths, labels, groups = split_cells(run, root, "test")
    keep = [i for i, c in enumerate(labels) if c in classes]
    if not keep:
        return []
    paths = [paths[i] for i in keep]
    raw = read_cells(paths, run)
    names = list(model.class_names)
    preds = {c: batched(model, model_input(model, run, raw, f)).argmax(-1).numpy() for c, f in conds.items()}
    return [
        {
            "path": p,
            "specimen": groups[i],
            "true": labels[i],
            **{c: names[int(preds[c][j])] for c in conds},
        }
        for j, (p, i) in enumerate(zip(paths, keep, strict=True))
    ]


def oof_agreement(sweep: Path, rows: list[dict], root: Path) -> float | None:
    """Share of ``rows`` whose unchanged prediction equals the sweep's ``oof_predictions.csv`` (None without it)."""
    path = sweep / "oof_predictions.csv"
    if not path.is_file():
        return None
    pred = {}
    for r in csv.DictReader(open(path)):
        if str(r.get("repeat", "0")) in ("0", ""):
            p = Path(r["path"])
            pred[str(p if p.is_absolute() else root / p)] = r["pred"]
    hits = [pred[r["path"]] == r["none"] for r in rows if r["path"] in pred]
    return float(np.mean(hits)) if hits else None


def shares(rows: list[dict], cond: str, classes: list[str]) -> list[float]:
    return [float(np.mean([r[cond] == c for r in rows])) for c in classes]


def _other(rows: list[dict], cond: str, classes: list[str]) -> str:
    """The class outside ``classes`` read most often under ``cond``, with its share (empty when none)."""
    others = Counter(r[cond] for r in rows if r[cond] not in classes)
    if not others:
        return ""
    name, n = others.most_common(1)[0]
    return f" ({name} {n / len(rows):.2f})"


def markdown(rows: list[dict], conds: list[str], classes: list[str], sweep: Path, agree) -> str:
    head = " / ".join(classes)
    lines = [
        f"# The plateau moved inside the mask: how {sweep.name}'s fold models read their test cells",
        "",
        f"Each cell: the share read as {head} (in brackets: the other class read most often). Every cell of {', '.join(classes)} "
        "once, by the fold model that never saw its specimen.",
        "",
        "| true class | cells | " + " | ".join(conds) + " |",
        "|---|---|" + "---|" * len(conds),
    ]
    for c in classes:
        rs = [r for r in rows if r["true"] == c]
        if rs:
            cells = [
                " / ".join(f"{v:.2f}" for v in shares(rs, k, classes)) + _other(rs, k, classes) for k in conds
            ]
            lines.append(f"| {c} | {len(rs)} | " + " | ".join(cells) + " |")
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["specimen"]].append(r)
    lines += ["", "Per specimen (share read as its own class):", ""]
    lines += [
        "| class | specimen | cells | " + " | ".join(conds) + " |",
        "|---|---|---|" + "---|" * len(conds),
    ]
    for g in sorted(by, key=lambda g: (by[g][0]["true"], g)):
        rs = by[g]
        true = rs[0]["true"]
        vals = [f"{np.mean([r[k] == true for r in rs]):.2f}" for k in conds]
        lines.append(f"| {true} | {g} | {len(rs)} | " + " | ".join(vals) + " |")
    if agree is not None:
        lines += [
            "",
            f"Unchanged reading against the sweep's oof_predictions.csv: {agree:.3f} of the cells agree.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, help="a finished CV sweep folder (or one run folder)")
    ap.add_argument(
        "--root", type=Path, default=None, help="the cells' folder (default: each run's data.root)"
    )
    ap.add_argument("--classes", default="Speckled,Centromere", help="true classes to read (comma-separated)")
    ap.add_argument("--amounts", default="0.15,0.3", help="plateau shifts a, in normalised units, in [0, 1)")
    ap.add_argument("--out-md", type=Path, default=None, help="also write the tables here")
    ap.add_argument("--out-csv", type=Path, default=None, help="one row per cell and condition")
    a = ap.parse_args(argv)
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    try:
        amounts = [float(v) for v in a.amounts.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--amounts {a.amounts!r}: comma-separated numbers in [0, 1)") from None
    bad = [v for v in amounts if not 0 <= v < 1]
    if bad:
        raise SystemExit(f"--amounts {bad}: each must lie in [0, 1)")
    conds = conditions(amounts)
    rows: list[dict] = []
    root = None
    for run in run_dirs([a.sweep]):
        root = (a.root or run_root(run)).resolve()
        fold_rows = read_fold(run, root, classes, conds)
        print(f"{run}: {len(fold_rows)} cells", file=sys.stderr)
        rows += fold_rows
    if not rows:
        raise SystemExit(f"{a.sweep}: no test cells of {classes} in its runs")
    text = markdown(rows, list(conds), classes, a.sweep, oof_agreement(a.sweep, rows, root))
    emit(text, a.out_md)
    if a.out_csv:
        a.out_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(a.out_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
