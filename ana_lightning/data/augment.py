"""Fluorescence-aware augmentations that albumentations lacks, and helpers to look at a policy.

A policy is one YAML in ``conf/augmentation/`` (``none``, ``basic``, ``strong``, ``fluorescence``):
a ``train:`` list of albumentations transforms that :func:`ana_lightning.pipeline.build_datamodule`
instantiates and :mod:`ana_lightning.data.transforms` applies to the training split only.

Written by hand here, because albumentations has no equivalent:

- :class:`SignalIntensity`: brightness (gain), contrast and gamma of the *fluorescence intensity*
  only. Each pixel's RGB vector is multiplied by one factor, so its hue and saturation never change
  (green stays green) and no channel clips on its own (albumentations' ``RandomBrightnessContrast``
  and ``RandomGamma`` work per channel: gamma bends the channel ratios, and clipping one channel
  at 255 turns green-yellow pixels green).
- :class:`SignalNoise`: photon shot noise (standard deviation ∝ √intensity), again one factor per
  pixel (``MultiplicativeNoise(per_channel=False)`` is close, but clips channels independently and
  its noise does not grow as √signal).
- :class:`DropChannel`: sets one given channel to zero — the blue DAPI counterstain — so a model does
  not come to rely on it (``ChannelDropout`` drops a *random* channel, which could be the FITC signal).

>>> import numpy as np
>>> img = np.zeros((8, 8, 3), np.uint8); img[..., 1] = 200; img[..., 0] = 100
>>> out = SignalIntensity(gain_limit=(0.5, 0.5), contrast_limit=0, gamma_limit=(100, 100), p=1)(image=img)["image"]
>>> out[0, 0].tolist()
[50, 100, 0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import albumentations as A
import cv2
import numpy as np

__all__ = [
    "SignalIntensity",
    "SignalNoise",
    "DropChannel",
    "POLICIES",
    "load_policy",
    "policy_grid",
    "hue_degrees",
]

#: The packaged policies, in the order a grid shows them.
POLICIES = ("none", "basic", "strong", "fluorescence")


def _pair(value: float | Sequence[float], around: float = 0.0) -> tuple[float, float]:
    """``x`` → ``(around - x, around + x)``; a pair stays a pair."""
    if isinstance(value, (int, float)):
        return (around - float(value), around + float(value))
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"range {list(value)} is decreasing")
    return lo, hi


def _intensity(img: np.ndarray) -> np.ndarray:
    """Per-pixel fluorescence intensity: the brightest channel (HSV's value), same dtype as ``img``."""
    if img.ndim == 2:
        return img
    v = img[..., 0]
    for c in range(1, img.shape[2]):
        v = cv2.max(v, img[..., c])  # ~25x faster than img.max(axis=2) on small channel counts
    return v


def _apply_factor(img: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Multiply every channel of each pixel by that pixel's ``factor`` (float32, H×W), keeping the dtype."""
    if img.ndim == 2:
        stacked = factor
    else:
        stacked = np.repeat(factor[..., None], img.shape[2], axis=2)
    if img.dtype == np.uint8:
        return cv2.multiply(img, stacked, dtype=cv2.CV_8U)  # rounds and saturates
    return np.clip(img * stacked, 0.0, 1.0).astype(img.dtype)


def _factor_from_intensity(v: np.ndarray, new: np.ndarray, top: float) -> np.ndarray:
    """``new / v``, capped so the brightest channel never exceeds ``top`` (0 where ``v`` is 0)."""
    new = np.clip(new, 0.0, top).astype(np.float32)
    v = v.astype(np.float32)
    return np.divide(new, v, out=np.zeros_like(new), where=v > 0)


class SignalIntensity(A.ImageOnlyTransform):
    """Random gain, contrast and gamma of the per-pixel intensity; hue and saturation kept exactly.

    Args:
        gain_limit: multiplicative brightness range (exposure time, antibody titre); a number ``x``
            means ``(1 - x, 1 + x)``.
        contrast_limit: contrast exponent range around the mean signal intensity ``m``: intensity
            ``v`` becomes ``m·(v/m)^c`` with ``c`` in ``(1 - x, 1 + x)``, so black stays black and the
            ratio of bright to faint structures grows (``c > 1``) or shrinks (``c < 1``).
        gamma_limit: gamma range in percent, as in ``RandomGamma`` (``(80, 120)``: γ in 0.8…1.2).
        p: probability of applying the transform.
    """

    def __init__(
        self,
        gain_limit: float | Sequence[float] = 0.3,
        contrast_limit: float | Sequence[float] = 0.2,
        gamma_limit: Sequence[float] = (80, 120),
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.gain_limit = _pair(gain_limit, 1.0)
        self.contrast_limit = _pair(contrast_limit, 1.0)
        self.gamma_limit = _pair(gamma_limit)
        if self.gain_limit[0] < 0 or self.contrast_limit[0] < 0 or self.gamma_limit[0] <= 0:
            raise ValueError(
                f"SignalIntensity: gain {self.gain_limit}, contrast {self.contrast_limit} and gamma "
                f"{self.gamma_limit} must stay positive"
            )

    def get_params(self) -> dict[str, float]:
        return {
            "gain": self.py_random.uniform(*self.gain_limit),
            "contrast": self.py_random.uniform(*self.contrast_limit),
            "gamma": self.py_random.uniform(*self.gamma_limit) / 100.0,
        }

    def apply(
        self, img: np.ndarray, gain: float = 1.0, contrast: float = 1.0, gamma: float = 1.0, **params: Any
    ) -> np.ndarray:
        v = _intensity(img)
        if img.dtype == np.uint8:  # one factor per grey level: a 256-entry table, then one gather
            levels = np.arange(256, dtype=np.float64)
            counts = np.bincount(v.ravel(), minlength=256)
            lut = self._curve(levels, counts, 255.0, gain, contrast, gamma)
            return _apply_factor(img, _factor_from_intensity(levels, lut, 255.0)[v])
        vv = v.astype(np.float64)
        new = self._curve(vv.ravel(), np.ones(vv.size), 1.0, gain, contrast, gamma).reshape(vv.shape)
        return _apply_factor(img, _factor_from_intensity(vv, new, 1.0))

    @staticmethod
    def _curve(
        levels: np.ndarray, counts: np.ndarray, top: float, gain: float, contrast: float, gamma: float
    ) -> np.ndarray:
        """New intensity of each level (``counts``: how many pixels have it, for the signal's mean)."""
        new = top * np.power(levels / top, gamma)
        signal = new > 0.1 * top  # the stained structures, not the dark background
        if contrast != 1.0 and counts[signal].sum() > 0:
            mean = float((new[signal] * counts[signal]).sum() / counts[signal].sum())
            new = mean * np.power(new / mean, contrast)
        return gain * new

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gain_limit", "contrast_limit", "gamma_limit")


class SignalNoise(A.ImageOnlyTransform):
    """Photon shot noise on the per-pixel intensity (σ = ``scale``·√(intensity · full scale)).

    Every channel of a pixel is scaled by the same noisy factor, so hue and saturation are kept and
    a black background stays black.

    Args:
        scale_range: range of the noise scale; 0.05 gives σ ≈ 11 grey levels at intensity 200 (uint8).
        p: probability of applying the transform.
    """

    def __init__(self, scale_range: Sequence[float] = (0.01, 0.05), p: float = 0.5):
        super().__init__(p=p)
        self.scale_range = _pair(scale_range)
        if self.scale_range[0] < 0:
            raise ValueError(f"SignalNoise: scale_range {list(scale_range)} must be non-negative")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"] if "image" in data else data["images"][0]
        scale = self.py_random.uniform(*self.scale_range)
        return {"noise": scale * self.random_generator.standard_normal(image.shape[:2], dtype=np.float32)}

    def apply(self, img: np.ndarray, noise: np.ndarray | None = None, **params: Any) -> np.ndarray:
        if noise is None:
            return img
        v = _intensity(img)
        if img.dtype == np.uint8:  # factor = 1 + n·√(255 / v), capped at 255 / v: tables over the 256 levels
            levels = np.arange(256, dtype=np.float32)
            with np.errstate(divide="ignore"):
                spread = np.where(levels > 0, np.sqrt(255.0 / np.maximum(levels, 1)), 0).astype(np.float32)
                cap = np.where(levels > 0, 255.0 / np.maximum(levels, 1), 0).astype(np.float32)
            factor = np.clip(1.0 + noise * spread[v], 0.0, cap[v])
            return _apply_factor(img, factor.astype(np.float32))
        vv = v.astype(np.float32)
        return _apply_factor(img, _factor_from_intensity(vv, vv + noise * np.sqrt(vv), 1.0))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale_range",)


class DropChannel(A.ImageOnlyTransform):
    """Set one channel to ``fill`` (default: channel 2, the blue DAPI counterstain, to 0).

    Args:
        channel: index of the channel to drop (RGB order: 0 red, 1 green / FITC, 2 blue / DAPI).
        fill: the value written into the dropped channel.
        p: probability of applying the transform.
    """

    def __init__(self, channel: int = 2, fill: float = 0, p: float = 0.5):
        super().__init__(p=p)
        self.channel = int(channel)
        self.fill = fill

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.ndim != 3 or not 0 <= self.channel < img.shape[2]:
            raise ValueError(
                f"DropChannel: channel {self.channel} does not exist in an image of shape {img.shape}"
            )
        out = img.copy()
        out[..., self.channel] = self.fill
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("channel", "fill")


# ---------------------------------------------------------------------------------------------- helpers
def load_policy(name: str, **overrides: Any) -> list[A.BasicTransform]:
    """The transforms of a packaged policy (``conf/augmentation/<name>.yaml``), instantiated.

    ``overrides`` set top-level keys of the policy first (e.g. ``dapi_drop=0.3`` for ``fluorescence``).

    >>> [type(t).__name__ for t in load_policy("basic")]
    ['HorizontalFlip', 'VerticalFlip', 'RandomRotate90']
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    folder = resources.files("ana_lightning.conf").joinpath("augmentation")
    f = folder.joinpath(f"{name}.yaml")
    if not f.is_file():
        known = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ValueError(f"unknown augmentation policy {name!r}; known: {', '.join(known)}")
    cfg = OmegaConf.create({"augmentation": OmegaConf.create(f.read_text())})
    for k, v in overrides.items():
        if k not in cfg.augmentation:
            raise ValueError(f"augmentation policy {name!r} has no key {k!r}")
        cfg.augmentation[k] = v
    return list(instantiate(cfg.augmentation.train)) if cfg.augmentation.get("train") else []


def policy_grid(
    image: np.ndarray,
    policies: Mapping[str, Sequence[A.BasicTransform]],
    n_samples: int = 6,
    seed: int = 0,
    label_width: int = 110,
) -> np.ndarray:
    """One row per policy: the original image, then ``n_samples`` augmented draws (``uint8`` RGB).

    Each row starts with the policy's name, so a person can check the policies side by side.
    """
    h, w = image.shape[:2]
    rows = []
    for r, (name, transforms) in enumerate(policies.items()):
        pipe = A.Compose(list(transforms), seed=seed + r) if transforms else None
        tiles = [image] + [pipe(image=image)["image"] if pipe else image for _ in range(n_samples)]
        tiles = [
            cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA) if t.shape[:2] != (h, w) else t for t in tiles
        ]
        label = np.zeros((h, label_width, 3), np.uint8)
        cv2.putText(
            label, name, (6, h // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
        sep = np.full((h, 2, 3), 255, np.uint8)
        rows.append(np.concatenate([label, *[x for t in tiles for x in (sep, t)]], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def hue_degrees(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees, 0…360), saturation and value (0…1) of an RGB ``uint8`` image, computed in float."""
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    return hsv[..., 0], hsv[..., 1], hsv[..., 2]
