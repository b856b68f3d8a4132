"""Units and the stratified split: which records must stay together, and which split each unit goes to.

Records are first joined into *units* that must never be separated: byte-identical files (same
sha256), records of the same group (patient, slide, specimen) and each set of paths in ``together``
(the perceptual near-duplicates of :mod:`.duplicates`). Units are then assigned to splits by
iterative stratification (Sechidis et al., 2011): rarest label first (within a label in a seeded
random order), each unit to the split that still wants most of that label. The same procedure serves
single-label and multi-label records. It
is written here because scikit-learn's splitters cannot combine stratification, groups and
multi-label targets at once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from ..records import ImageRecord
from .checks import check_no_leakage

__all__ = ["SPLITS", "split_records", "split_keeping_official", "duplicate_sets"]

SPLITS = ("train", "val", "test")


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


def split_records(
    records: Sequence[ImageRecord],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    together: Sequence[Sequence[str]] = (),
    order: str = "random",
) -> dict[str, list[ImageRecord]]:
    """Deterministic stratified, grouped split into train / val / test.

    Byte-identical files, records sharing a group and each set of paths in ``together`` (e.g. the
    :func:`near_duplicate_sets`) always land in the same split. The result depends only on the
    records (their paths, codes, groups, hashes), ``together``, the fractions, the seed and ``order``
    (:data:`SPLIT_ORDERS`: ``size`` reproduces the splits made before round 19).

    >>> recs = [ImageRecord(f"{c}_{i}.png", (c,), sha256=f"{c}{i}") for c in ("AC-1", "AC-2") for i in range(10)]
    >>> {k: len(v) for k, v in split_records(recs, seed=0).items()}
    {'train': 14, 'val': 3, 'test': 3}
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}"
        )
    records = sorted(records, key=lambda r: r.path)  # input order must not matter
    units = _units(records, together)
    rng = np.random.default_rng(seed)
    units = [units[i] for i in rng.permutation(len(units))]

    assigned: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    for u, k in zip(units, _assign_units(records, units, fractions, rng, order), strict=True):
        assigned[SPLITS[k]].extend(records[i] for i in u)
    for s in SPLITS:
        assigned[s].sort(key=lambda r: r.path)
    check_no_leakage(assigned)
    return assigned


ATTEMPTS = 20  # random unit orders tried before the size-first order

# data.split_order: how the groups of a class are taken when they are placed in splits or folds
SPLIT_ORDERS = {
    "random": "a seeded random order, so another data.seed or repeat places a class's groups elsewhere (since round 19)",
    "size": "largest group first, the only order before round 19: it reproduces the splits and folds made "
    "then (with groups of distinct sizes every data.seed gives the same split)",
}


def check_split_order(order: str) -> str:
    """``order`` if it is one of :data:`SPLIT_ORDERS`, else a ValueError naming the value and the choices."""
    if order not in SPLIT_ORDERS:
        raise ValueError(
            f"data.split_order={order!r} is not one of "
            + "; ".join(f"{k} ({v})" for k, v in SPLIT_ORDERS.items())
        )
    return order


def _assign_units(
    records: Sequence[ImageRecord],
    units: Sequence[list[int]],
    fractions: Sequence[float],
    rng: np.random.Generator,
    order: str = "random",
) -> list[int]:
    """The bucket (split or fold) of every unit, by iterative stratification over ``fractions``.

    Units are taken rarest label first and, within a label, in a seeded random order, so another seed puts
    the groups of a class elsewhere. Larger units first reaches the most buckets per label (a small test
    split gets a class's smaller group), so an order whose result leaves a label in fewer buckets than that
    is drawn again for the labels left short, up to ``ATTEMPTS`` times, before the size-first result is
    taken (which depends on the seed only through ties).
    (Until round 19 the size-first order was the only one: with groups of distinct sizes, e.g. specimens,
    every data.seed then made the same split and every repeat of a k-fold the same folds, renumbered.)
    ``order="size"`` returns that size-first result directly, as before round 19."""
    check_split_order(order)
    label_count = Counter(c for r in records for c in r.codes)
    frac = np.asarray(fractions, dtype=float)
    codes = [{c for i in u for c in records[i].codes} for u in units]
    rarest = [min(cs, key=lambda c: (label_count[c], c)) if cs else None for cs in codes]
    rank = [label_count[c] if c else len(records) + 1 for c in rarest]

    def held(bucket: list[int]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = defaultdict(set)
        for cs, k in zip(codes, bucket, strict=True):
            for c in cs:
                out[c].add(k)
        return out

    def greedy(order: list[int]) -> list[int]:
        return _greedy(records, units, rarest, label_count, frac, rng, order)

    start = rng.bit_generator.state
    size_first = greedy(sorted(range(len(units)), key=lambda p: (rank[p], -len(units[p]), p)))
    if order == "size":
        return size_first
    reach = {c: len(ks) for c, ks in held(size_first).items()}  # buckets each label reaches that way
    rng.bit_generator.state = start
    key = np.arange(len(units), dtype=float)  # the callers' seeded shuffle first
    for _ in range(ATTEMPTS):
        bucket = greedy(sorted(range(len(units)), key=lambda p: (rank[p], key[p])))
        got = held(bucket)
        failed = {c for c, n in reach.items() if len(got[c]) < n}
        if not failed:
            return bucket
        for p, c in enumerate(rarest):  # draw the order again for the labels left out somewhere
            if c in failed:
                key[p] = len(units) * rng.random()
    return size_first


def _greedy(
    records: Sequence[ImageRecord],
    units: Sequence[list[int]],
    rarest: Sequence[str | None],
    label_count: Counter,
    frac: np.ndarray,
    rng: np.random.Generator,
    order: Sequence[int],
) -> list[int]:
    """Each unit in ``order`` to the bucket that still wants most of its rarest label (``rarest``; ties: most
    images overall, then chance)."""
    want = {c: frac * n for c, n in label_count.items()}  # still wanted per bucket, per label
    want_total = frac * len(records)
    bucket = [0] * len(units)
    for pos in order:
        u = units[pos]
        score = want[rarest[pos]] if rarest[pos] is not None else want_total
        best = np.flatnonzero(np.isclose(score, score.max()))
        if len(best) > 1:  # tie: the bucket that wants most images overall, then chance
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
    order: str = "random",
) -> dict[str, list[ImageRecord]]:
    """A layout's own split kept as given: records marked ``test`` (or ``val``) stay there, never
    re-split; validation is carved from the others by :func:`split_records` (train : val in the ratio
    of ``fractions``, grouped and stratified as usual). Groups shared between the official splits are
    *not* an error here (the layout says so): :func:`shared_with_train` counts them."""
    given = {s: [r for r in records if official.get(r.path) == s] for s in ("val", "test")}
    rest = [r for r in records if official.get(r.path) not in ("val", "test")]
    f_train, f_val = float(fractions[0]), 0.0 if given["val"] else float(fractions[1])
    out = (
        split_records(
            rest,
            (f_train / (f_train + f_val), f_val / (f_train + f_val), 0.0),
            seed=seed,
            together=together,
            order=order,
        )
        if rest
        else {s: [] for s in SPLITS}
    )
    out["val"] = sorted(out["val"] + given["val"], key=lambda r: r.path)
    out["test"] = sorted(given["test"], key=lambda r: r.path)
    return out
