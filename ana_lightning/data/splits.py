"""Train/val/test splits: the only module that decides who is in which split.

Records are first joined into *units* that must never be separated: byte-identical files (same
sha256 — a copied or re-exported image) and records of the same group (patient, slide, specimen).
Units are then assigned to splits by iterative stratification (Sechidis et al., 2011): rarest label
first, each unit to the split that still wants most of that label. The same procedure serves
single-label and multi-label records. It is written here because scikit-learn's splitters cannot
combine stratification, groups and multi-label targets at once.

The result is a manifest CSV (``path,label,split,sha256,group``) written into the run folder; a
later run can reuse it with ``data.split_manifest=<file>``.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .records import ImageRecord

__all__ = [
    "SPLITS",
    "split_records",
    "duplicate_sets",
    "save_manifest",
    "load_manifest",
    "check_no_leakage",
    "LeakageError",
    "split_keeping_official",
    "shared_with_train",
]

SPLITS = ("train", "val", "test")


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


def _units(records: Sequence[ImageRecord]) -> list[list[int]]:
    uf = _UnionFind(len(records))
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
) -> dict[str, list[ImageRecord]]:
    """Deterministic stratified, grouped split into train / val / test.

    Byte-identical files and records sharing a group always land in the same split. The result
    depends only on the records (their paths, codes, groups, hashes), the fractions and the seed.

    >>> recs = [ImageRecord(f"{c}_{i}.png", (c,), sha256=f"{c}{i}") for c in ("AC-1", "AC-2") for i in range(10)]
    >>> {k: len(v) for k, v in split_records(recs, seed=0).items()}
    {'train': 14, 'val': 3, 'test': 3}
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    records = sorted(records, key=lambda r: r.path)  # input order must not matter
    units = _units(records)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    units = [units[i] for i in order]

    label_count = Counter(c for r in records for c in r.codes)
    frac = np.asarray(fractions, dtype=float)
    want = {c: frac * n for c, n in label_count.items()}  # still wanted per split, per label
    want_total = frac * len(records)
    assigned: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}

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
        for i in u:
            assigned[SPLITS[k]].append(records[i])
            for c in records[i].codes:
                want[c][k] -= 1
            want_total[k] -= 1
    for s in SPLITS:
        assigned[s].sort(key=lambda r: r.path)
    check_no_leakage(assigned)
    return assigned


def split_keeping_official(
    records: Sequence[ImageRecord],
    official: dict[str, str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[ImageRecord]]:
    """A layout's own split kept as given: records marked ``test`` (or ``val``) stay there, never
    re-split; validation is carved from the others by :func:`split_records` (train : val in the ratio
    of ``fractions``, grouped and stratified as usual). Groups shared between the official splits are
    *not* an error here (the layout says so): :func:`shared_with_train` counts them."""
    given = {s: [r for r in records if official.get(r.path) == s] for s in ("val", "test")}
    rest = [r for r in records if official.get(r.path) not in ("val", "test")]
    f_train, f_val = float(fractions[0]), 0.0 if given["val"] else float(fractions[1])
    out = split_records(rest, (f_train / (f_train + f_val), f_val / (f_train + f_val), 0.0), seed=seed) if rest else \
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
