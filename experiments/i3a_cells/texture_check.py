"""Two checks with a classical texture descriptor of each cell, on validation cells only.

    python experiments/i3a_cells/texture_check.py fusion outputs/<run> [outputs/<run2> ...]
    python experiments/i3a_cells/texture_check.py curve outputs/<run> [outputs/<run2> ...] [--repeats 4]

The descriptor (:func:`cell_texture`) sees a cell the way the recipe's network does — background (median
outside the mask) subtracted, scaled by the 99th percentile inside the mask, the mask's pixels only —
and describes it with rotation-invariant uniform LBP histograms (radius 1, 2, 3), an intensity
histogram and percentiles, a radial profile (rings of the distance to the mask edge, and a band just
outside it), grey-level co-occurrence statistics, counts of bright spots, and the cell's area and
roundness: 106 numbers. An RBF SVM (class-balanced, standardised features) is trained on them.

- ``fusion``: for each run, the SVM is trained on the run's training cells and scored on its
  validation cells, alone and fused with the run's network (weighted mean of the two log-probabilities,
  SVM weight 0 … 1). If the two made different errors the fusion would beat both.
- ``curve``: for each run, the SVM is trained on 1, 2, … of the specimen groups of each class of the
  run's training split (``--repeats`` random choices of groups each; all groups once) and scored on the
  run's validation cells: how the accuracy on unseen specimens grows with the number of training
  specimens. The SVM stands in for the network here because it trains in seconds.

Cells are read as each run's training read them (files with more than 8 bits at its ``data.bit_depth``).
The descriptors of every cell are cached (``--cache``, keyed by file name, size and that bit depth).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import DEFAULT_ROOT, mca, read_cells, run_data, split_cells  # noqa: E402

WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0)


def normalised_intensity(x: np.ndarray, m: np.ndarray, what: str = "a texture descriptor") -> np.ndarray:
    """A grey cell ``x`` (H×W) as the recipe's network normalises it: its background (the median outside the
    mask ``m``, else the 5th percentile inside) subtracted, scaled by the 99th percentile inside, clipped to
    [0, 1]. A mask under 9 pixels is a ``ValueError`` (too small for ``what``)."""
    if m.sum() < 9:
        raise ValueError(f"a cell mask with {int(m.sum())} pixels: too small for {what}")
    inside = x[m]
    background = float(np.median(x[~m])) if (~m).sum() >= 16 else float(np.percentile(inside, 5))
    top = float(np.percentile(inside, 99))
    return np.clip((x - background) / max(top - background, 1e-3), 0.0, 1.0)


def cell_texture(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 106-number descriptor of one cell (``image``: H×W or H×W×C, ``mask``: nonzero inside)."""
    from scipy import ndimage as ndi
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern, peak_local_max

    x = (image.max(axis=2) if image.ndim == 3 else image).astype(np.float32)
    m = (mask.max(axis=2) if mask.ndim == 3 else mask) > 0
    inten = normalised_intensity(x, m)
    g8 = (inten * 255 + 0.5).astype(np.uint8)
    feats: list[np.ndarray] = []
    for points, radius in ((8, 1), (16, 2), (24, 3)):
        codes = local_binary_pattern(g8, points, radius, method="uniform")
        core = ndi.binary_erosion(m, iterations=radius) if m.sum() > 50 else m
        hist, _ = np.histogram(codes[core], bins=points + 2, range=(0, points + 2))
        feats.append(hist / max(1, hist.sum()))
    v = inten[m]
    hist, _ = np.histogram(v, bins=16, range=(0, 1))
    feats.append(hist / max(1, hist.sum()))
    feats.append(
        np.array(
            [v.mean(), v.std(), *np.percentile(v, [10, 25, 50, 75, 90]), (v > 0.5).mean(), (v > 0.25).mean()]
        )
    )
    dist = ndi.distance_transform_edt(m)
    rel = dist / max(float(dist.max()), 1e-3)
    level = max(float(v.mean()), 1e-3)
    rings = []
    for lo in np.arange(0.0, 1.0, 0.125):
        ring = (rel > lo) & (rel <= lo + 0.125) & m
        rings.append(inten[ring].mean() / level if ring.any() else 0.0)
    band = ndi.binary_dilation(m, iterations=4) & ~m
    rings.append(inten[band].mean() / level if band.any() else 0.0)
    feats.append(np.array(rings))
    q = (inten * 15.999).astype(np.uint8)
    q[~m] = 0
    glcm = graycomatrix(
        q, [1, 2, 4], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=16, symmetric=True, normed=True
    )
    glcm[0, 0] = 0  # pairs of background pixels
    glcm = glcm / np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1e-9)
    for prop in ("contrast", "homogeneity", "energy", "correlation"):
        feats.append(graycoprops(glcm, prop).mean(axis=1))
    area = float(m.sum())
    for sigma in (1.0, 2.0):
        smooth = ndi.gaussian_filter(inten, sigma)
        for thr in (0.3, 0.6):
            peaks = peak_local_max(smooth, min_distance=2, threshold_abs=thr, labels=m.astype(int))
            feats.append(np.array([len(peaks) * 1000.0 / area]))
    feats.append(np.array([np.log(area), float(dist.max()) ** 2 * np.pi / area]))
    return np.concatenate([np.ravel(f) for f in feats]).astype(np.float32)


