"""Texture banks: deterministic float32 noise textures, built once per field size; every field paints
its patterns from random crops (with flips) of them, which is much faster than drawing new noise."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["REF_SIZE", "TextureBank", "texture_bank"]

REF_SIZE = 256  # the geometry is written for a 256x256 field and scaled by size / 256


def _norm(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    return (a / (a.std() + 1e-8)).astype(np.float32)


def _mean1(a: np.ndarray) -> np.ndarray:
    return (a / (a.mean() + 1e-8)).astype(np.float32)


class TextureBank:
    """Precomputed float32 textures of side ``2 * size``; fields use random crops of them."""

    def __init__(self, size: int, scale: float | None = None):
        s = size / REF_SIZE if scale is None else float(scale)
        t = 2 * size
        self.t = t
        r = np.random.default_rng(0x5EED_4E92)

        def smooth(sigma: float) -> np.ndarray:
            w = r.standard_normal((t, t)).astype(np.float32)
            return _norm(cv2.GaussianBlur(w, (0, 0), max(sigma * s, 0.3), borderType=cv2.BORDER_REFLECT))

        self.noise = r.standard_normal((t, t)).astype(np.float32)
        # fine grain (AC-4 like): dense tiny speckles, little gap between them
        self.fine = np.minimum(_mean1(np.maximum(smooth(0.6) + 0.4, 0.0) ** 1.3), 3.0)
        # coarse speckles (AC-5 like): discrete blobs with dark gaps
        self.coarse = np.minimum(_mean1(np.maximum(smooth(1.45) - 0.4, 0.0) ** 1.1), 3.5)
        # big clumps / holes
        self.blob = _mean1(np.maximum(smooth(2.8) - 0.6, 0.0))
        self.mid = smooth(4.0)
        self.low = smooth(14.0)
        # curvy thread networks: zero-crossings of smooth noise
        self.ridge = np.exp(-((smooth(2.4) / 0.28) ** 2)).astype(np.float32)
        self.ridge_thick = np.exp(-((smooth(2.2) / 0.45) ** 2)).astype(np.float32)


@lru_cache(maxsize=8)
def texture_bank(size: int, scale: float | None = None) -> TextureBank:
    return TextureBank(size, scale)
