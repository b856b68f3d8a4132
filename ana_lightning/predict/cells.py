"""Cell crops as ``ana-predict`` input: one cell per image, each with its mask beside it.

A lab or a contest often has its cells already cut (the I3A / ICPR contest layouts, or another tool's
segmentation): ``<ID>.png`` with ``<ID>_mask.png`` (or ``_Mask``, ``-mask``; or the same name in a
``mask``/``masks`` folder beside the cells). A cell model reads each such crop as one cell, prepared as
in training: re-cut around its mask at the model's framing (``data.crop_fraction``,
:func:`~ana_lightning.data.masks.recrop`) and combined with the mask as the model's ``data.mask`` says,
by the loader the datamodule reads its cells with (:func:`~ana_lightning.data.masks.masked_loader`). Read as fields instead, every crop would be segmented
again and the mask files predicted as images.

:func:`pair_masks` finds each cell's mask; :func:`cell_loader` prepares a cell, and a cell that cannot
be prepared (no mask where the model needs one, an empty or misfitting mask, an unreadable mask file)
becomes an error row naming the file, never a silent guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.contest import _MASK_NAME as _MASK_SUFFIX  # the contest readers' mask names
from ..data.contest import _id_keys, _is_mask
from ..data.images import BadImageError, load_image
from ..data.masks import check_crop_fraction, masked_loader

__all__ = ["pair_masks", "look_like_cut_cells", "cell_loader", "mask_use", "cell_specimens"]

_MASK_DIRS = ("mask", "masks")


def _keys(folder: Path, stem: str) -> list[tuple[str, str]]:
    """A cell's keys: its folder and its name as the contest readers match it (``00012`` also as ``12``)."""
    return [(str(folder), n) for n in _id_keys(stem)]


def pair_masks(files: Sequence[str | Path]) -> tuple[list[Path], dict[str, str], dict[str, str]]:
    """``(cell images, cell path → its mask's path, cell path → why it has no mask)`` of image files.

    Mask files are taken out of the cells. A mask pairs with the cell of the same name (``00012`` also
    as ``12``) in its folder (``<name>_mask.<ext>``); a mask in a ``mask``/``masks`` folder pairs with
    the cell of its name beside that folder or in a folder beside it (``images/``). A cell with two
    candidate masks gets none, and the reason is kept (so its row says why)."""
    beside: dict[tuple[str, str], list[Path]] = {}  # <name>_mask.<ext> in the cell's folder
    in_dir: dict[tuple[str, str], list[Path]] = {}  # masks/<name>.<ext>, keyed by the folder holding masks/
    cells: list[Path] = []
    for p in (Path(f) for f in files):
        if not _is_mask(p):
            cells.append(p)
            continue
        stem = _MASK_SUFFIX.sub("", p.stem) or p.stem
        if p.parent.name.lower() in _MASK_DIRS:
            index, folder = in_dir, p.parent.parent
        else:
            index, folder = beside, p.parent
        for k in _keys(folder, stem):
            index.setdefault(k, []).append(p)
    masks: dict[str, str] = {}
    problems: dict[str, str] = {}
    for c in cells:
        keys = _keys(c.parent, c.stem)
        found = {m for k in keys for m in beside.get(k, []) + in_dir.get(k, [])}
        if not found:  # cells in images/, masks in masks/ beside it
            found = {m for k in _keys(c.parent.parent, c.stem) for m in in_dir.get(k, [])}
        if len(found) == 1:
            masks[str(c)] = str(found.pop())
        elif len(found) > 1:
            problems[str(c)] = (
                f"{len(found)} masks match this cell ({', '.join(sorted(str(m) for m in found))}): keep one"
            )
    return cells, masks, problems


def look_like_cut_cells(masks: Mapping[str, str], sample: int = 5) -> bool:
    """Whether the paired masks are those of cut cells: one object each (the median over up to
    ``sample`` of them has at most 2 connected regions). A field's mask (many nuclei, or a label
    image) has many, and its images are read as fields. Unreadable masks are left to the cells' rows."""
    import cv2

    counts = []
    for mask_path in sorted(masks.values())[:sample]:
        try:
            m = load_image(mask_path, camera=False)
        except BadImageError:
            continue
        n, _ = cv2.connectedComponents((m.max(axis=2) > 0).astype(np.uint8), connectivity=8)
        counts.append(n - 1)
    return not counts or float(np.median(counts)) <= 2


