"""Field segmentation and scale-estimate benchmark on simulator fields with true masks.

Renders fields of the given codes at several nucleus diameters (magnifications), segments them with
the classical segmenter, and prints per (code group, diameter): nucleus precision / recall / F1 at
IoU 0.5 (interphase nuclei; predictions on a mitotic cell are neither true nor false positives), cell
F1 at IoU 0.5, mitotic-flag recall / precision, and the scale-estimate ratio (estimated / true
median nucleus diameter). With ``--reference`` it also writes overlay PNGs of a few real reference
fields (the segmentation's nuclei contours) into ``--out``.

    python experiments/benchmarks/field_segmentation.py --codes AC-1 AC-3 AC-5 --n 2 --dapi both
    python experiments/benchmarks/field_segmentation.py --crowding 0 0.5 0.8   # denser cultures: touching nuclei
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np


def match_f1(pred: np.ndarray, true: np.ndarray, ignore: np.ndarray | None = None, iou: float = 0.5):
    """``(tp, fp, fn)`` of label maps matched one-to-one at IoU > ``iou`` (unique when iou >= 0.5).
    ``ignore``: a bool mask; predicted objects mostly inside it count neither way."""
    np_, nt = int(pred.max()), int(true.max())
    inter = np.bincount(
        pred.ravel().astype(np.int64) * (nt + 1) + true.ravel(), minlength=(np_ + 1) * (nt + 1)
    )
    inter = inter.reshape(np_ + 1, nt + 1)
    ap, at = inter.sum(1), inter.sum(0)
    i = inter[1:, 1:].astype(float)
    u = ap[1:, None] + at[None, 1:] - i
    m = (i / np.maximum(u, 1)) > iou
    present_t = at[1:] > 0
    tp = int(m.any(0)[present_t].sum())
    matched_p = m.any(1)
    if ignore is not None and np_:
        ign = np.bincount(pred.ravel(), weights=ignore.ravel().astype(float), minlength=np_ + 1)[1:]
        skip = (ign > 0.5 * np.maximum(ap[1:], 1)) & ~matched_p
    else:
        skip = np.zeros(np_, bool)
    fp = int((~matched_p & ~skip & (ap[1:] > 0)).sum())
    fn = int(present_t.sum() - tp)
    return tp, fp, fn


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    return p, r, 2 * p * r / max(p + r, 1e-9)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codes", nargs="*", default=None, help="default: all AC-0 … AC-31")
    ap.add_argument("--diameters", nargs="*", type=float, default=[14, 22, 34, 52])
    ap.add_argument("--n", type=int, default=1, help="fields per code × diameter")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--dapi", choices=["no", "yes", "both"], default="both")
    ap.add_argument(
        "--crowding", nargs="*", type=float, default=[0.0], help="0: the default spacing … 1: nuclei touching"
    )
    ap.add_argument("--reference", default=None, help="folder of real reference fields (overlay PNGs)")
    ap.add_argument("--out", default="outputs/field_segmentation")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ana_lightning.data.synthetic import CODES, LEVEL2
    from ana_lightning.fields.scale import estimate_nucleus_diameter
    from ana_lightning.fields.segment import segment_field
    from ana_lightning.fields.simulate import sim_field, true_nucleus_diameter

    codes = a.codes or list(CODES)
    dapis = {"no": [False], "yes": [True], "both": [False, True]}[a.dapi]
    rows = []
    t0 = time.time()
    for dapi, crowding in itertools.product(dapis, a.crowding):
        for ci, code in enumerate(codes):
            for d in a.diameters:
                for i in range(a.n):
                    img, m = sim_field(code, d, seed=1000 * ci + i, size=a.size, dapi=dapi, crowding=crowding)
                    true_d = true_nucleus_diameter(m["nuclei"])
                    try:
                        est = estimate_nucleus_diameter(img).diameter_px
                    except ValueError:
                        est = float("nan")
                    seg = segment_field(img, diameter_px=true_d)  # segmentation at the known scale
                    mit_cells = np.isin(m["cells"], np.flatnonzero(m["mitotic"]))
                    n_tp, n_fp, n_fn = match_f1(seg.nuclei, m["nuclei"], ignore=mit_cells)
                    c_tp, c_fp, c_fn = match_f1(seg.cells, m["cells"])
                    # mitotic flags: a flagged object on a true mitotic cell is a hit
                    flagged = np.flatnonzero(seg.mitotic)
                    on_mit = [bool(mit_cells[seg.nuclei == j].mean() > 0.5) for j in flagged]
                    found = {int(np.bincount(m["cells"][seg.nuclei == j]).argmax()) for j in flagged}
                    n_mit = int(m["mitotic"].sum())
                    rows.append(
                        dict(
                            dapi=dapi,
                            crowding=crowding,
                            code=code,
                            group=LEVEL2.get(code, code),
                            d=d,
                            ratio=est / true_d,
                            n=(n_tp, n_fp, n_fn),
                            c=(c_tp, c_fp, c_fn),
                            mit_tp=sum(on_mit),
                            mit_flag=len(flagged),
                            mit_found=len(found & set(np.flatnonzero(m["mitotic"]))),
                            mit_true=n_mit,
                        )
                    )
    dt = time.time() - t0

    def agg(sel):
        n = np.sum([r["n"] for r in sel], axis=0)
        c = np.sum([r["c"] for r in sel], axis=0)
        ratios = np.array([r["ratio"] for r in sel])
        ok = np.mean(np.abs(ratios - 1) < 0.15)
        mp = sum(r["mit_tp"] for r in sel) / max(sum(r["mit_flag"] for r in sel), 1)
        mr = sum(r["mit_found"] for r in sel) / max(sum(r["mit_true"] for r in sel), 1)
        return prf(*n), prf(*c)[2], ok, float(np.nanmedian(ratios)), mp, mr

    print(f"\n{len(rows)} simulator fields ({a.size} px), {dt:.0f} s (shared 2-core machine, under load)\n")
    print(
        "| DAPI | group | fields | nuc P | nuc R | nuc F1 | cell F1 | scale within 15% | median est/true | mit P | mit R |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dapi in dapis:
        groups = list(dict.fromkeys(r["group"] for r in rows))
        for g in [*groups, "ALL"]:
            sel = [r for r in rows if r["dapi"] == dapi and (g == "ALL" or r["group"] == g)]
            (p, r_, f), cf, ok, med, mp, mr = agg(sel)
            print(
                f"| {'yes' if dapi else 'no'} | {g} | {len(sel)} | {p:.2f} | {r_:.2f} | {f:.2f} | {cf:.2f} | {ok:.2f} | {med:.2f} | {mp:.2f} | {mr:.2f} |"
            )
    print(
        "\nby nucleus diameter (all groups):\n\n| DAPI | diameter px | nuc F1 | cell F1 | scale within 15% |\n|---|---|---|---|---|"
    )
    for dapi in dapis:
        for d in a.diameters:
            sel = [r for r in rows if r["dapi"] == dapi and r["d"] == d]
            (p, r_, f), cf, ok, *_ = agg(sel)
            print(f"| {'yes' if dapi else 'no'} | {d:g} | {f:.2f} | {cf:.2f} | {ok:.2f} |")

    if len(a.crowding) > 1:
        print(
            "\nby crowding (all groups and diameters):\n\n| DAPI | crowding | nuc P | nuc R | nuc F1 | cell F1 "
            "| scale within 15% |\n|---|---|---|---|---|---|---|"
        )
        for dapi, crowding in itertools.product(dapis, a.crowding):
            sel = [r for r in rows if r["dapi"] == dapi and r["crowding"] == crowding]
            (p, r_, f), cf, ok, *_ = agg(sel)
            print(
                f"| {'yes' if dapi else 'no'} | {crowding:g} | {p:.2f} | {r_:.2f} | {f:.2f} | {cf:.2f} | {ok:.2f} |"
            )

    if a.reference:
        write_reference_overlays(Path(a.reference), Path(a.out))


def write_reference_overlays(ref: Path, out: Path, per_class: int = 1) -> list[Path]:
    from ana_lightning.data.images import load_image
    from ana_lightning.fields.overlay import draw_overlay, save_png
    from ana_lightning.fields.segment import segment_field

    paths = []
    sel = ["ac-0", "ac-1", "ac-3", "ac-8", "ac-11", "ac-19", "ac-21", "ac-22", "ac-25", "ac-6"]
    print(
        "\nreference fields (overlays):\n\n| field | nucleus diameter px (estimated) | channel | nuclei | mitotic flagged |\n|---|---|---|---|---|"
    )
    for c in sel:
        files = sorted((ref / "patterns" / c).glob("*.jp*g"))[:per_class]
        for f in files:
            img = load_image(f)
            try:
                seg = segment_field(img)
            except ValueError as e:
                print(f"| {c}/{f.name} | failed: {e} | | | |")
                continue
            lab = {i: ("mitotic" if seg.mitotic[i] else "nucleus") for i in range(1, seg.n + 1)}
            pic = draw_overlay(
                img,
                seg.nuclei,
                lab,
                {"nucleus": (255, 0, 255), "mitotic": (0, 255, 255)},
                title=f"{c} d={seg.diameter_px:.1f}px ({seg.channel}, {seg.polarity})",
            )
            paths.append(save_png(out / f"{c}_{f.stem}.png", pic))
            print(
                f"| {c}/{f.name} | {seg.diameter_px:.1f} | {seg.channel} | {seg.n} | {int(seg.mitotic.sum())} |"
            )
    print(f"\noverlays in {out.resolve()}")
    return paths


if __name__ == "__main__":
    sys.exit(main())
