"""Albumentations pipelines: a policy (from ``conf/augmentation/``) wrapped in resize + normalise.

A policy is a list of albumentations transforms applied to the training split only; evaluation
splits get resize + normalisation. Mean and std come from the backbone (timm ``pretrained_cfg``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

__all__ = ["build_transform", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _ToTensor:
    """HWC float32 → CHW torch tensor (albumentations' ToTensorV2 without its import cost)."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class ImageTransform:
    """``uint8 HWC`` → normalised ``float32 CHW`` tensor, with optional augmentation first."""

    def __init__(self, image_size: int, augment: Sequence[A.BasicTransform] | None, mean, std):
        self.image_size = int(image_size)
        steps = list(augment or [])
        self.augment = A.Compose(steps) if steps else None
        self.normalize = A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)
        self.to_tensor = _ToTensor()
        self._seeded_in: int | None = None

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize to the model's input size (done once per image when images are cached)."""
        if image.shape[0] == self.image_size and image.shape[1] == self.image_size:
            return image
        return cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        image = self.resize(image)
        if self.augment is not None:
            if self._seeded_in != os.getpid():
                # albumentations keeps its own generator: seed it from torch's per-process seed (set by
                # seed_everything, distinct in every loader worker) so runs with one seed repeat.
                self.augment.set_random_seed(torch.initial_seed() % 2**32)
                self._seeded_in = os.getpid()
            image = self.augment(image=image)["image"]
            if image.shape[:2] != (self.image_size, self.image_size):
                image = self.resize(image)
        return self.to_tensor(self.normalize(image=image)["image"])


def build_transform(image_size: int, augment=None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> ImageTransform:
    return ImageTransform(image_size, augment, mean, std)
