"""Augmentation throughput per policy and for the slow transforms, on one CPU core.

    python experiments/benchmarks/augment_speed.py [--size 224] [--n 300]

Prints images per second (median of 3 rounds) on one synthetic HEp-2 field, and each row's cost
relative to the `basic` policy measured in the same run. ElasticTransform is the one to watch: the
`strong` and `fluorescence` policies draw it for a small share of images only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ana_lightning.data.augment import POLICIES, SignalIntensity, SignalNoise, load_policy  # noqa: E402


def _field(size: int) -> np.ndarray:
    try:
        from ana_lightning.data.synthetic import render_field

        return render_field("AC-4", np.random.default_rng(0), size=size)
    except Exception:  # noqa: BLE001 - the simulator is optional here
        rng = np.random.default_rng(0)
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 1] = rng.integers(0, 255, (size, size))
        return img


def _rate(pipe: A.Compose, img: np.ndarray, n: int) -> float:
    pipe(image=img)
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            pipe(image=img)
        rounds.append(n / (time.perf_counter() - t0))
    return statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=300, help="images per round")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    img = _field(args.size)
    rows = [(f"policy {name}", A.Compose(load_policy(name), seed=0)) for name in POLICIES]
    always = {
        "ElasticTransform": A.ElasticTransform(alpha=30, sigma=6, p=1),
        "ElasticTransform approximate": A.ElasticTransform(alpha=30, sigma=6, approximate=True, p=1),
        "GridDistortion": A.GridDistortion(num_steps=5, distort_limit=0.2, p=1),
        "Affine": A.Affine(scale=(0.85, 1.15), rotate=(-45, 45), p=1),
        "GaussNoise": A.GaussNoise(std_range=(0.01, 0.05), p=1),
        "SignalIntensity": SignalIntensity(p=1),
        "SignalNoise": SignalNoise(p=1),
    }
    rows += [(f"{name} (p=1)", A.Compose([t], seed=0)) for name, t in always.items()]
    rates = {name: _rate(pipe, img, args.n) for name, pipe in rows}
    base = rates["policy basic"]
    print(f"# augmentation throughput, {args.size}x{args.size} uint8 RGB, 1 core (cv2 threads = 1)\n")
    print("| transform | images/s | time vs basic policy |")
    print("|---|---:|---:|")
    for name, r in rates.items():
        print(f"| {name} | {r:,.0f} | {base / r:.2f}x |")


if __name__ == "__main__":
    main()
