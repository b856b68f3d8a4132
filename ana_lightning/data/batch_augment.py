"""Augmentation of whole training batches on the device (GPU), after the loader.

With ``augmentation=gpu`` the DataLoader only serves cached, resized, normalised images, and
:class:`BatchAugment` draws a flip / 90° rotation / intensity change *per image* on the device in
``on_after_batch_transfer``, so the loader's CPU work no longer limits a fast GPU.

Hand-written rather than torchvision or kornia: ``torchvision.transforms.v2`` draws one random
parameter per call (every image of the batch would flip together), and these few ops are exact
index permutations (the 8 symmetries of a square field, no interpolation) and an affine map of
intensities, which need nothing beyond torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["BatchAugment"]


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
        return (f"BatchAugment(flips={self.flips}, rot90={self.rot90}, brightness={self.brightness}, "
                f"contrast={self.contrast}, gamma={self.gamma}, p_intensity={self.p_intensity})")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"BatchAugment expects N×C×H×W images, got shape {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return x
        dev = x.device

        def pick(p: float = 0.5) -> torch.Tensor:
            return (torch.rand(n, device=dev) < p).view(n, 1, 1, 1)

        if self.flips:
            x = torch.where(pick(), x.flip(-1), x)
            x = torch.where(pick(), x.flip(-2), x)
        if self.rot90:
            if x.shape[-1] == x.shape[-2]:
                k = torch.randint(0, 4, (n,), device=dev).view(n, 1, 1, 1)
                out = x
                for turns in (1, 2, 3):
                    out = torch.where(k == turns, torch.rot90(x, turns, dims=(-2, -1)), out)
                x = out
            else:
                x = torch.where(pick(), torch.rot90(x, 2, dims=(-2, -1)), x)
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

        def factor(width: float) -> torch.Tensor:
            return 1.0 + (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * width

        y = (x * s + m).clamp(0, 1)
        on = torch.rand(n, 1, 1, 1, device=dev) < self.p_intensity
        z = y
        if self.gamma:
            z = z.clamp_min(1e-6) ** torch.exp((torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * self.gamma)
        if self.contrast:
            mu = z.mean(dim=(1, 2, 3), keepdim=True)
            z = (z - mu) * factor(self.contrast) + mu
        if self.brightness:
            z = z * factor(self.brightness)
        y = torch.where(on, z.clamp(0, 1), y)
        return (y - m) / s
