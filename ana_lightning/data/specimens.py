"""Specimen groups for I3A cells whose label CSV names no specimen (``data.grouping``).

The contest numbers cells specimen by specimen, so runs of consecutive IDs (cut at ID gaps and at
steps of the per-cell intensity) approximate specimens; a split by these groups keeps the cells of
one specimen on one side (see :func:`group_i3a_specimens`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from .images import decode_map, load_image, read_settings
from .records import ImageRecord

__all__ = [
    "GROUPINGS",
    "cell_median",
    "cell_medians",
    "class_min_size",
    "consecutive_id_groups",
    "group_i3a_specimens",
]

log = logging.getLogger(__name__)

#: The file in the cache folder that keeps cell medians across runs (see :func:`cell_medians`).
MEDIANS_FILE = "cell_medians.npz"

#: How I3A cells are grouped when the CSV names no specimen (``data.grouping``).
GROUPINGS = ("auto", "steps", "blocks", "none")


def _numeric_id(path: str) -> int | None:
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def _runs_to_min_size(runs: list[list[int]], level: list[float], min_size: int) -> list[list[int]]:
    """Merge adjacent runs (lists of positions) until none has fewer than ``min_size`` cells.

    Two small runs side by side are joined before a small run joins a big one (so groups stay near
    ``min_size`` instead of snowballing), and among those the weakest step goes first: the pair whose
    median log-intensities are closest (a weak step is the likeliest to lie inside one specimen)."""
    runs = [list(r) for r in runs if r]
    med = [float(np.median([level[i] for i in r])) for r in runs]
    while len(runs) > 1:
        pairs = [k for k in range(len(runs) - 1) if min(len(runs[k]), len(runs[k + 1])) < min_size]
        if not pairs:
            break
        k = min(
            pairs,
            key=lambda k: (max(len(runs[k]), len(runs[k + 1])) >= min_size, abs(med[k] - med[k + 1]), k),
        )
        runs[k] = runs[k] + runs.pop(k + 1)
        med.pop(k + 1)
        med[k] = float(np.median([level[i] for i in runs[k]]))
    return runs


def consecutive_id_groups(
    ids: list[int],
    values: list[float] | None,
    min_size: int = 250,
    window: int = 20,
    step: float = 0.12,
) -> list[int]:
    """Group index of each cell of *one class*, cells given in ID order (see :func:`group_i3a_specimens`).

    A new run starts where the ID sequence has a gap (a missing block: another specimen) and, with
    ``values`` (per-cell median intensity), where the median log-intensity of the ``window`` cells
    before and after a position differs by more than ``step`` (``0.12`` ≈ a 13 % step) (the strongest
    such step within ``window`` cells). Without ``values`` a run is cut into blocks of
    ``min_size`` consecutive IDs. Runs are then merged until each has at least ``min_size`` cells
    (a class smaller than ``min_size`` is one group).

    >>> consecutive_id_groups(list(range(1, 9)) + list(range(20, 24)), [10.0] * 4 + [30.0] * 8, min_size=3, window=2)
    [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    """
    n = len(ids)
    if n == 0:
        return []
    if values is not None and len(values) != n:
        raise ValueError(f"{len(values)} intensities for {n} IDs")
    cuts = {i for i in range(1, n) if ids[i] != ids[i - 1] + 1}
    level = [0.0] * n if values is None else [float(np.log1p(max(v, 0.0))) for v in values]
    if values is not None:
        x = np.asarray(level)
        score, sharp = np.zeros(n), np.zeros(n)
        need = min(window, max(3, window // 4))  # cells on each side before a step is believed
        for i in range(1, n):
            lo, hi = x[max(0, i - window) : i], x[i : i + window]
            if min(len(lo), len(hi)) >= need:
                score[i] = abs(float(np.median(lo)) - float(np.median(hi)))  # robust: is there a step?
                sharp[i] = abs(float(lo.mean()) - float(hi.mean()))  # peaks exactly at the step: where?
        taken: list[int] = []  # strongest steps first, at most one per window of cells
        for i in sorted(np.flatnonzero(score > step), key=lambda i: (-score[i], -sharp[i], i)):
            lo, hi = max(1, i - window // 2), min(n, i + window // 2 + 1)
            i = lo + int(np.argmax(sharp[lo:hi]))
            if all(abs(i - j) >= window for j in taken):
                taken.append(i)
        cuts.update(taken)
    bounds = [0, *sorted(cuts), n]
    runs = [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if values is None:  # fixed blocks of min_size consecutive IDs within each gap-free run
        blocks = []
        for r in runs:
            k = max(1, len(r) // min_size)
            blocks += [list(b) for b in np.array_split(r, k)]
        runs = blocks
    runs = _runs_to_min_size(runs, level, min_size)
    out = [0] * n
    for g, r in enumerate(sorted(runs, key=min)):
        for i in r:
            out[i] = g
    return out


def cell_median(image_path: str, mask_path: str | None) -> float:
    """A cell's median intensity (max over the colour channels) inside its mask, or over the crop without one."""
    img = load_image(image_path).max(axis=2)
    if mask_path is not None:
        m = load_image(mask_path, camera=False).max(axis=2) > 0
        if m.shape == img.shape and m.any():
            return float(np.median(img[m]))
    return float(np.median(img))


def _median_key(record: ImageRecord, mask: str | None, mask_digests: dict[str, str]) -> str | None:
    """What a cell's median depends on: its image's and its mask's bytes, and the bit depth images are
    read at. ``None`` when a digest is not known (the median is then computed, not cached)."""
    if not record.sha256 or (mask is not None and not mask_digests.get(mask)):
        return None
    return f"{record.sha256}|{mask_digests[mask] if mask is not None else '-'}|{read_settings()}"


def _load_medians(path: Path) -> dict[str, float]:
    try:
        with np.load(path) as z:
            return dict(zip(z["keys"].tolist(), z["values"].tolist(), strict=True))
    except FileNotFoundError:
        return {}
    except Exception as e:  # noqa: BLE001 - a damaged cache is only slower: compute again
        log.info("cell medians cache %s not read (%s): computing them again", path, e)
        return {}


def _save_medians(path: Path, known: dict[str, float]) -> None:
    from .cache import save_npz_atomic

    try:
        save_npz_atomic(
            path, keys=np.array(list(known)), values=np.array(list(known.values()), dtype=np.float64)
        )
    except OSError as e:  # a read-only cache folder: only slower next time
        log.info("cell medians not cached in %s: %s", path, e)


def cell_medians(
    records: list[ImageRecord],
    masks: dict[str, str] | None = None,
    mask_digests: dict[str, str] | None = None,
    cache_dir: str | Path | None = None,
) -> list[float]:
    """:func:`cell_median` of each record (its mask from ``masks``, image path -> mask path), in worker
    processes when there are many (:func:`~.images.decode_map`).

    Every cell is decoded with its mask, which for a contest folder costs as long as reading it. Cells
    whose image and mask bytes are known (the reader's sha256 of both: ``record.sha256`` and
    ``mask_digests``, mask path -> sha256) are kept in ``<cache_dir>/cell_medians.npz`` (default
    :func:`~ana_lightning.data.cache.default_cache_dir`), so a rerun, a CV fold or ``ana-eval`` on the
    same cells reads them instead. A changed image, mask or bit depth is another key: never a stale value.
    """
    from .cache import default_cache_dir

    masks, mask_digests = masks or {}, mask_digests or {}
    keys = [_median_key(r, masks.get(r.path), mask_digests) for r in records]
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / MEDIANS_FILE
    known = _load_medians(path) if any(keys) else {}
    todo = [i for i, k in enumerate(keys) if k is None or k not in known]
    fresh = list(decode_map(lambda i: cell_median(records[i].path, masks.get(records[i].path)), todo))
    out = {i: known[k] for i, k in enumerate(keys) if k is not None and k in known}
    out.update(zip(todo, fresh, strict=True))
    new = {keys[i]: v for i, v in zip(todo, fresh, strict=True) if keys[i] is not None}
    if new:
        _save_medians(path, {**_load_medians(path), **new})  # re-read: another run may have added cells
    return [out[i] for i in range(len(records))]


def class_min_size(n_cells: int, min_size: int) -> int:
    """The fewest cells of a group in a class of ``n_cells``: ``min_size``, but never above a fifth of the
    class (so a small class such as Golgi keeps several groups and reaches every split)."""
    return max(1, min(min_size, n_cells // 5))


def group_i3a_specimens(
    records: list[ImageRecord],
    masks: dict[str, str] | None = None,
    method: str = "steps",
    min_size: int = 250,
    mask_digests: dict[str, str] | None = None,
) -> tuple[list[ImageRecord], str]:
    """Specimen groups for I3A cells whose CSV has no specimen column: ``(records, how)``.

    Within each class, cells are ordered by their numeric ID (the contest numbers cells specimen by
    specimen) and cut into runs of consecutive IDs (:func:`consecutive_id_groups`): ``steps`` cuts at
    ID gaps and at steps of the per-cell median intensity inside the mask; ``blocks`` at ID gaps and
    every ``min_size`` IDs. Runs are merged until each has at least ``min_size`` cells, but never
    below a fifth of its class (so a small class such as Golgi keeps several groups and reaches every
    split): blocks that small could cut a specimen in two, and a cut specimen leaks across splits.
    Groups are named ``<label>#<k>`` (``AC-1#0``, …). The medians are kept across runs when the image
    and mask digests are known (``mask_digests``: :func:`cell_medians`).
    """
    if method not in ("steps", "blocks"):
        raise ValueError(f"grouping method must be 'steps' or 'blocks', got {method!r}")
    no_id = [r.path for r in records if _numeric_id(r.path) is None]
    if no_id:
        raise ValueError(
            f"I3A grouping by consecutive IDs needs numeric file names; not numeric: {no_id[:3]}"
        )
    by_label: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_label.setdefault(r.codes[0], []).append(r)
    masks = masks or {}
    level = {}
    if method == "steps":
        level = dict(zip((r.path for r in records), cell_medians(records, masks, mask_digests), strict=True))
    new: dict[str, str] = {}
    sizes: list[int] = []
    for label, recs in by_label.items():
        recs = sorted(recs, key=lambda r: _numeric_id(r.path))
        ids = [_numeric_id(r.path) for r in recs]
        values = [level[r.path] for r in recs] if level else None
        groups = consecutive_id_groups(ids, values, min_size=class_min_size(len(recs), min_size))
        for r, g in zip(recs, groups, strict=True):
            new[r.path] = f"{label}#{g}"
        sizes += list(np.bincount(groups))
    out = [replace(r, group=new[r.path]) for r in records]
    how = (
        f"no specimen column: {len(sizes)} groups of consecutive IDs per class "
        f"({'cut at ID gaps and median-intensity steps' if method == 'steps' else 'ID gaps and fixed blocks'}, "
        f"merged to >= min({min_size}, class/5) cells; sizes {min(sizes)}-{max(sizes)}, median {int(np.median(sizes))})"
    )
    return out, how
