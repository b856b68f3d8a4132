"""Augmentation of whole batches of single-cell crops, in torch (``augmentation=cells``).

Runs in the datamodule's ``on_after_batch_transfer`` like :class:`~.batch_augment.BatchAugment`, on
whatever device the batch is on, one random draw per cell. Two families:

- **geometry** — a cell has no orientation: any rotation angle, flips, a mild scale change (another
  microscope's magnification);
- **acquisition** — what another lab's images differ by: camera gain (``gain``: brightness ×0.3…×4,
  applied in 8-bit units so that dim cells lose grey levels and bright ones saturate, as they do in a
  real camera), gamma, optical blur, sensor noise, a background offset, and **haze** (``haze``): a
  widely blurred copy of the cell blended in, as out-of-focus and scattered light lay a diffuse glow
  over and around the cell and lower the contrast of its fine structure. Off in ``augmentation=cells``:
  screened against a centromere specimen that the recipe reads as speckled (dots on a bright diffuse
  plateau), it did not change that specimen and lowered validation MCA (0.729 vs 0.744;
  ``experiments/i3a_cells/README.md``, round 4). Kept for images hazier than the I3A cells. And a
  **plateau** (``plateau``): a smooth diffuse level added over the cell's mask, as nonspecific
  nucleoplasmic staining lays one under the pattern (centromere dots on a bright plateau). Also off:
  it fixed half of that specimen but cost others, and over 7 grouped validation splits it lost
  (3 wins, mean −0.018; its grouped CV test MCA equals the recipe's).

And one of **framing** (``tight``): a dataset that crops each cell to its mask's bounding box keeps
nothing of the slide around it; re-framed by ``data.crop_fraction`` (:func:`~.masks.recrop`), such a
cell shows a flat background outside its box. With probability ``tight`` a training cell is shown that
way: every pixel outside its mask's box set to the median of the pixels inside the box but outside the
mask (the crop's darkest value when fewer than 16). Needs ``mask=channel``.

With per-cell normalisation in the network (:class:`~ana_lightning.models.cells.CellInput`) the gain
mostly cancels; what remains (quantisation, saturation, gamma, blur, noise) is what a model must learn
to ignore. Images arrive normalised with ``mean``/``std`` and leave the same way; with
``mask=channel`` the blue channel is the mask: it is moved with the cell but its intensity is never
changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["CellAugment", "gaussian_blur"]


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``N×C×H×W`` with its own Gaussian ``sigma`` (``N``; 0 = unchanged)."""
    n, c, h, w = x.shape
    radius = min(max(1, int(math.ceil(3 * float(sigma.max())))), h - 1, w - 1)  # reflect padding < size
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype).clamp_min(1e-3).view(n, 1)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * s**2))
    k = k / k.sum(dim=1, keepdim=True)  # N × K; sigma → 0 gives a delta
    k = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


