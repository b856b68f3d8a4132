"""``BatchAugment`` (ours, ``augmentation=gpu``) against kornia.augmentation doing the same thing.

    nice -n 10 python experiments/benchmarks/batch_augment_vs_kornia.py [--sizes 32 128 256] [--px 128] [--reps 15] [--threads 1]

Needs ``pip install kornia`` (not a dependency of the package: see the decision in
:mod:`ana_lightning.data.batch_augment`).

Both pipelines get the same normalised ``N×3×px×px`` batches of a green fluorescence-like field and
the shipped settings of ``conf/augmentation/gpu.yaml`` (flips, 90° rotations, brightness 0.2, contrast
0.2, intensity on half the images). kornia's closest equivalent:

- ``RandomHorizontalFlip(p=0.5)``, ``RandomVerticalFlip(p=0.5)``, ``RandomRotation90(times=(0, 3), p=1)``;
- ``Denormalize`` → ``ColorJitter(brightness=0.2, contrast=0.2, p=0.5)`` (torchvision's multiplicative
  brightness and contrast about the grey mean) → ``Normalize``.

Printed: CPU milliseconds per batch (median of ``--reps`` rounds, both measured in this one run,
interleaved call by call), the ratio kornia / ours, the load average while it ran; then output checks: is every
geometric output an exact symmetry of its input (max abs difference to the nearest of the 8), how
evenly the 8 symmetries are drawn, and the statistics of the intensity change (per-image gain of
the mean signal, and how much signal leaks into the empty red/blue channels).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ana_lightning.data.batch_augment import BatchAugment

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def kornia_pipelines(brightness: float, contrast: float, p: float):
    import kornia.augmentation as K

    geometry = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5), K.RandomRotation90(times=(0, 3), p=1.0)
    )
    intensity = torch.nn.Sequential(
        K.Denormalize(mean=torch.tensor(MEAN), std=torch.tensor(STD)),
        K.ColorJitter(brightness=brightness, contrast=contrast, p=p),
        K.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD)),
    )
    both = torch.nn.Sequential(geometry, intensity)
    return geometry, intensity, both


def field_batch(n: int, px: int, seed: int = 0) -> torch.Tensor:
    """Green speckled 'fields' in [0, 1], normalised like the loader does."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.zeros(n, 3, px, px)
    raw[:, 1] = (torch.rand(n, px, px, generator=g) * 0.6 + 0.2) * torch.rand(n, 1, 1, generator=g)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (raw - m) / s


def median_ms(fns: list, x: torch.Tensor, reps: int) -> list[float]:
    """Median milliseconds of each of ``fns`` on ``x``, the calls interleaved (a, b, a, b, …) so that a
    change in the machine's load hits both alike."""
    for fn in fns:
        fn(x)  # warm up
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn(x)
            out[i].append((time.perf_counter() - t) * 1e3)
    return [statistics.median(o) for o in out]


def dihedral(img: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(f, k, dims=(-2, -1)) for f in (img, img.flip(-1)) for k in range(4)]


def symmetry_check(fn, n: int, px: int) -> tuple[float, list[int]]:
    """(largest difference to the nearest exact symmetry, counts of the 8 symmetries)."""
    torch.manual_seed(1)
    x = torch.randn(n, 3, px, px)
    y = fn(x)
    worst, counts = 0.0, [0] * 8
    for a, b in zip(x, y, strict=True):
        d = [float((t - b).abs().max()) for t in dihedral(a)]
        k = min(range(8), key=d.__getitem__)
        worst, counts[k] = max(worst, d[k]), counts[k] + 1
    return worst, counts


def intensity_stats(fn, n: int, px: int) -> dict[str, float]:
    torch.manual_seed(2)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = field_batch(n, px, seed=3)
    raw, out = (x * s + m).clamp(0, 1), (fn(x) * s + m).clamp(0, 1)
    gain = out[:, 1].mean((1, 2)) / raw[:, 1].mean((1, 2)).clamp_min(1e-6)
    changed = (gain - 1).abs() > 1e-4
    leak = out[:, [0, 2]].mean((1, 2, 3))
    q = torch.quantile(gain, torch.tensor([0.05, 0.5, 0.95]))
    return {
        "changed": float(changed.float().mean()),
        "gain_p5": float(q[0]),
        "gain_p50": float(q[1]),
        "gain_p95": float(q[2]),
        "red_blue_mean": float(leak.mean()),
        "red_blue_max": float(leak.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--px", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: one core, least disturbed by load)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import kornia

    ours_cfg = dict(flips=True, rot90=True, brightness=0.2, contrast=0.2, gamma=0.0, p_intensity=0.5)
    ours = BatchAugment(**ours_cfg)
    ours_geo = BatchAugment(flips=True, rot90=True)
    ours_int = BatchAugment(flips=False, rot90=False, brightness=0.2, contrast=0.2, p_intensity=0.5)
    k_geo, k_int, k_both = kornia_pipelines(0.2, 0.2, 0.5)

    def run(f):
        return lambda x: f(x, MEAN, STD)

    load0 = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, kornia {kornia.__version__}, {torch.get_num_threads()} threads, "
        f"{args.px} px, median of {args.reps}, CPU"
    )
    print(f"{'batch':>5} | {'step':<9} | {'ours ms':>8} | {'kornia ms':>9} | {'kornia/ours':>11}")
    print("-" * 55)
    with torch.no_grad():
        for n in args.sizes:
            x = field_batch(n, args.px)
            for step, a, b in (
                ("geometry", run(ours_geo), k_geo),
                ("intensity", run(ours_int), k_int),
                ("both", run(ours), k_both),
            ):
                ta, tb = median_ms([a, b], x, args.reps)
                print(f"{n:>5} | {step:<9} | {ta:>8.2f} | {tb:>9.2f} | {tb / ta:>10.2f}x")
    load1 = os.getloadavg()[0]
    print(f"load average (1 min) at start / end: {load0:.1f} / {load1:.1f} on {os.cpu_count()} CPUs")

    with torch.no_grad():
        print(
            "\nGeometry (4096 images of 16 px): largest |difference| to the nearest exact symmetry; draws of the 8"
        )
        for name, f in (("ours", run(ours_geo)), ("kornia", k_geo)):
            worst, counts = symmetry_check(f, 4096, 16)
            print(f"  {name:<7} max diff {worst:.2e}  counts {counts}")
        print(
            "\nIntensity (4096 fields, green only): share changed, gain of the green mean (p5/p50/p95), "
            "red+blue mean after (0 before)"
        )
        for name, f in (("ours", run(ours_int)), ("kornia", k_int)):
            st = intensity_stats(f, 4096, 16)
            print(
                f"  {name:<7} changed {st['changed']:.2f}  gain {st['gain_p5']:.3f}/{st['gain_p50']:.3f}/"
                f"{st['gain_p95']:.3f}  red+blue mean {st['red_blue_mean']:.4f} (max {st['red_blue_max']:.4f})"
            )


if __name__ == "__main__":
    main()
