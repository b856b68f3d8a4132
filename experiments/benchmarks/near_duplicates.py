"""Near-duplicate grouping on the real I3A 2014 cells: time, sets found, transforms, label conflicts.

    ANA_SHARED=/work/shared python experiments/benchmarks/near_duplicates.py [n_images]

Prints one table: images, sha256 time, first near-duplicate pass (decode + hash), second pass (hashes
cached by sha256), sets found, their transforms and hash distances.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ana_lightning.data import splits
from ana_lightning.data.images import sha256_file
from ana_lightning.data.records import ImageRecord
from ana_lightning.data.splits import near_duplicate_sets


def main() -> None:
    shared = Path(os.environ.get("ANA_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    root = shared / "data" / "i3a2014-task1" / "training"
    if not root.is_dir():
        sys.exit(f"no I3A data at {root}; set ANA_SHARED")
    files = sorted(p for p in root.glob("*.png") if "_Mask" not in p.name)
    files = files[: int(sys.argv[1])] if len(sys.argv) > 1 else files
    t0 = time.perf_counter()
    recs = [ImageRecord(str(p), ("?",), None, sha256_file(p)) for p in files]
    t1 = time.perf_counter()
    cache = Path(tempfile.mkdtemp())
    sets = near_duplicate_sets(recs, cache_dir=cache)
    t2 = time.perf_counter()
    near_duplicate_sets(recs, cache_dir=cache)
    t3 = time.perf_counter()
    splits._hash_cache.clear()  # as a new process starts: the hashes come from the disk cache
    near_duplicate_sets(recs, cache_dir=cache)
    t4 = time.perf_counter()
    print("| images | sha256 s | near-dup s (first) | (in memory) | (disk cache) | sets | images in sets |")
    print("|---|---|---|---|---|---|---|")
    n_in = sum(len(s.records) for s in sets)
    print(
        f"| {len(files)} | {t1 - t0:.1f} | {t2 - t1:.1f} | {t3 - t2:.1f} | {t4 - t3:.1f} | {len(sets)} | {n_in} |"
    )
    print("transforms:", dict(Counter(t for s in sets for t in s.transforms[1:])))
    print("hash distances:", dict(Counter(d for s in sets for d in s.distances[1:])))
    for s in sets:
        print("  ", " = ".join(Path(r.path).name for r in s.records))


if __name__ == "__main__":
    main()
