"""Does cell size explain which specimens a recipe fails? (round 8)

    python experiments/i3a_cells/size_check.py outputs/cv_i3a      # a grouped CV: its out-of-fold predictions
    python experiments/i3a_cells/size_check.py outputs/<run>       # one run: its test predictions
        [--root <I3A training folder>] [--out size_check.md]

The recipe stretches every cell crop to the input size (64 px), so a specimen of larger cells would be
shrunk more and its dots would look finer. This script tests that explanation on figures already
written: per specimen group, the cells, the accuracy, the median crop side and the median mask diameter
(of a disc of the mask's area); the Pearson correlation of the groups' median diameter with their
accuracy (between specimens); and, within specimens, the accuracy by the cell's diameter relative to its
group's median, in quintiles, also as the difference from its group's accuracy (specimen removed). It reads the
predictions and masks only: no model, no training.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import DEFAULT_ROOT  # noqa: E402


def _relative(path: str, root: Path) -> str:
    """A predictions path (absolute, relative to the working folder, or to ``root``) as a manifest path."""
    p = Path(path)
    for a, b in ((p, root), (p.resolve(), root.resolve())):
        try:
            return a.relative_to(b).as_posix()
        except ValueError:
            pass
    return p.as_posix()


def read_predictions(folder: Path, root: Path) -> list[dict]:
    """Rows ``path`` (relative to ``root``), ``true``, ``pred``, ``group`` of a CV folder
    (``oof_predictions.csv`` + ``folds_manifest.csv``) or a run folder (``test_predictions.csv`` +
    ``split_manifest.csv``)."""
    if (folder / "oof_predictions.csv").is_file():
        preds, manifest = folder / "oof_predictions.csv", folder / "folds_manifest.csv"
    elif (folder / "test_predictions.csv").is_file():
        preds, manifest = folder / "test_predictions.csv", folder / "split_manifest.csv"
    else:
        raise SystemExit(
            f"{folder}: neither oof_predictions.csv (a CV folder) nor test_predictions.csv (a run)"
        )
    manifests = [manifest] if manifest.is_file() else sorted(folder.glob("*/split_manifest.csv"))
    if not manifests:  # a CV run with data.folds_manifest elsewhere has its folds' split manifests
        raise SystemExit(
            f"{manifest}: missing, and no <fold>/split_manifest.csv (they hold the specimen groups)"
        )
    group_of = {r["path"]: r.get("group") or "" for m in manifests for r in csv.DictReader(open(m))}
    rows = []
    for r in csv.DictReader(open(preds)):
        rel = _relative(r["path"], root)
        if rel not in group_of:
            raise SystemExit(
                f"{preds}: {r['path']} is in no split manifest (is --root {root} its data.root?)"
            )
        rows.append({"path": rel, "true": r["true"], "pred": r["pred"], "group": group_of[rel]})
    if not rows:
        raise SystemExit(f"{preds}: no predictions")
    return rows


def cell_size(root: Path, rel: str) -> tuple[int, float]:
    """The crop's longer side and the diameter of a disc of the mask's area, in pixels, both read off the
    mask (a mask has its crop's size: the project refuses one that does not fit)."""
    from ana_lightning.data.images import load_image

    p = root / rel
    mask_path = p.with_name(p.stem + "_Mask" + p.suffix)
    if not mask_path.is_file():
        raise SystemExit(f"{mask_path}: no mask for {p} (size_check reads the contest layout, <ID>_Mask.png)")
    mask = load_image(str(mask_path)).max(axis=-1) > 0
    return max(mask.shape), 2.0 * np.sqrt(int(mask.sum()) / np.pi)


def size_table(rows: list[dict], sizes: list[tuple[int, float]]) -> dict:
    """Per group, per relative-size quintile, and the correlation of group size with group accuracy."""
    side = np.array([s for s, _ in sizes], float)
    diam = np.array([d for _, d in sizes], float)
    ok = np.array([r["true"] == r["pred"] for r in rows])
    classes = np.array([r["true"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    rel = np.empty_like(diam)  # diameter / its specimen group's median: size within a specimen
    gap = np.empty_like(diam)  # right (1) or wrong (0) minus its group's accuracy
    for g in set(groups):
        rel[groups == g] = diam[groups == g] / np.median(diam[groups == g])
        gap[groups == g] = ok[groups == g] - ok[groups == g].mean()
    per_group = []
    for c, g in sorted({(c, g) for c, g in zip(classes, groups, strict=True)}):
        sel = (classes == c) & (groups == g)
        top = Counter(r["pred"] for r, s in zip(rows, sel, strict=True) if s).most_common(1)[0][0]
        per_group.append(
            {"class": c, "group": g, "cells": int(sel.sum()), "accuracy": float(ok[sel].mean()),
             "side": float(np.median(side[sel])), "diameter": float(np.median(diam[sel])), "top": top}
        )  # fmt: skip
    edges = np.quantile(rel, np.linspace(0, 1, 6))
    which = np.clip(np.searchsorted(edges, rel, side="right") - 1, 0, 4)
    quintiles = [
        {"from": float(edges[q]), "to": float(edges[q + 1]), "cells": int((which == q).sum()),
         "accuracy": float(ok[which == q].mean()) if (which == q).any() else float("nan"),
         "vs_group": float(gap[which == q].mean()) if (which == q).any() else float("nan")}
        for q in range(5)
    ]  # fmt: skip
    d = np.array([g["diameter"] for g in per_group])
    a = np.array([g["accuracy"] for g in per_group])
    r = float(np.corrcoef(d, a)[0, 1]) if len(per_group) > 2 and d.std() > 0 and a.std() > 0 else float("nan")
    return {"groups": per_group, "quintiles": quintiles, "r": r}


def markdown(table: dict, source: str) -> str:
    lines = [
        f"Cell size against accuracy ({source}).",
        "",
        "| class | group | cells | accuracy | median crop side (px) | median mask diameter (px) | read most often as |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in table["groups"]:
        lines.append(
            f"| {g['class']} | {g['group']} | {g['cells']} | {g['accuracy']:.2f} | {g['side']:.1f} | "
            f"{g['diameter']:.1f} | {g['top']} |"
        )
    lines += [
        "",
        "| diameter / its specimen group's median (quintiles) | cells | accuracy | minus its group's accuracy |",
        "|---|---|---|---|",
    ]
    for q in table["quintiles"]:
        lines.append(
            f"| {q['from']:.2f} – {q['to']:.2f} | {q['cells']} | {q['accuracy']:.3f} | {q['vs_group']:+.3f} |"
        )
    d = [g["diameter"] for g in table["groups"]]
    lines += [
        "",
        f"Group median diameters {min(d):.1f} – {max(d):.1f} px; correlation of a group's median diameter "
        f"with its accuracy over {len(d)} groups: r = {table['r']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from report_out import emit

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="a CV sweep folder (oof_predictions.csv) or a run folder")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the cells' folder (the runs' data.root)")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    rows = read_predictions(args.folder, args.root)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with lightning
        tqdm = lambda x, **_: x  # noqa: E731
    sizes = [cell_size(args.root, r["path"]) for r in tqdm(rows, desc="masks", unit="cell")]
    text = markdown(size_table(rows, sizes), args.folder.as_posix())
    emit(text, args.out)


if __name__ == "__main__":
    main()
