"""What a model reads from a field: tiles at the model's scale (field models) or one crop per cell
(cell models), made the way the contest training cells were made.

Contest cell crops (I3A / ICPR 2014 Task 1) are the bounding box of one cell's mask, cut from the
raw 8-bit grey field (not masked: neighbours' edges stay in the corners), with the binary mask beside
it. :func:`cell_crops` makes the same: the bounding box of each segmented cell (``crop_from="nuclei"``
by default: in HEp-2 IIF the stained body is the nucleus for nuclear patterns) with a small margin,
in grey (the brightest channel, i.e. the FITC signal, without the blue of a DAPI counterstain) or RGB.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .segment import Segmentation

__all__ = ["CellCrop", "cell_crops", "rescale", "tiles", "Tile"]


@dataclass
class CellCrop:
    label: int
    bbox: tuple[int, int, int, int]  # row0, col0, row1, col1 in the field
    image: np.ndarray  # h×w×3 uint8
    mask: np.ndarray  # h×w bool: the cell's own pixels
    mitotic: bool
    touches_border: bool
    area: int


def _grey3(image: np.ndarray, dapi: bool = False) -> np.ndarray:
    """The stain as grey, three times: the brightest channel, leaving blue out when it is a DAPI counterstain
    (``dapi``: the segmentation found its nuclei there), which would show every nucleus as homogeneous."""
    img = np.asarray(image)
    if img.ndim == 2:
        g = img
    else:
        g = img[..., : 2 if dapi else 3].max(axis=2)
    return np.repeat(g[..., None], 3, axis=2).astype(np.uint8)


def cell_crops(
    image: np.ndarray,
    seg: Segmentation,
    crop_from: str = "nuclei",
    margin: float = 0.1,
    grey: bool = True,
    mask_mode: str = "none",
    fraction: float | None = None,
) -> list[CellCrop]:
    """One crop per segmented cell (label order). ``margin``: fraction of the box size added around it.
    ``mask_mode``: how a contest-trained model saw its cell masks (``none``, ``apply``: zero outside the
    cell, ``channel``: the mask in the blue channel; :func:`ana_lightning.data.contest.apply_mask`).
    ``fraction``: instead of ``margin``, a square crop in which the cell's box spans this share of the
    side (a model trained with ``data.crop_fraction``; :func:`ana_lightning.data.masks.recrop`, which
    fills what lies past the field's edge with the background)."""
    from ..data.contest import apply_mask
    from ..data.masks import check_crop_fraction, recrop

    fraction = check_crop_fraction(fraction)

    if crop_from not in ("nuclei", "cells"):
        raise ValueError(f"crop_from={crop_from!r} must be 'nuclei' or 'cells'")
    dapi = seg.channel == "dapi"  # a counterstain the cell models never saw: left out in grey and in colour
    img = _grey3(image, dapi) if grey else np.asarray(image)[..., :3].astype(np.uint8)
    if dapi and not grey:
        img = img.copy()
        img[..., 2] = 0
    lab = seg.nuclei if crop_from == "nuclei" else seg.cells
    h, w = lab.shape
    out = []
    for i, sl in enumerate(_objects(lab), start=1):
        if sl is None:
            continue
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        big = max(r1 - r0, c1 - c0)
        m = int(round(margin * big)) if fraction is None else int(math.ceil(big * (1 / fraction - 1) / 2)) + 2
        R0, R1, C0, C1 = max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)
        mask = lab[R0:R1, C0:C1] == i
        crop = img[R0:R1, C0:C1].copy()
        if fraction is not None:
            crop, mask = recrop(crop, mask, fraction)
        crop = apply_mask(crop, mask, mask_mode)
        out.append(
            CellCrop(
                i,
                (R0, C0, R1, C1),
                crop,
                mask,
                bool(seg.mitotic[i]),
                bool(seg.touches_border[i]) if i < seg.touches_border.size else False,
                int(mask.sum()),
            )
        )
    return out


def _objects(lab: np.ndarray) -> list:
    from scipy import ndimage as ndi

    return ndi.find_objects(lab)


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` (area averaging when shrinking)."""
    if abs(factor - 1.0) < 1e-3:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


@dataclass
class Tile:
    image: np.ndarray  # tile×tile×C, in the rescaled field
    box: tuple[int, int, int, int]  # row0, col0, row1, col1 in the ORIGINAL field's pixels


def tiles(image: np.ndarray, factor: float, tile: int, overlap: float = 0.25) -> Iterator[Tile]:
    """Square tiles of side ``tile`` covering the field rescaled by ``factor`` (reflect-padded when the
    rescaled field is smaller than a tile), on a grid with the given overlap."""
    img = rescale(np.asarray(image), factor)
    h, w = img.shape[:2]
    if h < tile or w < tile:
        ph, pw = max(0, tile - h), max(0, tile - w)
        img = cv2.copyMakeBorder(img, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT)
    H, W = img.shape[:2]
    step = max(1, int(round(tile * (1.0 - overlap))))

    def starts(n: int) -> list[int]:
        k = max(1, math.ceil((n - tile) / step) + 1)
        return sorted({min(i * step, n - tile) for i in range(k)})

    for r in starts(H):
        for c in starts(W):
            box = tuple(int(round(v / factor)) for v in (r, c, r + tile, c + tile))
            yield Tile(img[r : r + tile, c : c + tile], box)  # type: ignore[arg-type]
