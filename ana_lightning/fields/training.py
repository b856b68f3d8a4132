"""Training on fields at a fixed scale (``data.nucleus_diameter_px``).

:class:`ScaledFieldTransform` wraps the evaluation/training transform of a datamodule: each field is
rescaled so that its nuclei (estimated, :func:`~ana_lightning.fields.scale.estimate_nucleus_diameter`)
are ``nucleus_diameter_px`` across, then its centre square of the model's input size is taken
(reflect-padded when smaller) instead of resizing the whole field. ``ana-predict`` reads fields the
same way (tiles of the input size at the same scale), so a model trained at one magnification reads
another. The scale used is stored in the checkpoint with the datamodule's hyperparameters.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import cv2
import numpy as np

from ..data.transforms import ImageTransform
from .crops import rescale
from .scale import estimate_nucleus_diameter

__all__ = ["ScaledFieldTransform", "to_scale"]


def to_scale(
    image: np.ndarray, field_diameter_px: float, nucleus_diameter_px: float, size: int
) -> np.ndarray:
    """The centre ``size × size`` square of ``image`` rescaled from ``field_diameter_px`` to
    ``nucleus_diameter_px`` nuclei (reflect-padded when the rescaled field is smaller)."""
    img = rescale(np.asarray(image), float(nucleus_diameter_px) / float(field_diameter_px))
    h, w = img.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = cv2.copyMakeBorder(img, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT)
        h, w = img.shape[:2]
    r, c = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[r : r + size, c : c + size])


class ScaledFieldTransform:
    """``transform`` applied to fields brought to ``nucleus_diameter_px`` (see the module docstring)."""

    def __init__(
        self, transform: ImageTransform, nucleus_diameter_px: float, fallback_diameter_px: float | None = None
    ) -> None:
        if not float(nucleus_diameter_px) > 0:
            raise ValueError(
                f"data.nucleus_diameter_px={nucleus_diameter_px} must be a positive number of pixels"
            )
        self.inner = transform
        self.image_size = transform.image_size
        self.nucleus_diameter_px = float(nucleus_diameter_px)
        self.fallback = fallback_diameter_px
        self.resize_name = f"nucleus{self.nucleus_diameter_px:g}"  # in the mmap cache key
        self._memo: OrderedDict[str, float] = OrderedDict()
        self._made: OrderedDict[str, None] = OrderedDict()  # digests of images already brought to scale

    def field_diameter(self, image: np.ndarray) -> float:
        key = self._key(image)
        if key in self._memo:
            return self._memo[key]
        try:
            est = estimate_nucleus_diameter(image)
            d = est.diameter_px if est.reliable or self.fallback is None else float(self.fallback)
        except ValueError:
            d = float(self.fallback) if self.fallback else self.image_size / 10.0
        self._memo[key] = d
        if len(self._memo) > 50_000:
            self._memo.popitem(last=False)
        return d

    @staticmethod
    def _key(image: np.ndarray) -> str:
        return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=12).hexdigest()

    def resize(self, image: np.ndarray) -> np.ndarray:
        """A raw field → its centre square at the training scale; an image this made (a cached one) as is."""
        if image.shape[:2] == (self.image_size, self.image_size) and self._key(image) in self._made:
            return image
        out = to_scale(image, self.field_diameter(image), self.nucleus_diameter_px, self.image_size)
        self._made[self._key(out)] = None
        if len(self._made) > 200_000:
            self._made.popitem(last=False)
        return out

    def __call__(self, image: np.ndarray):
        return self.inner(self.resize(image))
