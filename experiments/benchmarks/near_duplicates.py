import sys, time, os
from pathlib import Path
from ana_lightning.data.records import ImageRecord
from ana_lightning.data.splits import near_duplicate_sets, _hash_cache
from ana_lightning.data.images import sha256_file
root = Path("/work/shared/data/i3a2014-task1")
files = sorted(p for p in root.rglob("*.png") if "_Mask" not in p.name)
n = int(sys.argv[1]) if len(sys.argv) > 1 else len(files)
files = files[:n]
t = time.time()
recs = [ImageRecord(str(p), (p.parent.name,), None, sha256_file(p)) for p in files]
t1 = time.time()
sets = near_duplicate_sets(recs, workers=2)
t2 = time.time()
print(f"{len(files)} images: sha {t1-t:.1f}s, near-dup {t2-t1:.1f}s; {len(sets)} sets, sizes {sorted(len(s.records) for s in sets)[-5:]}")
from collections import Counter
print(Counter(t for s in sets for t in s.transforms[1:]))
print("conflicting:", sum(s.conflicting for s in sets))
print(Counter(d for s in sets for d in s.distances[1:]))
import hashlib
bytes_same = sum(len(set(r.sha256 for r in s.records)) < len(s.records) for s in sets)
print("sets with byte-identical members:", bytes_same)
t3=time.time(); near_duplicate_sets(recs, workers=2); print(f"again (cached): {time.time()-t3:.1f}s")
