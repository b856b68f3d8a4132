"""Realism report: real I3A cells vs synthetic cells (ana-synth --cells), per class.

For every I3A class, the statistics a model could key on, real vs synthetic:

- intensity inside the mask (mean, 99th percentile above the background, histogram distance: the
  Kolmogorov-Smirnov statistic of the per-cell in-mask means) and the background outside the mask;
- cell area (mask pixels) and crop size;
- texture: uniform LBP (8, 1) histogram inside the mask (chi-square distance of the class means) and
  GLCM contrast / homogeneity / correlation (in-mask, 16 levels, d = 1, 2; the standardised mean
  difference |d| averaged over the three);
- power spectrum: radially averaged, of the in-mask signal normalised per cell (8 log-spaced bins;
  L2 distance of the class-mean log profiles);
- a real-vs-synthetic classifier (gradient boosting on all of the above per cell, cross-validated with
  folds grouped by specimen): its ROC AUC — 0.5 means it cannot tell them apart (realistic), 1.0 means
  every cell gives itself away.

Real cells: only the **train and val** splits of the specimen-grouped split (``cells.py``); the test
split is left to the transfer benchmark. ``--n`` cells per class on each side.

    python experiments/simulator_realism/report.py --tag after          # writes results/realism_after.{md,json}
    python experiments/simulator_realism/report.py --compare before after  # the before/after table
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cells import I3A_NAMES, load_cell, read_real, sample_per_class  # noqa: E402

from ana_lightning.data.synthetic_cells import generate_cell_dataset  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
GLCM_PROPS = ("contrast", "homogeneity", "correlation")


# ---------------------------------------------------------------------------------------------- features
def cell_features(img: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-cell statistics (raw 8-bit grey cell, boolean mask)."""
    import cv2
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    inside = img[mask].astype(np.float64)
    bg = float(np.median(img[~mask])) if (~mask).any() else 0.0
    f: dict[str, np.ndarray | float] = {
        "mean": float(inside.mean()),
        "p99_above_bg": float(np.percentile(inside, 99) - bg),
        "background": bg,
        "cv": float(inside.std() / max(inside.mean() - bg, 1.0)),
        "area": float(mask.sum()),
        "crop_side": float(np.sqrt(img.size)),
    }
    lbp = local_binary_pattern(img, 8, 1, method="uniform")
    h = np.bincount(lbp[mask].astype(int), minlength=10)[:10].astype(np.float64)
    f["lbp"] = h / max(h.sum(), 1.0)
    lo, hi = np.percentile(inside, 1), np.percentile(inside, 99)
    q = np.clip((img.astype(np.float64) - lo) / max(hi - lo, 1e-6), 0, 0.999) * 16
    q = (q.astype(np.uint8) + 1) * mask  # 0 = outside the mask, dropped from the matrix below
    glcm = graycomatrix(q, distances=[1, 2], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=17)
    glcm = glcm[1:, 1:].astype(np.float64)
    glcm /= np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1)
    f["glcm"] = np.array([graycoprops(glcm, p).mean() for p in GLCM_PROPS])
    # power spectrum of the normalised in-mask signal, on a 64x64 resampling of the crop
    s = cv2.resize(img.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA) > 0.5
    v = s[m]
    z = np.where(m, (s - v.mean()) / max(v.std(), 1e-3), 0.0)
    p = np.abs(np.fft.fftshift(np.fft.fft2(z))) ** 2
    yy, xx = np.mgrid[-32:32, -32:32]
    r = np.hypot(yy, xx)
    edges = np.geomspace(1, 32, 9)
    prof = np.array([p[(r >= a) & (r < b)].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    f["spectrum"] = np.log10(prof / prof.sum() + 1e-12)
    return f


def vector(f: dict) -> np.ndarray:
    scal = [f["mean"], f["p99_above_bg"], f["background"], f["cv"], f["area"], f["crop_side"]]
    return np.concatenate([scal, f["lbp"], f["glcm"], f["spectrum"]])


def features_of(cells) -> list[dict]:
    """Features of ``(image, mask)`` or ``(image, mask, group)`` cells (the group kept as ``"group"``)."""
    return [{**cell_features(c[0], c[1]), "group": c[2] if len(c) > 2 else None} for c in cells]


# ---------------------------------------------------------------------------------------------- comparison
def ks(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(a, b).statistic)


def compare(real: list[dict], synth: list[dict], seed: int = 0) -> dict[str, float]:
    """Distances between two sets of per-cell features, and the real-vs-synthetic AUC.

    The classifier's cross-validation is grouped by specimen (each feature dict's ``"group"``, when
    given): cells of one specimen share its exposure, so an ungrouped split lets the classifier
    recognise specimens instead of telling real from synthetic.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict

    def arr(fs, k):
        return np.array([f[k] for f in fs], dtype=np.float64)

    out: dict[str, float] = {}
    for k in ("mean", "p99_above_bg", "background", "area"):
        out[f"real_{k}"] = float(np.median(arr(real, k)))
        out[f"synth_{k}"] = float(np.median(arr(synth, k)))
    out["ks_mean"] = ks(arr(real, "mean"), arr(synth, "mean"))
    out["ks_p99"] = ks(arr(real, "p99_above_bg"), arr(synth, "p99_above_bg"))
    out["ks_area"] = ks(arr(real, "area"), arr(synth, "area"))
    lr, ls = arr(real, "lbp").mean(0), arr(synth, "lbp").mean(0)
    out["chi2_lbp"] = float(0.5 * np.sum((lr - ls) ** 2 / (lr + ls + 1e-12)))
    gr, gs = arr(real, "glcm"), arr(synth, "glcm")
    pooled = np.sqrt(0.5 * (gr.var(0) + gs.var(0))) + 1e-9
    out["glcm_d"] = float(np.mean(np.abs(gr.mean(0) - gs.mean(0)) / pooled))
    out["spectrum_l2"] = float(np.linalg.norm(arr(real, "spectrum").mean(0) - arr(synth, "spectrum").mean(0)))
    x = np.stack([vector(f) for f in real + synth])
    y = np.r_[np.zeros(len(real)), np.ones(len(synth))]
    clf = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, random_state=seed)
    groups = [f"{side}:{f.get('group')}" for side, fs in (("r", real), ("s", synth)) for f in fs]
    n_groups = min(len({g for g in groups if g.startswith(side)}) for side in ("r", "s"))
    if all(f.get("group") is not None for f in real + synth) and n_groups >= 2:
        cv = StratifiedGroupKFold(min(5, n_groups), shuffle=True, random_state=seed)
        p = cross_val_predict(clf, x, y, cv=cv, groups=groups, method="predict_proba")[:, 1]
        out["cv_folds"] = float(min(5, n_groups))
    else:
        cv = StratifiedKFold(5, shuffle=True, random_state=seed)
        p = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
        out["cv_folds"] = 0.0  # not grouped
    out["auc"] = float(roc_auc_score(y, p))
    return out


# ---------------------------------------------------------------------------------------------- data
def real_cells(n: int) -> tuple[dict[str, list], str]:
    splits, masks, how = read_real()
    pool = splits["train"] + splits["val"]  # never the test split
    out: dict[str, list] = {}
    for r in sample_per_class(pool, n):
        out.setdefault(I3A_NAMES[r.codes[0]], []).append((*load_cell(r.path, masks[r.path]), r.group))
    return out, how


def synthetic_cells(n: int, seed: int) -> dict[str, list]:
    import csv

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_cell_dataset(Path(tmp) / "cells", n_per_class=n, seed=seed, progress=False)
        out: dict[str, list] = {}
        with open(root / "gt_training.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                iid = row["Image ID"]
                out.setdefault(row["Image class"], []).append(
                    (*load_cell(str(root / f"{iid}.png"), str(root / f"{iid}_Mask.png")), row["Specimen ID"])
                )
    return out


# ---------------------------------------------------------------------------------------------- report
COLS = [
    ("auc", "AUC real-vs-synth"),
    ("real_p99_above_bg", "p99-bg real"),
    ("synth_p99_above_bg", "p99-bg synth"),
    ("ks_mean", "KS in-mask mean"),
    ("ks_p99", "KS p99"),
    ("real_background", "bg real"),
    ("synth_background", "bg synth"),
    ("real_area", "area real"),
    ("synth_area", "area synth"),
    ("ks_area", "KS area"),
    ("chi2_lbp", "chi2 LBP"),
    ("glcm_d", "GLCM |d|"),
    ("spectrum_l2", "spectrum L2"),
]


def markdown(results: dict[str, dict[str, float]], meta: dict) -> str:
    lines = [
        f"# Simulator realism: {meta['tag']}",
        "",
        f"Real: {meta['n_real']} I3A cells (train+val splits only; grouped by {meta['grouping']}); "
        f"synthetic: {meta['n_synth']} cells (ana-synth --cells, seed {meta['seed']}). "
        f"{meta['seconds']:.0f} s on 2 shared CPU cores.",
        "",
        "| class | " + " | ".join(h for _, h in COLS) + " |",
        "|---" * (len(COLS) + 1) + "|",
    ]
    for cls, r in results.items():
        lines.append(f"| {cls} | " + " | ".join(f"{r[k]:.3g}" for k, _ in COLS) + " |")
    return "\n".join(lines) + "\n"


def compare_tags(tags: list[str]) -> str:
    res = {t: json.loads((OUT / f"realism_{t}.json").read_text())["results"] for t in tags}
    keys = [
        ("auc", "AUC"),
        ("ks_mean", "KS mean"),
        ("ks_area", "KS area"),
        ("chi2_lbp", "chi2 LBP"),
        ("glcm_d", "GLCM |d|"),
        ("spectrum_l2", "spectrum L2"),
    ]
    head = "| class | " + " | ".join(f"{h} {t}" for h, _ in [(h, 0) for _, h in keys] for t in tags) + " |"
    lines = [head, "|---" * (1 + len(keys) * len(tags)) + "|"]
    for cls in res[tags[0]]:
        lines.append(
            f"| {cls} | " + " | ".join(f"{res[t][cls][k]:.3g}" for k, _ in keys for t in tags) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", default="current", help="results/realism_<tag>.{md,json}")
    p.add_argument("--n", type=int, default=300, help="cells per class on each side (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", nargs="+", default=None, help="print the table comparing earlier tags")
    a = p.parse_args(argv)
    if a.compare:
        print(compare_tags(a.compare))
        return
    t0 = time.time()
    real, how = real_cells(a.n)
    synth = synthetic_cells(a.n, a.seed)
    results = {}
    for cls in real:
        results[cls] = compare(features_of(real[cls]), features_of(synth[cls]), seed=a.seed)
        results[cls]["n_real"], results[cls]["n_synth"] = len(real[cls]), len(synth[cls])
    allr = [f for c in real for f in features_of(real[c][: a.n // 3])]
    alls = [f for c in synth for f in features_of(synth[c][: a.n // 3])]
    results["all classes"] = {**compare(allr, alls, seed=a.seed), "n_real": len(allr), "n_synth": len(alls)}
    meta = {
        "tag": a.tag,
        "n_real": sum(len(v) for v in real.values()),
        "n_synth": sum(len(v) for v in synth.values()),
        "grouping": how,
        "seed": a.seed,
        "seconds": time.time() - t0,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"realism_{a.tag}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = markdown(results, meta)
    (OUT / f"realism_{a.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
