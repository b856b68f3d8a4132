"""The bad-file scan at the start of a run (decode + sha256 of every file), without and with its cache.

    ANA_SHARED=/work/shared python experiments/benchmarks/scan_cache.py [repeats]

On the real I3A 2014 cells and their masks (as `data.reader=i3a2014` scans them), three ways, each
`repeats` times (median): the scan with no cache (every file decoded, as before the cache), the first
scan into an empty cache (decodes and writes it), and a scan of unchanged files (read from the cache).
Prints one table with the ratio of each to the uncached scan. Run it alone on a quiet machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ana_lightning.data import records
from ana_lightning.data.records import scan_images


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    shared = Path(os.environ.get("ANA_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    root = shared / "data" / "i3a2014-task1" / "training"
    if not root.is_dir():
        sys.exit(f"no I3A data at {root}; set ANA_SHARED")
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    files = sorted(p for p in root.glob("*.png"))
    masks = [str(p) for p in files if "_mask" in p.stem.lower()]
    scan_images(files, masks=masks, cache=False)  # the OS page cache warm for every row alike
    plain, first, cached = [], [], []
    for _ in range(repeats):
        folder = Path(tempfile.mkdtemp())
        plain.append(_timed(lambda: scan_images(files, masks=masks, cache=False)))
        first.append(_timed(lambda f=folder: scan_images(files, masks=masks, cache_dir=f)))
        cached.append(_timed(lambda f=folder: scan_images(files, masks=masks, cache_dir=f)))
    same = scan_images(files, masks=masks, cache=False) == scan_images(files, masks=masks, cache_dir=folder)
    base = statistics.median(plain)
    print(
        f"{len(files)} files ({len(masks)} masks) in {root}; median of {repeats}; racy window {records._SCAN_RACY_S} s"
    )
    print("| scan | seconds | ratio to no cache |")
    print("|---|---|---|")
    for name, xs in (
        ("no cache (every file decoded)", plain),
        ("first, into an empty cache", first),
        ("again, files unchanged", cached),
    ):
        m = statistics.median(xs)
        print(f"| {name} | {m:.2f} | {m / base:.3f} |")
    print(f"the cached scan returns the same digests and sizes: {same}")


if __name__ == "__main__":
    main()
