"""Augmentation of whole training batches on the device (GPU), after the loader.

With ``augmentation=gpu`` the DataLoader only serves cached, resized, normalised images, and
:class:`BatchAugment` draws a flip / 90° rotation / intensity change *per image* on the device in
``on_after_batch_transfer``, so the loader's CPU work no longer limits a fast GPU.

Hand-written rather than torchvision or kornia. ``torchvision.transforms.v2`` draws one random
parameter per call (every image of the batch would flip together). ``kornia.augmentation`` does draw
per image, and was measured against this module (``experiments/benchmarks/batch_augment_vs_kornia.py``:
``RandomHorizontalFlip`` + ``RandomVerticalFlip`` + ``RandomRotation90`` and ``ColorJitter`` between
``Denormalize``/``Normalize``, the settings of ``conf/augmentation/gpu.yaml``). Kept ours because:

- **exact**: our flips and 90° turns are index permutations (the 8 symmetries of a square field, drawn
  evenly); kornia's ``RandomRotation90`` goes through an affine warp and is off by up to ~2e-5;
- **faster on CPU** (one thread, 128 px, batches of 32-256, medians of 9 calls interleaved with
  kornia's): geometry 1.5-1.8x, intensity 3-6x, both together 2.0-2.2x faster; each op is computed
  only on the images drawn for it;
- **the intensity model fluorescence needs**: brightness is a gain (kornia's ``RandomBrightness`` adds
  an offset; its ``ColorJitter`` brightness is a gain too, but its contrast pivots on the grey (luma)
  mean, ours on the image mean); and no new dependency for ~100 lines of torch.

kornia would earn its place for transforms we do not have (elastic, perspective, blur on the
device); ``data/cell_augment.py`` is the place where such a need would show first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["BatchAugment"]


def _on(x: torch.Tensor, chosen: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x`` with ``op`` applied to the images where ``chosen`` (a bool vector) is true."""
    idx = chosen.nonzero().flatten()
    if idx.numel() == 0:
        return x
    return x.index_copy(0, idx, op(x.index_select(0, idx)))


class BatchAugment:
    """Random dihedral symmetry and intensity jitter for a batch of normalised ``N×C×H×W`` images.

    Args:
        flips: random horizontal and vertical flips (each with probability 0.5).
        rot90: random rotation by 0/90/180/270° (square images only; others get 0/180°).
        brightness: intensity scaled by a factor in ``[1 - b, 1 + b]`` (a brighter or dimmer field).
        contrast: deviation from the image mean scaled by ``[1 - c, 1 + c]``.
        gamma: intensity raised to ``exp(U(-g, g))``.
        p_intensity: probability that an image gets the intensity changes at all.

    Intensities are changed in ``[0, 1]`` units (undoing the normalisation with ``mean``/``std``),
    clipped, and normalised again.

    >>> x = torch.randn(8, 3, 32, 32)
    >>> BatchAugment(brightness=0.2)(x, mean=(0.5,) * 3, std=(0.25,) * 3).shape
    torch.Size([8, 3, 32, 32])
    """

    def __init__(
        self,
        flips: bool = True,
        rot90: bool = True,
        brightness: float = 0.0,
        contrast: float = 0.0,
        gamma: float = 0.0,
        p_intensity: float = 1.0,
    ):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("gamma", gamma)):
            if not 0.0 <= float(v) < 1.0:
                raise ValueError(f"BatchAugment: {name}={v} must be in [0, 1)")
        if not 0.0 <= float(p_intensity) <= 1.0:
            raise ValueError(f"BatchAugment: p_intensity={p_intensity} must be in [0, 1]")
        self.flips, self.rot90 = bool(flips), bool(rot90)
        self.brightness, self.contrast, self.gamma = float(brightness), float(contrast), float(gamma)
        self.p_intensity = float(p_intensity)

    def __repr__(self) -> str:
        return (
            f"BatchAugment(flips={self.flips}, rot90={self.rot90}, brightness={self.brightness}, "
            f"contrast={self.contrast}, gamma={self.gamma}, p_intensity={self.p_intensity})"
        )

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)
    ) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"BatchAugment expects N×C×H×W images, got shape {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return x
        dev = x.device

        def pick(p: float = 0.5) -> torch.Tensor:
            return (torch.rand(n, device=dev) < p).view(n, 1, 1, 1)

        # Each op is applied to the images drawn for it only (index_copy of the chosen subset), not
        # computed for the whole batch and selected with torch.where: 2-3x less work for rotations.
        if self.flips:
            x = _on(x, pick().view(n), lambda t: t.flip(-1))
            x = _on(x, pick().view(n), lambda t: t.flip(-2))
        if self.rot90:
            if x.shape[-1] == x.shape[-2]:
                k = torch.randint(0, 4, (n,), device=dev)
                for turns in (1, 2, 3):
                    x = _on(x, k == turns, lambda t, turns=turns: torch.rot90(t, turns, dims=(-2, -1)))
            else:
                x = _on(x, pick().view(n), lambda t: torch.rot90(t, 2, dims=(-2, -1)))
        if self.brightness or self.contrast or self.gamma:
            x = self._intensity(x, mean, std)
        return x

    def _intensity(self, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        n, c = x.shape[:2]
        dev, dt = x.device, x.dtype
        m = torch.as_tensor(mean, device=dev, dtype=dt).view(1, -1, 1, 1)
        s = torch.as_tensor(std, device=dev, dtype=dt).view(1, -1, 1, 1)
        if m.shape[1] != c or s.shape[1] != c:
            raise ValueError(f"BatchAugment: mean/std have {m.shape[1]}/{s.shape[1]} values for {c} channels")

        def draw(width: float) -> torch.Tensor:
            return (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * width

        # the draws for every image, in a fixed order; then only the chosen images are computed
        on = (torch.rand(n, device=dev) < self.p_intensity).nonzero().flatten()
        gamma = torch.exp(draw(self.gamma)) if self.gamma else None
        contrast = 1.0 + draw(self.contrast) if self.contrast else None
        brightness = 1.0 + draw(self.brightness) if self.brightness else None
        if on.numel() == 0:
            return x
        z = (x.index_select(0, on) * s + m).clamp(0, 1)
        if gamma is not None:
            z = z.clamp_min(1e-6) ** gamma[on]
        if contrast is not None:
            mu = z.mean(dim=(1, 2, 3), keepdim=True)
            z = (z - mu) * contrast[on] + mu
        if brightness is not None:
            z = z * brightness[on]
        return x.index_copy(0, on, (z.clamp(0, 1) - m) / s)
