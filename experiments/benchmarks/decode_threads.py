"""A run's data setup on the I3A cells from cold caches: decoding in threads (``ANA_IO_THREADS``) or in worker
processes (``ANA_IO_PROCESSES``).

    python experiments/benchmarks/decode_threads.py --root ../shared/data/i3a2014-task1/training [--rows t1,t2,p2,default]

Before its first batch, ``ana-train experiment=i3a_cells`` reads every cell several times:
- the bad-file scan (decode + sha256);
- the per-cell medians that cut the automatic specimen groups;
- the near-duplicate hashes;
- the cells themselves, decoded, masked, re-framed and resized into memory.

On a machine that never saw the files (a fresh GPU node, a lab's first run), none of that is cached.
Each row runs that setup in a fresh process with an empty ``ANA_CACHE_DIR``. It gives the wall time of
``setup`` (scan, medians, hashes, split) and of building the three splits' cached cells, and their ratio
to the first row, which is measured in the same run.

Rows: ``t<N>`` decodes in N threads with processes off (``t1`` is how round 26 ran with one thread, ``t2``
its default), ``p<N>`` in N worker processes (:func:`ana_lightning.data.images.decode_map`; passes under
512 items stay in threads), ``default`` sets neither variable: worker processes, one per CPU up to 8.
Run it alone on a quiet machine: the script prints ``os.getloadavg()`` before and after.
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

    from ana_lightning.data.images import decode_processes, decode_threads
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
    row = {
        "threads": decode_threads(),
        "processes": decode_processes(),
        "setup_s": t1 - t0,
        "cells_s": t2 - t1,
    }
    print(json.dumps({**row, "cells": cells}))


def parse_row(row: str) -> dict[str, str]:
    """A row of the table: ``t<N>`` (N threads, processes off), ``p<N>`` (N worker processes) or ``default``
    (neither variable set): the environment it sets."""
    if row == "default":
        return {}
    kind, n = row[:1], row[1:]
    if kind not in ("t", "p") or not (n.isdigit() and int(n) >= 1):
        raise SystemExit(f"--rows: {row!r} is none of t<N> (threads), p<N> (processes) or 'default'")
    return {"ANA_IO_THREADS": n, "ANA_IO_PROCESSES": "1"} if kind == "t" else {"ANA_IO_PROCESSES": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the I3A training folder")
    ap.add_argument(
        "--rows",
        default="t1,t2,p2,default",
        help="rows: t<N> (N threads, processes off), p<N> (N worker processes), default; the first is the baseline",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (args.root / "gt_training.csv").is_file():
        raise SystemExit(f"{args.root}: no gt_training.csv here; --root is the I3A training folder")
    if args.child:
        child(args.root)
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    settings = {r: parse_row(r) for r in rows}
    load_before = os.getloadavg()
    results = []
    for r in rows:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "ANA_CACHE_DIR": cache, "NO_ALBUMENTATIONS_UPDATE": "1"}
            env.pop("ANA_IO_THREADS", None)
            env.pop("ANA_IO_PROCESSES", None)
            env.update(settings[r])
            out = subprocess.run(
                [sys.executable, __file__, "--root", str(args.root), "--child"],
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"row {r}: the setup failed:\n{out.stderr[-2000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["row"] = r
            results.append(res)
            print(f"{r}: {res}", file=sys.stderr, flush=True)
    base = results[0]["setup_s"] + results[0]["cells_s"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\nI3A cells at {args.root}, {results[0]['cells']} cells; {cpus} CPUs; empty caches for every row; "
        f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| row | decoding in | setup (scan, medians, hashes, split), s | cached cells, s | total, s | vs first row |"
    )
    print("|---|---|---|---|---|---|")
    for res in results:
        total = res["setup_s"] + res["cells_s"]
        how = f"{res['processes']} processes" if res["processes"] > 1 else f"{res['threads']} threads"
        print(
            f"| {res['row']} | {how} | {res['setup_s']:.1f} | {res['cells_s']:.1f} | {total:.1f} | "
            f"{base / total:.2f}× |"
        )


if __name__ == "__main__":
    main()
