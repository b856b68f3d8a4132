"""Level-2 MCA of a field model on the 155 real ICAP reference fields, with and without scale normalisation.

Routes (each prints one row; the model is never tuned on these fields):

- ``resize``: the whole field resized to the model's input size (what ana-predict did before fields);
- ``fields``: ana-predict's field mode — the nucleus diameter estimated per field, tiles of the input
  size cut at the model's training scale, tile probabilities combined by ``--combine``;
- with ``--zoom Z`` both routes are repeated on the same fields digitally enlarged Z× (bicubic), a
  stand-in for a microscope with Z× the magnification (real other-lab fields are not available here).

Noise: 155 fields in 19 level-2 groups of 3–15 fields each; the script prints a 95% bootstrap
interval (fields resampled within each group, 1,000 times) and the paired difference between routes.

    python experiments/field_mca.py --ckpt outputs/field_mca/scaled/checkpoints/best-*.ckpt --zoom 2.5
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("ANA_SHARED", REPO.parent / "shared")) / "data" / "ana-pattern-quest"


def mca(true: list[str], pred: list[str]) -> float:
    groups = sorted(set(true))
    return float(
        np.mean([np.mean([p == g for t, p in zip(true, pred, strict=True) if t == g]) for g in groups])
    )


def bootstrap(true: list[str], preds: dict[str, list[str]], n: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.array(true)
    idx_by = {g: np.flatnonzero(t == g) for g in sorted(set(true))}
    out = {k: [] for k in preds}
    for _ in range(n):
        idx = np.concatenate([rng.choice(v, v.size) for v in idx_by.values()])
        for k, p in preds.items():
            pa = np.array(p)
            out[k].append(mca(list(t[idx]), list(pa[idx])))
    return {k: np.array(v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument(
        "--model-diameter", type=float, default=None, help="the model's training scale if not stored"
    )
    ap.add_argument("--combine", default="mean_log")
    ap.add_argument("--zoom", type=float, nargs="*", default=[])
    ap.add_argument("--out", default=None, help="CSV of per-field predictions")
    ap.add_argument("--limit", type=int, default=None, help="first N fields only (a smoke test)")
    a = ap.parse_args(argv)
    if not REFERENCE.is_dir():
        print(f"reference fields not found at {REFERENCE}; set ANA_SHARED")
        return 0
    import cv2
    import torch

    from ana_lightning.data.images import load_image
    from ana_lightning.fields.scale import estimate_nucleus_diameter
    from ana_lightning.fields.verdicts import FieldPredictor, training_scale
    from ana_lightning.predict import Predictor
    from ana_lightning.taxonomy import Taxonomy

    torch.set_num_threads(1)
    ckpt = sorted(glob.glob(a.ckpt))[-1]
    pred = Predictor.load(ckpt, device="cpu")
    model_d = a.model_diameter or training_scale(ckpt)["nucleus_diameter_px"]
    if model_d is None:
        print("the checkpoint stores no data.nucleus_diameter_px: give --model-diameter")
        return 2
    fp = FieldPredictor(pred, "field", model_d, combine=a.combine)
    tree = Taxonomy.load()
    with open(REFERENCE / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f)][: a.limit]
    true = [tree.level_of(r["label"], 2) for r in rows]
    preds: dict[str, list[str]] = {}
    per_field = []
    for zoom in [1.0, *a.zoom]:
        pr, pf, diam = [], [], []
        for r in rows:
            img = load_image(REFERENCE / r["path"])
            if zoom != 1.0:
                img = cv2.resize(img, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
            p1 = pred.predict_image(img)
            pr.append(tree.level_of(p1.labels[0], 2))
            try:
                s = estimate_nucleus_diameter(img)
            except ValueError:
                s = None
            if s is None or not s.reliable:  # what ana-predict does: the median of the reliable estimates
                s = None
            diam.append(s)
            pf.append(None)
        good = [s.diameter_px for s in diam if s is not None]
        med = float(np.median(good))
        from ana_lightning.fields.scale import ScaleEstimate

        for i, r in enumerate(rows):
            img = load_image(REFERENCE / r["path"])
            if zoom != 1.0:
                img = cv2.resize(img, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
            s = diam[i] or ScaleEstimate(med, "median of reliable estimates", reliable=False)
            res, _ = fp.predict_field(img, s)
            pf[i] = tree.level_of(res.verdict[0], 2)
            per_field.append(
                {
                    "zoom": zoom,
                    "path": r["path"],
                    "true": true[i],
                    "resize": pr[i],
                    "fields": pf[i],
                    "diameter": f"{s.diameter_px:.1f}",
                    "reliable": int(s.reliable),
                }
            )
        preds[f"resize x{zoom:g}"] = pr
        preds[f"fields x{zoom:g}"] = pf
        print(
            f"zoom x{zoom:g}: nucleus diameter median {med:.1f} px over {len(good)}/{len(rows)} reliable estimates",
            flush=True,
        )
    boots = bootstrap(true, preds)
    print(
        f"\nmodel {ckpt} (training scale {model_d:g} px), combine={a.combine}; {len(rows)} reference fields, "
        f"{len(set(true))} level-2 groups (chance {1 / len(set(true)):.3f})\n"
    )
    print("| route | level-2 MCA | 95% bootstrap interval |\n|---|---|---|")
    for k, p in preds.items():
        lo, hi = np.percentile(boots[k], [2.5, 97.5])
        print(f"| {k} | {mca(true, p):.3f} | {lo:.3f}–{hi:.3f} |")
    print("\n| paired difference (fields − resize) | mean | 95% interval |\n|---|---|---|")
    for zoom in [1.0, *a.zoom]:
        d = boots[f"fields x{zoom:g}"] - boots[f"resize x{zoom:g}"]
        print(
            f"| x{zoom:g} | {d.mean():+.3f} | {np.percentile(d, 2.5):+.3f} – {np.percentile(d, 97.5):+.3f} |"
        )
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(per_field[0]))
            w.writeheader()
            w.writerows(per_field)
    return 0


if __name__ == "__main__":
    sys.exit(main())
