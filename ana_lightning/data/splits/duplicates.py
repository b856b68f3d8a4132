"""Duplicates: byte-identical files (``duplicates.csv``) and perceptual near-duplicates, the same
picture with other bytes (re-encoded, flipped, rotated by 90°).

:func:`near_duplicate_sets` finds them (perceptual hashes of the 8 flips/rotations, a pigeonhole
band join, then a thumbnail correlation to confirm); the split keeps each set in one split like
byte-identical files, and :func:`write_near_duplicates` lists them in ``near_duplicates.csv``.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..records import ImageRecord
from .grouping import SPLITS, _UnionFind, duplicate_sets

__all__ = [
    "NearDuplicateSet",
    "near_duplicate_sets",
    "find_near_duplicates",
    "write_near_duplicates",
    "write_duplicates",
]

log = logging.getLogger(__name__)

_DIHEDRAL = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip_lr",
    "flip_lr+rot90",
    "flip_lr+rot180",
    "flip_lr+rot270",
)
_THUMB = 32  # thumbnails compared pixel by pixel to confirm a hash match
_hash_cache: dict[
    str, tuple[np.ndarray, np.ndarray, tuple[int, int]]
] = {}  # sha256 -> (8 hashes, thumbnail, size)


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
    key = _hash_key(record)
    if key and key in _hash_cache:
        return _hash_cache[key]
    out = _compute_hash(record.path)
    if key:
        _hash_cache[key] = out
    return out


def _hash_key(record: ImageRecord) -> str:
    """What an image's hashes depend on: its bytes, and how files are read now (data.bit_depth changes a
    16-bit file's pixels, data.channels a multi-channel TIFF's). Empty when its sha256 is not known."""
    from ..images import read_settings

    depth = read_settings()
    return f"{record.sha256}|{depth}" if record.sha256 and depth else record.sha256


def _compute_hash(path: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """:func:`_hash_one` without the cache."""
    import imagehash
    from PIL import Image
    from scipy.fftpack import dct

    from ..images import load_image

    arr = load_image(path)
    thumb = Image.fromarray(arr).convert("L").resize((_THUMB, _THUMB), Image.Resampling.LANCZOS)
    pixels = np.asarray(thumb)
    block = dct(dct(pixels, axis=0), axis=1)[:8, :8]  # what imagehash.phash thresholds
    bits = [b > np.median(b) for b in _dihedral_dct(block)]
    bits[0] = imagehash.phash(thumb).hash  # the library's hash for the image as it is
    hashes = [int(np.packbits(b.flatten().astype(np.uint8)).view(">u8")[0]) for b in bits]
    return np.asarray(hashes, dtype=np.uint64), pixels.astype(np.float32), tuple(arr.shape[:2])


def _safe_hash(path: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
    """:func:`_compute_hash`, or None for a file that cannot be read (the readers report those)."""
    from ..images import BadImageError

    try:
        return _compute_hash(path)
    except (BadImageError, OSError):
        return None


def _same_picture(a: np.ndarray, b: np.ndarray, min_corr: float) -> bool:
    """Two thumbnails of one picture: correlation of the grey levels (brightness-independent). A flat
    thumbnail (a blank or saturated field) has no picture to correlate: it matches only the same flat level,
    so a black and a white field are not one picture."""
    ca, cb = a - a.mean(), b - b.mean()
    den = float(np.sqrt((ca * ca).sum() * (cb * cb).sum()))
    if den == 0:
        return bool(np.array_equal(a, b))
    return float((ca * cb).sum()) / den >= min_corr


def _popcount(x: np.ndarray) -> np.ndarray:
    return (
        np.bitwise_count(x)
        if hasattr(np, "bitwise_count")
        else np.unpackbits(x.view(np.uint8), axis=-1).sum(-1)
    )


def _load_hash_cache(path: Path) -> None:
    try:
        with np.load(path) as z:
            for sha, h, t, size in zip(z["sha256"], z["hashes"], z["thumbs"], z["sizes"], strict=True):
                _hash_cache.setdefault(
                    str(sha), (h.astype(np.uint64), t.astype(np.float32), (int(size[0]), int(size[1])))
                )
    except Exception:  # noqa: BLE001 - a damaged cache is only slower: hash again
        pass


def _save_hash_cache(path: Path) -> None:
    from ..cache import save_npz_atomic

    items = list(_hash_cache.items())
    save_npz_atomic(
        path,
        sha256=np.array([k for k, _ in items]),
        hashes=np.stack([v[0] for _, v in items]),
        thumbs=np.stack([v[1] for _, v in items]).astype(np.uint8),
        sizes=np.array([v[2] for _, v in items]),
    )


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
    for a, j, v, d in zip(
        i.tolist(), (entry // 8).tolist(), (entry % 8).tolist(), dist.tolist(), strict=True
    ):
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
    from ..images import decode_map

    records = [r for r in records if r.path]
    if len(records) < 2:
        return []

    disk = Path(cache_dir) / "near_duplicate_hashes.npz" if cache_dir else None
    if disk is not None and disk.is_file():
        _load_hash_cache(disk)
    known = len(_hash_cache)
    keys = [_hash_key(r) for r in records]
    got = [_hash_cache.get(k) if k else None for k in keys]
    todo = [i for i, g in enumerate(got) if g is None]
    for i, g in zip(
        todo, decode_map(_safe_hash, [records[i].path for i in todo], threads=workers), strict=True
    ):
        got[i] = g
        if g is not None and keys[i]:
            _hash_cache[keys[i]] = g
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


def write_near_duplicates(
    sets: Sequence[NearDuplicateSet], splits: dict[str, Sequence[ImageRecord]], path: str | Path
) -> Path:
    """``near_duplicates.csv``: ``set,path,label,split,sha256,transform,hash_distance,conflicting_labels``."""
    path = Path(path)
    split_of = {r.path: s for s, recs in splits.items() for r in recs}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["set", "path", "label", "split", "sha256", "transform", "hash_distance", "conflicting_labels"]
        )
        for k, d in enumerate(sets):
            for r, t, dist in zip(d.records, d.transforms, d.distances, strict=True):
                w.writerow(
                    [
                        k,
                        r.path,
                        ";".join(r.codes),
                        split_of.get(r.path, ""),
                        r.sha256,
                        t,
                        dist,
                        "yes" if d.conflicting else "",
                    ]
                )
    return path


def write_duplicates(splits: dict[str, Sequence[ImageRecord]], path: str | Path) -> int:
    """``duplicates.csv`` (``sha256,path,label,split``) of the byte-identical sets in ``splits``, each
    kept in one split; nothing is written when there are none. Returns the number of sets."""
    dups = duplicate_sets([r for s in SPLITS for r in splits.get(s, [])])
    if dups:
        split_of = {r.path: s for s in SPLITS for r in splits.get(s, [])}
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sha256", "path", "label", "split"])
            for group in dups:
                for r in group:
                    w.writerow([r.sha256, r.path, ";".join(r.codes), split_of[r.path]])
    return len(dups)


def find_near_duplicates(
    records: Sequence[ImageRecord], cache_dir: str | Path | None = None
) -> list[NearDuplicateSet]:
    """:func:`near_duplicate_sets` of the records as a datamodule reports them: an INFO line when there
    are any, and a loud WARNING when the same image carries different labels."""
    if cache_dir is None:
        from ..cache import default_cache_dir

        cache_dir = default_cache_dir()
    found = near_duplicate_sets(records, cache_dir=cache_dir)
    if found:
        log.info(
            "%d set(s) of near-duplicate images (same picture, other bytes or flipped/rotated) are kept in "
            "one split each: see near_duplicates.csv",
            len(found),
        )
    conflicts = [d for d in found if d.conflicting]
    if conflicts:
        shown = "; ".join(
            " = ".join(f"{r.path} ({';'.join(r.codes)})" for r in d.records) for d in conflicts[:5]
        )
        log.warning(
            "the same image carries different labels in %d case(s) (it would be trained with both): %s%s. "
            "Fix the labels or remove the copies; all are listed in near_duplicates.csv "
            "(conflicting_labels=yes).",
            len(conflicts),
            shown,
            " …" if len(conflicts) > 5 else "",
        )
    return found