def descriptors(paths: list[str], cache: Path | None, run: Path | None = None) -> np.ndarray:
    """:func:`cell_texture` of each cell (and its ``_Mask`` image), read from / added to ``cache``; with
    ``run``, files with more than 8 bits are read at that run's ``data.bit_depth`` (:func:`ablation.read_cells`)."""
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            known = dict(zip(z["keys"].tolist(), z["x"], strict=True))
    depth = "" if run is None else f":{run_data(run).get('bit_depth', 'default')}"
    key = [f"{Path(p).name}:{Path(p).stat().st_size}{depth}" for p in paths]
    todo = [i for i, k in enumerate(key) if k not in known]
    if todo:
        print(f"describing {len(todo)} cells …", file=sys.stderr)
        with ThreadPoolExecutor(2) as pool:
            new = list(pool.map(lambda c: cell_texture(*c), read_cells([paths[i] for i in todo], run)))
        known.update({key[i]: f for i, f in zip(todo, new, strict=True)})
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, keys=np.array(list(known)), x=np.stack(list(known.values())))
    return np.stack([known[k] for k in key])


def svm(probability: bool = False):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    base = SVC(C=10.0, gamma="scale", class_weight="balanced")
    return make_pipeline(
        StandardScaler(), CalibratedClassifierCV(base, ensemble=False) if probability else base
    )


def _split(run: Path, root: Path, split: str, cache: Path | None):
    """Descriptors, class names and specimen groups of a run's ``split`` cells."""
    paths, labels, groups = split_cells(run, root, split)
    return descriptors(paths, cache, run), labels, np.array(groups)


def fusion(runs: list[Path], root: Path, cache: Path | None) -> None:
    from groups import run_probabilities

    print("| run | network | SVM | " + " | ".join(f"fused, SVM weight {w}" for w in WEIGHTS[1:-1]) + " |")
    print("|---|---|---|" + "---|" * (len(WEIGHTS) - 2))
    rows = []
    for run in runs:
        xt, lt, _ = _split(run, root, "train", cache)
        paths, lv, prob, order, _ = run_probabilities(run, root, "val")  # the run's validation cells
        xv = descriptors(paths, cache, run)
        y = np.array([order.index(c) for c in lv])
        ps = svm(True).fit(xt, np.array([order.index(c) for c in lt])).predict_proba(xv)
        scores = [
            mca(y, ((1 - w) * np.log(prob + 1e-6) + w * np.log(ps + 1e-6)).argmax(1), len(order))
            for w in WEIGHTS
        ]
        rows.append(scores)
        print(
            f"| {run} | {scores[0]:.3f} | {scores[-1]:.3f} | "
            + " | ".join(f"{s:.3f}" for s in scores[1:-1])
            + " |"
        )
    mean = np.mean(rows, axis=0)
    print(
        f"| **mean of {len(rows)}** | **{mean[0]:.3f}** | **{mean[-1]:.3f}** | "
        + " | ".join(f"**{s:.3f}**" for s in mean[1:-1])
        + " |"
    )


def curve(runs: list[Path], root: Path, cache: Path | None, repeats: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores: dict[int, list[float]] = {}
    for run in runs:
        xt, lt, gt = _split(run, root, "train", cache)
        xv, lv, _ = _split(run, root, "val", cache)
        classes = sorted(set(lt))
        yt, yv = np.array([classes.index(c) for c in lt]), np.array([classes.index(c) for c in lv])
        per_class = {c: sorted(set(gt[yt == k])) for k, c in enumerate(classes)}
        most = max(len(g) for g in per_class.values())
        for n in range(1, most + 1):
            for _ in range(repeats if n < most else 1):
                keep = np.isin(gt, [g for gs in per_class.values() for g in rng.permutation(gs)[:n]])
                pred = svm().fit(xt[keep], yt[keep]).predict(xv)
                scores.setdefault(n, []).append(mca(yv, pred, len(classes)))
        print(
            f"{run}: training groups per class " + ", ".join(f"{c} {len(g)}" for c, g in per_class.items()),
            file=sys.stderr,
        )
    print("| specimen groups per class in training (at most) | val MCA, mean ± sd | fits |")
    print("|---|---|---|")
    for n, s in sorted(scores.items()):
        sd = f"{np.std(s, ddof=1):.3f}" if len(s) > 1 else "–"
        print(f"| {n} | {np.mean(s):.3f} ± {sd} | {len(s)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=["fusion", "curve"])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="run folders (their split_manifest.csv and classes.csv)"
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--cache", type=Path, default=Path("outputs/texture_features.npz"))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.check == "fusion":
        fusion(args.runs, args.root.resolve(), args.cache)
    else:
        curve(args.runs, args.root.resolve(), args.cache, args.repeats, args.seed)


if __name__ == "__main__":
    main()
