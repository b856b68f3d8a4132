"""A run's data setup on the I3A cells from cold caches, by the number of decode threads (``ANA_IO_THREADS``).

    python experiments/benchmarks/decode_threads.py --root ../shared/data/i3a2014-task1/training [--threads 1,2,4,default]

Before its first batch, ``ana-train experiment=i3a_cells`` reads every cell several times:
- the bad-file scan (decode + sha256);
- the per-cell medians that cut the automatic specimen groups;
- the near-duplicate hashes;
- the cells themselves, decoded, masked, re-framed and resized into memory.

On a machine that never saw the files (a fresh GPU node, a lab's first run), none of that is cached.
Each row runs that setup in a fresh process with an empty ``ANA_CACHE_DIR``. It gives the wall time of
``setup`` (scan, medians, hashes, split) and of building the three splits' cached cells, and their ratio
to the first row, which is measured in the same run.

``default`` is :func:`ana_lightning.data.images.decode_threads` without the variable: 2 threads, 1 on one
CPU. Before round 26, the medians and the cached cells used 4 threads, and the scan and the hashes used
min(8, CPUs + 2), which is also 4 on a 2-core machine: the row ``4`` is the old setting here. Run it alone on a quiet machine: the script prints
``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "i3a2014-task1" / "training"


def child(root: Path) -> None:
    """One cold setup in this process; prints one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hydra.utils import instantiate

    from ana_lightning.data.images import decode_threads
    from ana_lightning.utils import compose_config

    cfg = compose_config(
        "train",
        [
            "experiment=i3a_cells",
            "data.split_fractions=[0.6,0.2,0.2]",
            f"data.root={root}",
            f"paths.output_dir={tempfile.mkdtemp()}",
        ],
    )
    dm = instantiate(cfg.data, train_augment=None)
    t0 = time.perf_counter()
    dm.setup("fit")
    t1 = time.perf_counter()
    cells = sum(len(dm.dataset(s)) for s in ("train", "val", "test"))
    t2 = time.perf_counter()
    print(json.dumps({"threads": decode_threads(), "setup_s": t1 - t0, "cells_s": t2 - t1, "cells": cells}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the I3A training folder")
    ap.add_argument("--threads", default="1,2,4,default", help="rows: thread counts, or 'default'")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (args.root / "gt_training.csv").is_file():
        raise SystemExit(f"{args.root}: no gt_training.csv here; --root is the I3A training folder")
    if args.child:
        child(args.root)
        return
    rows = [r.strip() for r in args.threads.split(",") if r.strip()]
    for r in rows:
        if r != "default" and not (r.isdigit() and int(r) >= 1):
            raise SystemExit(f"--threads: {r!r} is neither a whole number ≥ 1 nor 'default'")
    load_before = os.getloadavg()
    results = []
    for r in rows:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "ANA_CACHE_DIR": cache, "NO_ALBUMENTATIONS_UPDATE": "1"}
            env.pop("ANA_IO_THREADS", None)
            if r != "default":
                env["ANA_IO_THREADS"] = r
            out = subprocess.run(
                [sys.executable, __file__, "--root", str(args.root), "--child"],
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"threads={r}: the setup failed:\n{out.stderr[-2000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["row"] = r
            results.append(res)
            print(f"threads={r}: {res}", file=sys.stderr, flush=True)
    base = results[0]["setup_s"] + results[0]["cells_s"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\nI3A cells at {args.root}, {results[0]['cells']} cells; {cpus} CPUs; empty caches for every row; "
        f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| decode threads | setup (scan, medians, hashes, split), s | cached cells, s | total, s | vs first row |"
    )
    print("|---|---|---|---|---|")
    for res in results:
        total = res["setup_s"] + res["cells_s"]
        label = f"default ({res['threads']})" if res["row"] == "default" else str(res["threads"])
        print(
            f"| {label} | {res['setup_s']:.1f} | {res['cells_s']:.1f} | {total:.1f} | {base / total:.2f}× |"
        )


if __name__ == "__main__":
    main()
