"""Cell masks: how a contest cell image is combined with its mask (``data.mask``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .images import load_image
from .records import ImageRecord

__all__ = ["MASK_MODES", "apply_mask", "masked_loader"]

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


def masked_loader(masks: dict[str, str], mode: str) -> Callable[[ImageRecord | str], np.ndarray]:
    """A ``record (or path) → H×W×3 uint8`` loader that applies each image's mask (see :func:`apply_mask`)."""

    def load(record: ImageRecord | str) -> np.ndarray:
        path = record.path if isinstance(record, ImageRecord) else str(record)
        image = load_image(path)
        mask_path = masks.get(path)
        if mask_path is None or mode == "none":
            return image
        try:
            return apply_mask(image, load_image(mask_path), mode)
        except ValueError as e:
            raise ValueError(f"{path} with mask {mask_path}: {e}") from None

    return load