def mask_use(mask_mode: str, crop_fraction: float | None) -> str:
    """How a cell model reads each cell's mask, in words (for logs and error messages)."""
    parts = []
    if crop_fraction is not None:
        parts.append(f"re-cut so its mask's box spans {crop_fraction:g} of the crop (data.crop_fraction)")
    if mask_mode == "channel":
        parts.append("its mask in the blue channel (data.mask=channel)")
    elif mask_mode == "apply":
        parts.append("everything outside its mask set to 0 (data.mask=apply)")
    return " and ".join(parts) or "without its mask"


def cell_loader(
    masks: Mapping[str, str],
    mask_mode: str,
    crop_fraction: float | None,
    problems: Mapping[str, str] | None = None,
) -> Callable[[str | Path], np.ndarray]:
    """A ``path → H×W×3 uint8`` loader of cell crops, prepared as a model trained with ``data.mask``
    = ``mask_mode`` and ``data.crop_fraction`` = ``crop_fraction`` read its training cells. Raises
    :class:`BadImageError` naming the cell (and its mask) when the cell cannot be prepared that way
    (``problems``: cells known to be unpreparable, e.g. with two masks, and why)."""
    inner = masked_loader(masks, mask_mode, crop_fraction)  # what the datamodule reads its cells with
    need = mask_mode != "none" or crop_fraction is not None
    how = mask_use(mask_mode, check_crop_fraction(crop_fraction))

    def load(path: str | Path) -> np.ndarray:
        if need and str(path) in (problems or {}):
            raise BadImageError(path, problems[str(path)])
        if need and str(path) not in masks:
            raise BadImageError(
                path,
                f"no mask beside this cell (<name>_mask.png, or masks/<name>.png): the model reads each cell {how}; "
                "give its mask, or cell_mask=none crop_fraction=null to read it without (not as in training)",
            )
        try:
            return inner(str(path))
        except BadImageError:  # the cell's own file
            raise
        except ValueError as e:  # its mask: unreadable, empty or misfitting (the message names both files)
            raise BadImageError(path, str(e)) from None

    return load


def cell_specimens(
    predictions: Sequence[Any],
    groups: Mapping[Path, str],
    cfg: Mapping[str, Any],
    predictor: Any,
    out_dir: Path,
) -> Path:
    """``group_by`` for cut cells: each specimen's cells combined into one verdict, as a lab reads a
    well (``combine``: ``mean_log`` of the cell probabilities, or ``vote``, the share of cells per
    class), written as ``specimens.csv`` (``n_cells``, ``n_cells_used``) with the report. ``groups``:
    each cell file's specimen (``fields.job._groups``, read before predicting). A specimen with fewer
    than ``min_cells`` predicted cells is ``insufficient cells``."""
    from ..fields.combine import INSUFFICIENT
    from ..fields.predictor import FieldResult
    from ..fields.specimens import specimen_verdicts, write_specimens

    paths = [Path(p.path) for p in predictions]
    results = [
        FieldResult(
            p.path,
            status="ok" if p.ok else "error",
            error=p.error or "",
            verdict=tuple(p.labels),
            probs=p.probabilities,
            unit="cells",
            n_used=int(p.ok),
            n_cells=1,
            group=groups[path],
        )
        for p, path in zip(predictions, paths, strict=True)
    ]
    rows = specimen_verdicts(
        results,
        predictor,
        cfg.get("combine", "mean_log"),
        cfg.get("top_k", 3),
        cfg.get("pattern_min_prob", 0.25),
    )
    min_cells = int(cfg.get("min_cells", 5))
    for r in rows:
        if r["n_fields_used"] < min_cells:
            r.update(screening=INSUFFICIENT, patterns="", verdict=INSUFFICIENT, probs=None)
    return write_specimens(rows, predictor.class_names, out_dir, unit="cell", max_listed=24)
