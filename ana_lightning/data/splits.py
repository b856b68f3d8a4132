"""Train/val/test splits: the only module that decides who is in which split.

Records are first joined into *units* that must never be separated: byte-identical files (same
sha256 — a copied or re-exported image), perceptual near-duplicates (the same picture with other
bytes: re-encoded, flipped or rotated by a multiple of 90°; :func:`near_duplicate_sets`) and records
of the same group (patient, slide, specimen).
Units are then assigned to splits by iterative stratification (Sechidis et al., 2011): rarest label
first, each unit to the split that still wants most of that label. The same procedure serves
single-label and multi-label records. It is written here because scikit-learn's splitters cannot
combine stratification, groups and multi-label targets at once.

The result is a manifest CSV (``path,label,split,sha256,group``) written into the run folder; a
later run can reuse it with ``data.split_manifest=<file>``.

Cross-validation (``data.folds=k data.fold=i``) uses the same machinery: :func:`fold_records` makes
k disjoint folds with equal fractions, :func:`sweep_folds` saves them once per sweep as
``folds_manifest.csv`` (under a file lock, so parallel jobs agree) and :func:`cv_split` tests on
one fold and carves the validation split from the other folds.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .records import ImageRecord

__all__ = [
    "SPLITS",
    "split_records",
    "duplicate_sets",
    "near_duplicate_sets",
    "NearDuplicateSet",
    "write_near_duplicates",
    "save_manifest",
    "load_manifest",
    "check_no_leakage",
    "LeakageError",
    "split_keeping_official",
    "shared_with_train",
    "fold_records",
    "cv_split",
    "FOLDS_MANIFEST",
    "FoldsManifestError",
    "sweep_folds",
    "load_folds_manifest",
]

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


class LeakageError(ValueError):
    """The same image bytes or the same group appear in two splits."""


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _units(records: Sequence[ImageRecord], together: Sequence[Sequence[str]] = ()) -> list[list[int]]:
    uf = _UnionFind(len(records))
    index = {r.path: i for i, r in enumerate(records)}
    for paths in together:  # near-duplicate sets: kept in one split like byte-identical files
        ids = [index[p] for p in paths if p in index]
        for i in ids[1:]:
            uf.union(ids[0], i)
    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        for key in (("sha", r.sha256), ("group", r.group)):
            if not key[1]:
                continue
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    units: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        units[uf.find(i)].append(i)
    return list(units.values())


def duplicate_sets(records: Sequence[ImageRecord]) -> list[list[ImageRecord]]:
    """Groups of records whose files are byte-identical (two or more per group)."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        if r.sha256:
            by_hash[r.sha256].append(r)
    return [v for v in by_hash.values() if len(v) > 1]


# ------------------------------------------------------------------------------- near-duplicates
_DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "flip_lr", "flip_lr+rot90", "flip_lr+rot180", "flip_lr+rot270")
_THUMB = 32  # thumbnails compared pixel by pixel to confirm a hash match
_hash_cache: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}  # sha256 -> (8 hashes, thumbnail, size)


@dataclass(frozen=True)
class NearDuplicateSet:
    """Records showing the same picture (up to re-encoding, flips and 90° rotations).

    ``transforms[i]``: how record ``i`` maps onto record 0 (``identity``, ``rot90``, ``flip_lr``, …);
    ``distances[i]``: the Hamming distance of their perceptual hashes (0 = same hash)."""

    records: tuple[ImageRecord, ...]
    transforms: tuple[str, ...]
    distances: tuple[int, ...]

    @property
    def labels(self) -> list[tuple[str, ...]]:
        return sorted({r.codes for r in self.records})

    @property
    def conflicting(self) -> bool:
        """The same image carries different labels."""
        return len(self.labels) > 1


def _dihedral(arr: np.ndarray) -> list[np.ndarray]:
    out = []
    for flip in (False, True):
        a = np.fliplr(arr) if flip else arr
        out += [np.rot90(a, k) for k in range(4)]
    return out


