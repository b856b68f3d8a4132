"""A bag of local rotation-invariant patterns (textons) with an SVM, alone and fused with a cross-validation's
fold networks, on the folds' validation cells (round 19, pre-registered in results/round19/).

    python experiments/i3a_cells/local_patterns.py outputs/cv_base [--out table.md] [--split val]

The kind of model behind the published figure on unseen I3A specimens (the ICPR 2014 winner: local
patterns encoded into histograms, SVMs), next to the recipe's network. No network is trained. For each
fold job of the sweep (or each run folder given):

- cells are read as the run's training read them (:func:`ablation.read_cells`), re-cut around the mask at
  the run's ``data.crop_fraction`` and resized to 64 × 64 as the network sees them; intensity is the max over
  the channels, background-subtracted (median outside the mask) and scaled by the mask's 99th percentile;
- every pixel gets 16 rotation-invariant numbers (``skimage.feature.multiscale_basic_features``: smoothed
  intensity, gradient magnitude and the two Hessian eigenvalues at 4 scales, σ 0.5…4), standardised on the
  fold's training pixels;
- a codebook of 256 textons (k-means on 200,000 pixels of the fold's **training** cells) assigns each pixel
  a texton; a cell is described by three texton histograms — the mask's core, its rim, and a 4 px band
  outside it (Golgi and nuclear-membrane signal lie at or beside the edge) — L1-normalised and
  square-rooted (768 numbers);
- an RBF SVM (``texture_check.svm``, class-balanced, calibrated probabilities) trained on the fold's
  training cells reads its ``--split`` cells; fused with the fold's network by the mean of the two
  log-probabilities (weight 0.5; other weights printed for reading only).

The table pairs, by fold: the network alone, the bag alone, the fusion, and the difference fusion − network
with its 95 % t-interval and in how many folds the fusion is higher.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import mca, read_cells, run_data, split_cells  # noqa: E402
from texture_check import normalised_intensity  # noqa: E402
from tta_check import run_dirs, run_root  # noqa: E402

SIZE = 64
K = 256
SAMPLE = 200_000
FUSION_WEIGHT = 0.5
READING_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6)
REGIONS = ("core", "rim", "band")


def prepare(image: np.ndarray, mask: np.ndarray, fraction: float | None) -> tuple[np.ndarray, np.ndarray]:
    """A cell as the network sees it, in one grey channel: re-cut at ``fraction`` (None: as it is), resized to
    64 × 64 and normalised as the network does (:func:`texture_check.normalised_intensity`)."""
    from PIL import Image

    from ana_lightning.data.masks import recrop

    if fraction:
        image, mask = recrop(image, mask, float(fraction))
    x = (image.max(axis=2) if image.ndim == 3 else image).astype(np.float32)
    m = ((mask.max(axis=2) if mask.ndim == 3 else mask) > 0).astype(np.uint8)
    x = np.asarray(Image.fromarray(x).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
    m = np.asarray(Image.fromarray(m * 255).resize((SIZE, SIZE), Image.NEAREST)) > 0
    return normalised_intensity(x, m, f"a bag of patterns at {SIZE} px"), m


def regions(mask: np.ndarray) -> np.ndarray:
    """Per pixel: 0 elsewhere, 1 the mask's core (distance to its edge > 1/3 of the largest), 2 its rim,
    3 a band 4 px wide outside it."""
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(mask)
    out = np.zeros(mask.shape, np.uint8)
    out[ndi.binary_dilation(mask, iterations=4) & ~mask] = 3
    out[mask] = 2
    out[dist > dist.max() / 3] = 1
    return out


def pixel_features(intensity: np.ndarray) -> np.ndarray:
    """H×W×16 rotation-invariant numbers per pixel (4 scales × intensity, edges, 2 Hessian eigenvalues)."""
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(
        intensity, intensity=True, edges=True, texture=True, sigma_min=0.5, sigma_max=4, num_sigma=4
    ).astype(np.float32)


def describe_pixels(cells, fraction) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each (image, mask) cell: its region pixels' features (n×16, float16) and their region codes."""
    feats, codes = [], []
    for image, mask in cells:
        x, m = prepare(image, mask, fraction)
        r = regions(m)
        keep = r > 0
        feats.append(pixel_features(x)[keep].astype(np.float16))
        codes.append(r[keep])
    return feats, codes


