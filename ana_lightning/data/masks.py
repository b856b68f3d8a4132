"""Cell masks: how a contest cell image is combined with its mask (``data.mask``), and how a cell is
re-cut around its mask to one framing whatever crop its dataset came in (``data.crop_fraction``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .images import load_image
from .records import ImageRecord

__all__ = ["MASK_MODES", "apply_mask", "check_crop_fraction", "masked_loader", "recrop"]

#: How an I3A mask is used: multiplied into the cell, put into the blue channel, or ignored.
MASK_MODES = ("apply", "channel", "none")


def apply_mask(image: np.ndarray, mask: np.ndarray, mode: str = "apply") -> np.ndarray:
    """Combine a cell image (``H×W×3 uint8``) with its mask (any image; non-zero = cell).

    ``apply``: pixels outside the mask set to 0; ``channel``: red and green carry the cell, blue the
    mask (255 inside); ``none``: the image unchanged.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    if mode == "none":
        return image
    m = (mask if mask.ndim == 2 else mask.max(axis=2)) > 0
    if m.shape != image.shape[:2]:
        raise ValueError(f"mask of shape {m.shape} does not fit its image of shape {image.shape[:2]}")
    if mode == "apply":
        return image * m[:, :, None].astype(image.dtype)
    out = image.copy()
    out[:, :, 2] = m.astype(np.uint8) * 255
    return out


def check_crop_fraction(fraction: float | None) -> float | None:
    """``data.crop_fraction`` as a float in (0, 1], or ``None``; anything else is refused by name."""
    if fraction is None:
        return None
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"data.crop_fraction must be a number in (0, 1] or null, got {fraction!r}") from None
    if not 0.0 < f <= 1.0:
        raise ValueError(f"data.crop_fraction must be in (0, 1] (the mask's share of the crop side), got {f}")
    return f


def recrop(image: np.ndarray, mask: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Re-cut a cell around its mask so that the mask's bounding box spans ``fraction`` of the crop.

    Contest datasets frame their cells differently: the I3A crops leave a margin (the mask's box is
    ~0.70 of the side), others cut the box tight (1.0), and a field's cells are cut with whatever
    margin the cutter used. A network trained on one framing reads another at a different scale. The
    new crop is square, centred on the mask's box, of side ``max(box height, box width) / fraction``;
    where it reaches past the image it is filled with the median of the image outside the mask (the
    slide's background; the image's darkest value when the mask leaves < 16 pixels outside), and the
    mask is 0 there. The result is resized to the model's input size later, as any crop is.
    """
    m = (mask if mask.ndim == 2 else mask.max(axis=2)) > 0
    if m.shape != image.shape[:2]:
        raise ValueError(f"mask of shape {m.shape} does not fit its image of shape {image.shape[:2]}")
    if not m.any():
        raise ValueError("the mask is empty: nothing to re-cut around (data.crop_fraction)")
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(1, int(round(max(r1 - r0, c1 - c0) / fraction)))
    top = int(round((r0 + r1 - side) / 2))
    left = int(round((c0 + c1 - side) / 2))
    h, w = m.shape
    outside = image[~m]
    fill = (
        np.median(outside, axis=0) if len(outside) >= 16 else image.reshape(-1, *image.shape[2:]).min(axis=0)
    )
    out = np.empty((side, side, *image.shape[2:]), dtype=image.dtype)
    out[...] = np.asarray(fill).astype(image.dtype)
    out_mask = np.zeros((side, side, *mask.shape[2:]), dtype=mask.dtype)
    R0, R1, C0, C1 = max(top, 0), min(top + side, h), max(left, 0), min(left + side, w)
    out[R0 - top : R1 - top, C0 - left : C1 - left] = image[R0:R1, C0:C1]
    out_mask[R0 - top : R1 - top, C0 - left : C1 - left] = mask[R0:R1, C0:C1]
    return out, out_mask


def masked_loader(
    masks: dict[str, str], mode: str, crop_fraction: float | None = None
) -> Callable[[ImageRecord | str], np.ndarray]:
    """A ``record (or path) → H×W×3 uint8`` loader that applies each image's mask (see :func:`apply_mask`),
    after re-cutting the cell around its mask when ``crop_fraction`` is set (see :func:`recrop`)."""
    crop_fraction = check_crop_fraction(crop_fraction)

    def load(record: ImageRecord | str) -> np.ndarray:
        path = record.path if isinstance(record, ImageRecord) else str(record)
        image = load_image(path)
        mask_path = masks.get(path)
        if mask_path is None or (mode == "none" and crop_fraction is None):
            return image
        try:
            mask = load_image(mask_path, camera=False)
            if crop_fraction is not None:
                image, mask = recrop(image, mask, crop_fraction)
            return apply_mask(image, mask, mode)
        except ValueError as e:
            raise ValueError(f"{path} with mask {mask_path}: {e}") from None

    return load