class CellAugment:
    """Random geometry and acquisition changes for a batch of cells (see the module doc).

    Args:
        rotate: rotation by any angle (else only the 8 flips/90° rotations when ``flips``).
        flips: random horizontal flip (with ``rotate``, every orientation and mirror image is reached).
        scale: zoom factor drawn from ``[1 - scale, 1 + scale]``.
        gain: ``(low, high)`` camera gain, drawn log-uniformly; ``null`` = none.
        p_gain: probability of a gain change.
        gamma: intensity raised to ``exp(U(-gamma, gamma))``.
        blur: largest Gaussian blur sigma in pixels (drawn uniformly from ``[0, blur]``).
        p_blur: probability of a blur.
        noise: largest Gaussian noise sd, relative to the cell's brightest pixels.
        offset: largest background offset added, relative to the cell's brightest pixels.
        haze: largest weight ``w`` of the blurred copy: ``(1 - w) * cell + w * blur(cell, haze_sigma)``,
            ``w`` drawn uniformly from ``[0, haze]``; 0 = off.
        p_haze: probability of haze.
        haze_sigma: ``(low, high)`` blur sigma of the hazy copy in pixels, drawn uniformly.
        plateau: largest diffuse level added over the mask (softened by a 2 px blur), relative to the
            cell's brightest pixels, drawn uniformly from ``[0, plateau]``; 0 = off. Needs a mask
            (``channel``/``apply``).
        p_plateau: probability of a plateau.
        tight: probability that a cell is shown as a tight crop re-framed (see the module doc); 0 = off.
        mask: ``channel`` when the blue channel carries the mask (left unchanged), else ``apply``/``none``.

    >>> aug = CellAugment()
    >>> aug(torch.rand(4, 3, 32, 32)).shape
    torch.Size([4, 3, 32, 32])
    """

    def __init__(
        self,
        rotate: bool = True,
        flips: bool = True,
        scale: float = 0.1,
        gain: Sequence[float] | None = (0.3, 4.0),
        p_gain: float = 0.8,
        gamma: float = 0.4,
        blur: float = 1.5,
        p_blur: float = 0.3,
        noise: float = 0.03,
        offset: float = 0.05,
        mask: str = "channel",
        haze: float = 0.0,
        p_haze: float = 0.5,
        haze_sigma: Sequence[float] = (2.0, 6.0),
        plateau: float = 0.0,
        p_plateau: float = 0.5,
        tight: float = 0.0,
    ):
        if gain is not None and (len(gain) != 2 or not 0 < gain[0] <= gain[1]):
            raise ValueError(f"CellAugment: gain must be (low, high) with 0 < low <= high, got {gain}")
        if not 0 <= scale < 1:
            raise ValueError(f"CellAugment: scale={scale} must be in [0, 1)")
        if mask not in ("apply", "channel", "none"):
            raise ValueError(f"CellAugment: mask must be apply, channel or none, got {mask!r}")
        self.rotate, self.flips, self.scale = bool(rotate), bool(flips), float(scale)
        self.gain = tuple(float(g) for g in gain) if gain is not None else None
        self.p_gain, self.gamma, self.blur, self.p_blur = (
            float(p_gain),
            float(gamma),
            float(blur),
            float(p_blur),
        )
        if not 0 <= haze <= 1:
            raise ValueError(f"CellAugment: haze={haze} must be in [0, 1] (the hazy copy's largest weight)")
        if len(haze_sigma) != 2 or not 0 < haze_sigma[0] <= haze_sigma[1]:
            raise ValueError(
                f"CellAugment: haze_sigma must be (low, high) with 0 < low <= high, got {haze_sigma}"
            )
        if plateau < 0:
            raise ValueError(f"CellAugment: plateau={plateau} must be >= 0")
        if not 0 <= tight <= 1:
            raise ValueError(f"CellAugment: tight={tight} must be a probability in [0, 1]")
        if tight > 0 and mask != "channel":
            raise ValueError(
                f"CellAugment: tight={tight} needs the mask in the blue channel (mask=channel), got {mask!r}"
            )
        self.tight = float(tight)
        self.noise, self.offset, self.mask = float(noise), float(offset), mask
        self.plateau, self.p_plateau = float(plateau), float(p_plateau)
        self.haze, self.p_haze = float(haze), float(p_haze)
        self.haze_sigma = (float(haze_sigma[0]), float(haze_sigma[1]))

    def __repr__(self) -> str:
        return (
            f"CellAugment(rotate={self.rotate}, flips={self.flips}, scale={self.scale}, gain={self.gain}, "
            f"gamma={self.gamma}, blur={self.blur}, noise={self.noise}, offset={self.offset}, haze={self.haze}, plateau={self.plateau}, tight={self.tight}, "
            f"mask={self.mask!r})"
        )

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)
    ) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"CellAugment expects N×3×H×W images, got shape {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return x
        dev, dt = x.device, x.dtype
        m = torch.as_tensor(mean, device=dev, dtype=dt).view(1, -1, 1, 1)
        s = torch.as_tensor(std, device=dev, dtype=dt).view(1, -1, 1, 1)
        y = (x * s + m).clamp(0, 1)
        if self.tight > 0:
            y = self._tight(y)
        y = self._geometry(y)
        cells = 2 if self.mask == "channel" else 3
        y = torch.cat(
            [self._acquisition(y[:, :cells], y[:, 2:3] if cells == 2 else None), y[:, cells:]], dim=1
        )
        return (y - m) / s

    def _tight(self, y: torch.Tensor) -> torch.Tensor:
        """Cells drawn with probability ``tight`` lose what lies outside their mask's bounding box (filled
        with the box's background, the median of its pixels outside the mask), as a tight crop would."""
        n, _, h, w = y.shape
        inside = y[:, 2] > 0.5
        rows, cols = inside.any(2), inside.any(1)  # N×H, N×W
        r = torch.arange(h, device=y.device)
        c = torch.arange(w, device=y.device)
        r0 = torch.where(rows, r, h).amin(1)
        r1 = torch.where(rows, r, -1).amax(1)
        c0 = torch.where(cols, c, w).amin(1)
        c1 = torch.where(cols, c, -1).amax(1)
        box = ((r.view(1, -1, 1) >= r0.view(n, 1, 1)) & (r.view(1, -1, 1) <= r1.view(n, 1, 1))) & (
            (c.view(1, 1, -1) >= c0.view(n, 1, 1)) & (c.view(1, 1, -1) <= c1.view(n, 1, 1))
        )
        ring = (box & ~inside).unsqueeze(1).expand(-1, 2, -1, -1)  # the box's background, per cell
        cells = y[:, :2]
        fill = cells.masked_fill(~ring, float("nan")).reshape(n, 2, -1).nanmedian(dim=2).values
        few = ring[:, 0].reshape(n, -1).sum(1) < 16
        fill = torch.where(few.view(n, 1), cells.reshape(n, 2, -1).amin(2), fill)
        chosen = (torch.rand(n, device=y.device) < self.tight) & rows.any(1)
        outside = (~box & chosen.view(n, 1, 1)).unsqueeze(1)
        out = y.clone()
        out[:, :2] = torch.where(outside, fill.view(n, 2, 1, 1).to(y.dtype), cells)
        return out

    def _u(self, n: int, lo: float, hi: float, ref: torch.Tensor) -> torch.Tensor:
        return torch.rand(n, device=ref.device, dtype=ref.dtype) * (hi - lo) + lo

    def _geometry(self, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[0]
        if self.flips:
            y = torch.where((torch.rand(n, device=y.device) < 0.5).view(n, 1, 1, 1), y.flip(-1), y)
        if not self.rotate and not self.scale:
            if self.flips and y.shape[-1] == y.shape[-2]:
                k = torch.randint(0, 4, (n,), device=y.device).view(n, 1, 1, 1)
                y = torch.where(
                    k == 1,
                    torch.rot90(y, 1, (-2, -1)),
                    torch.where(
                        k == 2,
                        torch.rot90(y, 2, (-2, -1)),
                        torch.where(k == 3, torch.rot90(y, 3, (-2, -1)), y),
                    ),
                )
            return y
        angle = (
            self._u(n, 0, 2 * math.pi, y) if self.rotate else torch.zeros(n, device=y.device, dtype=y.dtype)
        )
        zoom = self._u(n, 1 - self.scale, 1 + self.scale, y)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [
                torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                torch.stack([sin, cos, torch.zeros_like(cos)], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(y.shape), align_corners=False)
        out = F.grid_sample(y, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.mask == "channel":
            out[:, 2] = (out[:, 2] > 0.5).to(out.dtype)
        return out

    def _acquisition(self, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n = c.shape[0]
        dev, dt = c.device, c.dtype
        inside = mask if mask is not None else (c.amax(1, keepdim=True) > 0).to(dt)
        # the cell's brightest level (99th percentile over the crop is close enough for relative noise)
        ref = torch.quantile(c.amax(1).reshape(n, -1), 0.99, dim=1).clamp_min(1 / 255).view(n, 1, 1, 1)

        def pick(p: float) -> torch.Tensor:
            return (torch.rand(n, device=dev) < p).view(n, 1, 1, 1)

        if self.haze > 0 and self.p_haze > 0:
            # before the optics blur and the camera: the glow is in the light that reaches the sensor
            w = self._u(n, 0, self.haze, c) * pick(self.p_haze).view(n).to(dt)
            if float(w.max()) > 0:
                hazy = gaussian_blur(c, self._u(n, *self.haze_sigma, c))
                w = w.view(n, 1, 1, 1)
                c = (1 - w) * c + w * hazy
        if self.plateau > 0 and self.p_plateau > 0 and self.mask != "none":
            w = self._u(n, 0, self.plateau, c) * pick(self.p_plateau).view(n).to(dt)
            if float(w.max()) > 0:
                soft = gaussian_blur(inside, torch.full((n,), 2.0, device=dev, dtype=dt))
                c = c + w.view(n, 1, 1, 1) * ref * soft
        if self.blur > 0 and self.p_blur > 0:
            sigma = self._u(n, 0, self.blur, c) * pick(self.p_blur).view(n).to(dt)
            if float(sigma.max()) > 0.05:
                c = gaussian_blur(c, sigma)
        if self.offset > 0:
            c = c + self._u(n, 0, self.offset, c).view(n, 1, 1, 1) * ref * (
                inside if self.mask == "apply" else 1
            )
        if self.noise > 0:
            c = c + torch.randn_like(c[:, :1]) * self._u(n, 0, self.noise, c).view(n, 1, 1, 1) * ref
        if self.gain is not None:
            lo, hi = math.log(self.gain[0]), math.log(self.gain[1])
            g = torch.exp(self._u(n, lo, hi, c)).view(n, 1, 1, 1)
            g = torch.where(pick(self.p_gain), g, torch.ones_like(g))
            c = (
                torch.round((c * g).clamp(0, 1) * 255) / 255
            )  # an 8-bit camera: levels lost, highlights clipped
        c = c.clamp(0, 1)
        if self.gamma > 0:
            gam = torch.exp(self._u(n, -self.gamma, self.gamma, c)).view(n, 1, 1, 1)
            c = c.clamp_min(1e-6) ** gam * (c > 0)
        if self.mask == "apply":
            c = c * inside
        return c
