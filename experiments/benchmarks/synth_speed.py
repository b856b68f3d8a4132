"""Synthetic HEp-2 field rendering speed on one CPU core, per ICAP level-2 group and overall.

Renders ``--n`` fields per code (all 32 codes, round-robin so that load spikes hit every code alike)
at ``--size`` px with OpenCV limited to one thread, and prints images per second measured two ways:
wall clock, and the CPU time of this process (which is what "one core" means when the machine is
shared with other jobs). The requirement for the simulator is >= 100 images/s at 256 px.

    python experiments/benchmarks/synth_speed.py                 # 256 px, 20 fields per code
    python experiments/benchmarks/synth_speed.py --size 512 --n 10 --dapi

Needs only numpy and OpenCV.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from ana_lightning.data.synthetic import CODES, LEVEL2, render_field  # noqa: E402

REQUIRED = 100.0  # images/s at 256 px on one core


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n", type=int, default=20, help="fields per code (default 20)")
    p.add_argument("--dapi", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    cv2.setNumThreads(1)
    rng = np.random.default_rng(a.seed)
    for code in CODES:  # warm-up: texture banks, imports, caches
        render_field(code, rng, size=a.size, dapi=a.dapi)

    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    for _ in range(a.n):
        for code in CODES:
            t0, c0 = time.perf_counter(), time.process_time()
            render_field(code, rng, size=a.size, dapi=a.dapi)
            wall[code] += time.perf_counter() - t0
            cpu[code] += time.process_time() - c0

    groups: dict[str, list[str]] = defaultdict(list)
    for code in CODES:
        groups[LEVEL2[code]].append(code)

    print(
        f"Synthetic field rendering, {a.size}x{a.size}{' + DAPI' if a.dapi else ''}, "
        f"{a.n} fields per code, cv2.setNumThreads(1), OpenCV {cv2.__version__}"
    )
    hdr = f"{'level-2 group':<30} {'codes':<22} {'images':>6} {'img/s (CPU)':>12} {'img/s (wall)':>13}"
    print(hdr)
    print("-" * len(hdr))
    for g, codes in groups.items():
        n = a.n * len(codes)
        c = sum(cpu[x] for x in codes)
        w = sum(wall[x] for x in codes)
        names = ",".join(x.replace("AC-", "") for x in codes)
        print(f"{g:<30} {'AC-' + names:<22} {n:>6} {n / c:>12.1f} {n / w:>13.1f}")
    n = a.n * len(CODES)
    c_all, w_all = sum(cpu.values()), sum(wall.values())
    print("-" * len(hdr))
    print(f"{'overall':<30} {'AC-0..31':<22} {n:>6} {n / c_all:>12.1f} {n / w_all:>13.1f}")
    slowest = max(CODES, key=lambda x: cpu[x])
    print(f"slowest code: {slowest} ({1000 * cpu[slowest] / a.n:.2f} ms CPU per field)")
    if a.size == 256:
        ok = n / c_all >= REQUIRED
        print(f"requirement >= {REQUIRED:.0f} images/s (CPU time, one core): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