def _dihedral_dct(block: np.ndarray) -> list[np.ndarray]:
    """The low-frequency DCT-II block of each of :func:`_dihedral`'s 8 variants, from the block of the
    original: a flip along an axis flips the sign of that axis's odd frequencies, a transpose
    transposes the block (exact, so one DCT serves all 8)."""
    sign = (-1.0) ** np.arange(block.shape[0])
    out = []
    for flip in (False, True):
        d = block * sign[None, :] if flip else block  # fliplr: odd horizontal frequencies change sign
        for _ in range(4):
            out.append(d)
            d = d.T * sign[:, None]  # rot90 = flipud(transpose)
    return out


def _hash_one(record: ImageRecord) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """64-bit perceptual hashes of the 8 flips/rotations of an image, its 32×32 grey thumbnail and
    its size (cached by sha256).

    The hash is ``imagehash.phash`` (grey, 32×32 LANCZOS thumbnail, 8×8 lowest DCT frequencies above
    their median): the identity variant is imagehash's own; the other 7 come from the same DCT by its
    flip/transpose symmetries (:func:`_dihedral_dct`), equal to ``phash`` of the flipped/rotated
    thumbnail (checked in the tests) at an eighth of the cost.
    """
    import imagehash
    from PIL import Image
    from scipy.fftpack import dct

    from .images import load_image

    key = record.sha256
    if key and key in _hash_cache:
        return _hash_cache[key]
    arr = load_image(record.path)
    thumb = Image.fromarray(arr).convert("L").resize((_THUMB, _THUMB), Image.Resampling.LANCZOS)
    pixels = np.asarray(thumb)
    block = dct(dct(pixels, axis=0), axis=1)[:8, :8]  # what imagehash.phash thresholds
    bits = [b > np.median(b) for b in _dihedral_dct(block)]
    bits[0] = imagehash.phash(thumb).hash  # the library's hash for the image as it is
    hashes = [int(np.packbits(b.flatten().astype(np.uint8)).view(">u8")[0]) for b in bits]
    out = (np.asarray(hashes, dtype=np.uint64), pixels.astype(np.float32), tuple(arr.shape[:2]))
    if key:
        _hash_cache[key] = out
    return out