class Textons:
    """Standardisation and a k-means codebook fitted on training cells' pixels; a cell's histograms."""

    def __init__(self, k: int = K, sample: int = SAMPLE, seed: int = 0):
        self.k, self.sample, self.seed = k, sample, seed

    def fit(self, feats: list[np.ndarray]) -> Textons:
        from sklearn.cluster import MiniBatchKMeans

        rng = np.random.default_rng(self.seed)
        every = np.concatenate(feats).astype(np.float32)
        self.mean, self.sd = every.mean(0), every.std(0) + 1e-6
        pick = rng.choice(len(every), size=min(self.sample, len(every)), replace=False)
        km = MiniBatchKMeans(self.k, random_state=self.seed, n_init=3, batch_size=4096)
        self.centers = km.fit((every[pick] - self.mean) / self.sd).cluster_centers_.astype(np.float32)
        self._c2 = (self.centers**2).sum(1)
        return self

    def assign(self, f: np.ndarray) -> np.ndarray:
        z = (f.astype(np.float32) - self.mean) / self.sd
        return (self._c2[None, :] - 2 * z @ self.centers.T).argmin(1)

    def histograms(self, feats: list[np.ndarray], codes: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(feats), len(REGIONS) * self.k), np.float32)
        for i, (f, c) in enumerate(zip(feats, codes, strict=True)):
            t = self.assign(f)
            for j in range(len(REGIONS)):
                h = np.bincount(t[c == j + 1], minlength=self.k).astype(np.float32)
                out[i, j * self.k : (j + 1) * self.k] = np.sqrt(h / max(h.sum(), 1.0))
        return out


def check_fold(run: Path, root: Path, split: str, pixels: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """The network, the bag and their fusion on ``run``'s ``split`` cells; ``pixels`` caches described cells."""
    from groups import run_probabilities
    from texture_check import svm

    fraction = run_data(run).get("crop_fraction")
    tr_paths, tr_labels, _ = split_cells(run, root, "train")
    paths, labels, prob, order, _ = run_probabilities(run, root, split)
    todo = [p for p in tr_paths + paths if p not in pixels]
    if todo:
        t0 = time.perf_counter()
        feats, codes = describe_pixels(read_cells(todo, run), fraction)
        pixels.update(zip(todo, zip(feats, codes, strict=True), strict=True))
        print(f"described {len(todo)} cells in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    t0 = time.perf_counter()
    textons = Textons().fit([pixels[p][0] for p in tr_paths])
    xt = textons.histograms([pixels[p][0] for p in tr_paths], [pixels[p][1] for p in tr_paths])
    xv = textons.histograms([pixels[p][0] for p in paths], [pixels[p][1] for p in paths])
    yt = np.array([order.index(c) for c in tr_labels])
    y = np.array([order.index(c) for c in labels])
    ps = svm(True).fit(xt, yt).predict_proba(xv)
    print(f"{run}: codebook, histograms and SVM in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    n = len(order)

    def fused(w: float) -> float:
        return mca(y, ((1 - w) * np.log(prob + 1e-6) + w * np.log(ps + 1e-6)).argmax(1), n)

    def recall(pred: np.ndarray) -> dict[str, float]:
        return {c: float(np.mean(pred[y == k] == k)) for k, c in enumerate(order) if np.any(y == k)}

    return {
        "run": str(run),
        "cells": len(y),
        "network": mca(y, prob.argmax(1), n),
        "bag": mca(y, ps.argmax(1), n),
        "fused": fused(FUSION_WEIGHT),
        "reading": {w: fused(w) for w in READING_WEIGHTS},
        "bag_recall": recall(ps.argmax(1)),
        "network_recall": recall(prob.argmax(1)),
    }


def table(rows: list[dict], split: str) -> str:
    from ana_lightning.stats import t_interval

    d = np.array([r["fused"] - r["network"] for r in rows])
    lines = [
        f"Bag of local patterns (256 textons × core/rim/band, RBF SVM) on each fold's {split} cells, paired by fold",
        "",
        f"| fold | cells | network | bag of patterns | fused (weight {FUSION_WEIGHT}) | fused − network |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {Path(r['run']).name} | {r['cells']} | {r['network']:.3f} | {r['bag']:.3f} | {r['fused']:.3f} "
            f"| {r['fused'] - r['network']:+.3f} |"
        )
    lo, hi = t_interval(d)
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if len(d) > 1 else ""
    mean = {k: np.mean([r[k] for r in rows]) for k in ("network", "bag", "fused")}
    lines.append(
        f"| **mean** | | {mean['network']:.3f} | {mean['bag']:.3f} | {mean['fused']:.3f} "
        f"| **{d.mean():+.3f}**{interval}; higher in {(d > 0).sum()} of {len(d)} |"
    )
    lines += [
        "",
        "Fused at other weights of the bag (for reading, not for choosing): "
        + ", ".join(f"{w}: {np.mean([r['reading'][w] for r in rows]):.3f}" for w in READING_WEIGHTS),
        "",
        "Recall per class, mean over the folds (network / bag of patterns): "
        + ", ".join(
            f"{c} {np.mean([r['network_recall'][c] for r in rows if c in r['network_recall']]):.2f} / "
            f"{np.mean([r['bag_recall'][c] for r in rows if c in r['bag_recall']]):.2f}"
            for c in rows[0]["bag_recall"]
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run folders, or sweep folders (their numbered jobs)")
    ap.add_argument("--root", type=Path, help="the cells' folder (default: each run's own data.root)")
    ap.add_argument("--split", default="val", choices=["val", "test"], help="choose on val; test once chosen")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    pixels: dict = {}
    rows = [check_fold(run, args.root or run_root(run), args.split, pixels) for run in run_dirs(args.runs)]
    text = table(rows, args.split)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