def _same_picture(a: np.ndarray, b: np.ndarray, min_corr: float) -> bool:
    """Two thumbnails of one picture: correlation of the grey levels (brightness-independent)."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return den > 0 and float((a * b).sum()) / den >= min_corr if den else bool(np.array_equal(a, b))


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else np.unpackbits(x.view(np.uint8), axis=-1).sum(-1)


def _load_hash_cache(path: Path) -> None:
    try:
        with np.load(path) as z:
            for sha, h, t, size in zip(z["sha256"], z["hashes"], z["thumbs"], z["sizes"], strict=True):
                _hash_cache.setdefault(str(sha), (h.astype(np.uint64), t.astype(np.float32), (int(size[0]), int(size[1]))))
    except Exception:  # noqa: BLE001 - a damaged cache is only slower: hash again
        pass


def _save_hash_cache(path: Path) -> None:
    import os

    items = list(_hash_cache.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, sha256=np.array([k for k, _ in items]), hashes=np.stack([v[0] for _, v in items]),
             thumbs=np.stack([v[1] for _, v in items]).astype(np.uint8), sizes=np.array([v[2] for _, v in items]))
    os.replace(tmp, path)  # atomic: ranks or runs writing at once leave one whole file


def _candidate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, v)`` with ``i < j`` where variant ``v`` of image ``j``'s hash is within
    ``max_distance`` bits of image ``i``'s own hash (the closest variant per pair).

    Pigeonhole, not all pairs: cut the 64 bits into ``max_distance + 1`` bands; two hashes that
    differ in at most ``max_distance`` bits agree exactly on at least one band, so a sort-join per
    band finds every candidate in about O(N log N)."""
    n = len(hashes)
    base = hashes[:, 0]
    flat = hashes.reshape(-1)  # entry j*8+v
    bands = max_distance + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    found = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        a = (base >> np.uint64(lo)) & mask
        b = (flat >> np.uint64(lo)) & mask
        order = np.argsort(b, kind="stable")
        b_sorted = b[order]
        left, right = np.searchsorted(b_sorted, a, "left"), np.searchsorted(b_sorted, a, "right")
        counts = right - left
        if not counts.sum():
            continue
        i = np.repeat(np.arange(n), counts)
        starts = np.repeat(left - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        entry = order[np.arange(len(i)) + starts]
        keep = i < entry // 8
        i, entry = i[keep], entry[keep]
        close = _popcount(base[i] ^ flat[entry]) <= max_distance  # most band matches are not close
        found.append(i[close].astype(np.int64) * (8 * n) + entry[close])
    if not found:
        return []
    key = np.unique(np.concatenate(found))
    i, entry = key // (8 * n), key % (8 * n)
    dist = _popcount(base[i] ^ flat[entry])
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for a, j, v, d in zip(i.tolist(), (entry // 8).tolist(), (entry % 8).tolist(), dist.tolist(), strict=True):
        if (a, j) not in best or d < best[(a, j)][1]:
            best[(a, j)] = (v, d)
    return [(a, j, v) for (a, j), (v, _) in sorted(best.items())]


def near_duplicate_sets(
    records: Sequence[ImageRecord],
    max_distance: int = 4,
    min_correlation: float = 0.99,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> list[NearDuplicateSet]:
    """Sets of records that show the same picture with different (or the same) bytes: re-encoded,
    flipped or rotated by a multiple of 90° — the copies a byte hash misses.

    Each image gets the perceptual hash (``imagehash.phash``, 64 bits) of its 8 flips/rotations;
    two images are candidates when one's hash is within ``max_distance`` bits of any of the other's
    8, and are confirmed when they have the same size (up to a 90° turn) and their 32×32 grey
    thumbnails (the matching flip/rotation) correlate by at least ``min_correlation``, so
    similar-looking cells of one pattern are not merged. Images are hashed once per process (cached
    by sha256), and once across runs with ``cache_dir`` (``<cache_dir>/near_duplicate_hashes.npz``);
    unreadable files are skipped (the readers report them).
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from .images import BadImageError

    records = [r for r in records if r.path]
    if len(records) < 2:
        return []

    def safe(r):
        try:
            return _hash_one(r)
        except (BadImageError, OSError):
            return None

    disk = Path(cache_dir) / "near_duplicate_hashes.npz" if cache_dir else None
    if disk is not None and disk.is_file():
        _load_hash_cache(disk)
    known = len(_hash_cache)
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        got = list(pool.map(safe, records))
    if disk is not None and len(_hash_cache) > known:
        try:
            _save_hash_cache(disk)
        except OSError as e:  # a read-only cache folder: only slower next time
            log.info("near-duplicate hashes not cached in %s: %s", disk, e)
    keep = [i for i, g in enumerate(got) if g is not None]
    if len(keep) < 2:
        return []
    recs = [records[i] for i in keep]
    hashes = np.stack([got[i][0] for i in keep])  # (N, 8)
    thumbs = [got[i][1] for i in keep]
    sizes = [got[i][2] for i in keep]
    n = len(recs)
    uf = _UnionFind(n)
    for i, j, v in _candidate_pairs(hashes, max_distance):
        if sizes[i] not in (sizes[j], sizes[j][::-1]):
            continue
        if _same_picture(thumbs[i], _dihedral(thumbs[j])[v], min_correlation):  # j turned like i
            uf.union(i, j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[uf.find(i)].append(i)
    out = []
    for ids in members.values():
        if len(ids) < 2:
            continue
        ids.sort(key=lambda i: recs[i].path)
        first = ids[0]
        transforms, distances = ["identity"], [0]
        for j in ids[1:]:  # which flip/rotation of j is the first record, and how far their hashes are
            dists = _popcount(hashes[first, 0] ^ hashes[j])
            transforms.append(_DIHEDRAL[int(dists.argmin())])
            distances.append(int(dists.min()))
        out.append(NearDuplicateSet(tuple(recs[i] for i in ids), tuple(transforms), tuple(distances)))
    out.sort(key=lambda d: d.records[0].path)
    return out


def write_near_duplicates(sets: Sequence[NearDuplicateSet], splits: dict[str, Sequence[ImageRecord]], path: str | Path) -> Path:
    """``near_duplicates.csv``: ``set,path,label,split,sha256,transform,hash_distance,conflicting_labels``."""
    path = Path(path)
    split_of = {r.path: s for s, recs in splits.items() for r in recs}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "path", "label", "split", "sha256", "transform", "hash_distance", "conflicting_labels"])
        for k, d in enumerate(sets):
            for r, t, dist in zip(d.records, d.transforms, d.distances, strict=True):
                w.writerow([k, r.path, ";".join(r.codes), split_of.get(r.path, ""), r.sha256, t, dist,
                            "yes" if d.conflicting else ""])
    return path


def split_records(
    records: Sequence[ImageRecord],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    together: Sequence[Sequence[str]] = (),
) -> dict[str, list[ImageRecord]]:
    """Deterministic stratified, grouped split into train / val / test.

    Byte-identical files, records sharing a group and each set of paths in ``together`` (e.g. the
    :func:`near_duplicate_sets`) always land in the same split. The result depends only on the
    records (their paths, codes, groups, hashes), ``together``, the fractions and the seed.

    >>> recs = [ImageRecord(f"{c}_{i}.png", (c,), sha256=f"{c}{i}") for c in ("AC-1", "AC-2") for i in range(10)]
    >>> {k: len(v) for k, v in split_records(recs, seed=0).items()}
    {'train': 14, 'val': 3, 'test': 3}
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    records = sorted(records, key=lambda r: r.path)  # input order must not matter
    units = _units(records, together)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    units = [units[i] for i in order]

    assigned: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    for u, k in zip(units, _assign_units(records, units, fractions, rng), strict=True):
        assigned[SPLITS[k]].extend(records[i] for i in u)
    for s in SPLITS:
        assigned[s].sort(key=lambda r: r.path)
    check_no_leakage(assigned)
    return assigned


def _assign_units(
    records: Sequence[ImageRecord], units: Sequence[list[int]], fractions: Sequence[float], rng: np.random.Generator
) -> list[int]:
    """The bucket (split or fold) of every unit, by iterative stratification over ``fractions``."""
    label_count = Counter(c for r in records for c in r.codes)
    frac = np.asarray(fractions, dtype=float)
    want = {c: frac * n for c, n in label_count.items()}  # still wanted per split, per label
    want_total = frac * len(records)
    bucket = [0] * len(units)

    def unit_codes(u: list[int]) -> set[str]:
        return {c for i in u for c in records[i].codes}

    # Rarest label first (ties: larger units first, then the random order above).
    keyed = []
    for pos, u in enumerate(units):
        codes = unit_codes(u)
        rarest = min((label_count[c] for c in codes), default=len(records) + 1)
        keyed.append((rarest, -len(u), pos))
    keyed.sort()
    for _, _, pos in keyed:
        u = units[pos]
        codes = unit_codes(u)
        if codes:
            rare = min(codes, key=lambda c: (label_count[c], c))
            score = want[rare]
        else:
            score = want_total
        best = np.flatnonzero(np.isclose(score, score.max()))
        if len(best) > 1:  # tie: the split that wants most images overall, then chance
            tot = want_total[best]
            best = best[np.isclose(tot, tot.max())]
        k = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        if frac[k] == 0:
            k = int(np.argmax(frac))
        bucket[pos] = k
        for i in u:
            for c in records[i].codes:
                want[c][k] -= 1
            want_total[k] -= 1
    return bucket


def split_keeping_official(
    records: Sequence[ImageRecord],
    official: dict[str, str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    together: Sequence[Sequence[str]] = (),
) -> dict[str, list[ImageRecord]]:
    """A layout's own split kept as given: records marked ``test`` (or ``val``) stay there, never
    re-split; validation is carved from the others by :func:`split_records` (train : val in the ratio
    of ``fractions``, grouped and stratified as usual). Groups shared between the official splits are
    *not* an error here (the layout says so): :func:`shared_with_train` counts them."""
    given = {s: [r for r in records if official.get(r.path) == s] for s in ("val", "test")}
    rest = [r for r in records if official.get(r.path) not in ("val", "test")]
    f_train, f_val = float(fractions[0]), 0.0 if given["val"] else float(fractions[1])
    out = split_records(rest, (f_train / (f_train + f_val), f_val / (f_train + f_val), 0.0), seed=seed,
                        together=together) if rest else \
        {s: [] for s in SPLITS}
    out["val"] = sorted(out["val"] + given["val"], key=lambda r: r.path)
    out["test"] = sorted(given["test"], key=lambda r: r.path)
    return out


def shared_with_train(splits: dict[str, Sequence[ImageRecord]], split: str = "test") -> dict[str, int]:
    """How much of ``split`` shares a group or identical bytes with the training split:
    ``{"groups": shared groups, "images": images of split in them, "identical": byte-identical images}``."""
    train = splits.get("train", [])
    groups = {r.group for r in train if r.group}
    hashes = {r.sha256 for r in train if r.sha256}
    other = splits.get(split, [])
    shared = {r.group for r in other if r.group in groups}
    return {"groups": len(shared), "images": sum(r.group in shared for r in other),
            "identical": sum(bool(r.sha256) and r.sha256 in hashes for r in other)}


def check_no_leakage(splits: dict[str, Sequence[ImageRecord]]) -> None:
    """Raise :class:`LeakageError` if a file hash or a group occurs in more than one split."""
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for s, recs in splits.items():
        for r in recs:
            for key in (("sha256", r.sha256), ("group", r.group)):
                if not key[1]:
                    continue
                other = seen.setdefault(key, s)
                if other != s:
                    problems.append(f"{key[0]} {key[1][:16]} is in both {other} and {s} ({r.path})")
    if problems:
        raise LeakageError("split leakage:\n  " + "\n  ".join(problems[:20]))


def save_manifest(splits: dict[str, Iterable[ImageRecord]], path: str | Path, root: str | Path | None = None) -> Path:
    """Write ``path,label,split,sha256,group``; labels of multi-label records are joined by ``;``.

    Paths are written relative to ``root`` when given (so a manifest survives moving the dataset).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sha256", "group"])
        for s in SPLITS:
            for r in splits.get(s, []):
                p = Path(r.path)
                if root is not None:
                    try:
                        p = p.resolve().relative_to(Path(root).resolve())
                    except ValueError:
                        pass
                w.writerow([p.as_posix(), ";".join(r.codes), s, r.sha256, r.group or ""])
    tmp.replace(path)
    return path


def load_manifest(path: str | Path, root: str | Path | None = None, taxonomy=None,
                  check: bool = True) -> dict[str, list[ImageRecord]]:
    """Read a split manifest back into records per split (relative paths resolved against ``root``).
    ``check=False``: groups shared across splits are allowed (a layout's official split)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split manifest {path} does not exist")
    out: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"split manifest {path} lacks column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            if row["split"] not in out:
                raise ValueError(f"split manifest {path}, line {line}: unknown split {row['split']!r}")
            p = Path(row["path"])
            if not p.is_absolute() and root is not None:
                p = Path(root) / p
            codes = tuple(c for c in row["label"].split(";") if c)
            if taxonomy is not None:
                codes = tuple(taxonomy.parse_code(c) for c in codes)
            out[row["split"]].append(ImageRecord(str(p), codes, row.get("group") or None, row.get("sha256") or ""))
    if check:
        check_no_leakage(out)
    return out


# ---------------------------------------------------------------------------------- cross-validation
FOLDS_MANIFEST = "folds_manifest.csv"
_FOLD_COLUMNS = ["repeat", "fold", "path", "label", "sha256", "group", "seed"]


class FoldsManifestError(ValueError):
    """A folds manifest that does not fit the data or the fold settings of this job."""


def fold_records(
    records: Sequence[ImageRecord], folds: int, seed: int | Sequence[int] = 0, together: Sequence[Sequence[str]] = ()
) -> list[list[ImageRecord]]:
    """``folds`` disjoint folds covering ``records``: stratified (multi-label aware) and grouped by the
    same rules as :func:`split_records` (a group, byte-identical files and each set of paths in
    ``together`` — the near-duplicates — stay in one fold).

    >>> recs = [ImageRecord(f"{c}_{i}.png", (c,), sha256=f"{c}{i}") for c in ("AC-1", "AC-2") for i in range(10)]
    >>> [len(f) for f in fold_records(recs, 5)]
    [4, 4, 4, 4, 4]
    """
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"data.folds must be at least 2, got {folds}")
    records = sorted(records, key=lambda r: r.path)
    units = _units(records, together)
    if len(units) < folds:
        raise ValueError(
            f"data.folds={folds} needs at least {folds} independent groups of images, but the {len(records)} images "
            f"form {len(units)} (images of one group or byte-identical files stay together): use fewer folds"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    units = [units[i] for i in order]
    out: list[list[ImageRecord]] = [[] for _ in range(folds)]
    for u, k in zip(units, _assign_units(records, units, [1.0 / folds] * folds, rng), strict=True):
        out[k].extend(records[i] for i in u)
    for f in out:
        f.sort(key=lambda r: r.path)
    empty = [i for i, f in enumerate(out) if not f]
    if empty:
        raise ValueError(f"data.folds={folds}: fold(s) {empty} came out empty ({len(units)} groups); use fewer folds")
    check_no_leakage({f"fold {i}": f for i, f in enumerate(out)})
    return out


def cv_split(
    records: Sequence[ImageRecord],
    fold_of: dict[str, int],
    fold: int,
    val_fraction: float,
    seed: int | Sequence[int] = 0,
    together: Sequence[Sequence[str]] = (),
) -> dict[str, list[ImageRecord]]:
    """Train / val / test of one cross-validation job: ``test`` is fold ``fold`` (``fold_of`` maps a
    record's path to its fold); ``val`` is carved from the other folds only (stratified, grouped),
    ``val_fraction`` of them; the rest is ``train``."""
    missing = [r.path for r in records if r.path not in fold_of]
    if missing:
        raise FoldsManifestError(f"{len(missing)} image(s) have no fold, e.g. {missing[0]}")
    test = sorted((r for r in records if fold_of[r.path] == fold), key=lambda r: r.path)
    rest = [r for r in records if fold_of[r.path] != fold]
    if not test:
        raise FoldsManifestError(f"fold {fold} holds no image")
    inner = split_records(rest, (1.0 - val_fraction, val_fraction, 0.0), seed=seed, together=together)  # no test
    out = {"train": inner["train"], "val": inner["val"], "test": test}
    check_no_leakage(out)
    return out


def _rel(path: str, root: str | Path | None) -> str:
    p = Path(path)
    if root is not None:
        try:
            p = p.resolve().relative_to(Path(root).resolve())
        except ValueError:
            pass
    return p.as_posix()


def load_folds_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``folds_manifest.csv`` (``repeat,fold,path,label,sha256,group,seed``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folds manifest {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(_FOLD_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise FoldsManifestError(f"folds manifest {path} lacks column(s) {sorted(missing)}")
        return list(reader)


def sweep_folds(
    records: Sequence[ImageRecord],
    path: str | Path | None,
    folds: int,
    repeats: int = 1,
    seed: int = 0,
    root: str | Path | None = None,
    together: Sequence[Sequence[str]] = (),
) -> list[dict[str, int]]:
    """The fold of every record (by path), per repeat, made once per sweep.

    The first job of a sweep makes the folds of every repeat (repeat ``i`` with fold seed
    ``[seed, i]``) and writes them to ``path`` under a file lock; every later job reads that file
    and uses it exactly. A manifest that lists other images, other contents (sha256), other labels,
    or other fold settings is refused with the differences named. ``path=None`` keeps them in memory.
    """
    rel = {_rel(r.path, root): r for r in records}
    if len(rel) != len(records):
        raise FoldsManifestError("two images map to the same relative path; cannot write a folds manifest")
    if path is None:
        return [_fold_map(records, folds, [seed, i], together) for i in range(repeats)]
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            rows = []
            for i in range(repeats):
                for k, fold in enumerate(fold_records(records, folds, [seed, i], together)):
                    rows += [[i, k, _rel(r.path, root), ";".join(r.codes), r.sha256, r.group or "", seed] for r in fold]
            # Unique temporary name, atomic rename: even where the lock does not hold (some network file
            # systems), two jobs could only write the same deterministic content, never a mixed file.
            tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(_FOLD_COLUMNS)
                w.writerows(rows)
            tmp.replace(path)
        rows = load_folds_manifest(path)
    return _check_folds_manifest(rows, rel, path, folds, repeats, seed)


def _fold_map(records: Sequence[ImageRecord], folds: int, seed: Sequence[int], together: Sequence[Sequence[str]] = ()) -> dict[str, int]:
    return {r.path: k for k, fold in enumerate(fold_records(records, folds, seed, together)) for r in fold}


def _check_folds_manifest(rows: list[dict[str, str]], rel: dict[str, ImageRecord], path: Path, folds: int, repeats: int,
                          seed: int) -> list[dict[str, int]]:
    problems: list[str] = []
    got_folds = {int(r["fold"]) for r in rows}
    got_repeats = {int(r["repeat"]) for r in rows}
    got_seeds = {r["seed"] for r in rows}
    if got_folds != set(range(folds)) or got_repeats != set(range(repeats)) or got_seeds != {str(seed)}:
        problems.append(
            f"it holds folds {sorted(got_folds)}, repeats {sorted(got_repeats)}, seed {sorted(got_seeds)}; this job asks "
            f"for data.folds={folds}, data.repeats={repeats}, data.seed={seed}"
        )
    out: list[dict[str, int]] = [{} for _ in range(repeats)]
    for line, row in enumerate(rows, start=2):
        rep = int(row["repeat"])
        r = rel.get(row["path"])
        if r is None:
            problems.append(f"line {line}: {row['path']} is not in the dataset")
        elif row["sha256"] and r.sha256 and row["sha256"] != r.sha256:
            problems.append(f"line {line}: {row['path']} changed since the folds were made (sha256 differs)")
        elif row["label"] != ";".join(r.codes):
            problems.append(f"line {line}: {row['path']} is labelled {';'.join(r.codes)!r}, not {row['label']!r}")
        elif rep < repeats:
            if r.path in out[rep]:
                problems.append(f"line {line}: {row['path']} is listed twice in repeat {rep}")
            out[rep][r.path] = int(row["fold"])
    for rep in range(min(repeats, max(got_repeats, default=-1) + 1)):
        new = [p for p, r in rel.items() if r.path not in out[rep]]
        if new:
            problems.append(f"repeat {rep}: {len(new)} image(s) of the dataset are not in it, e.g. {new[0]}")
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise FoldsManifestError(
            f"the folds manifest {path} does not fit this job (the dataset or the fold settings changed since the "
            f"sweep made it):\n  {shown}\nStart a new sweep (or pass data.folds_manifest=<a new file>) to make new folds."
        )
    return out
