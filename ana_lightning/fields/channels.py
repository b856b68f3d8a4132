"""Which channel of a field shows the nuclei: :func:`nucleus_channel` (DAPI when blue carries its own
signal, else the brightest channel), as a grey image in ``[0, 1]``.

Used by both :mod:`~ana_lightning.fields.scale` (the nucleus diameter) and
:mod:`~ana_lightning.fields.segment` (the label maps); it lives here, below both, so that neither
imports the other back (``scale`` uses ``segment``; ``segment`` needs only this).

>>> import numpy as np
>>> img = np.zeros((8, 8, 3), np.uint8); img[2:6, 2:6, 1] = 200
>>> grey, name = nucleus_channel(img)
>>> name, float(grey.max())
('signal', 1.0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["nucleus_channel"]


def nucleus_channel(image: np.ndarray) -> tuple[np.ndarray, str]:
    """The grey image nuclei are best seen in, float32 in [0, 1], and its name.

    ``"dapi"``: the blue channel, when blue carries its own signal (where blue is brightest it mostly
    outshines green, or a fair share of all bright pixels is blue), not just green's leakage; ``"signal"``: the brightest channel
    per pixel (green FITC, and yellow/orange fields too). Grey images are their own channel.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        return _unit(img), "signal"
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an H×W grey or H×W×3 RGB image, got shape {img.shape}")
    rgb = img[..., :3].astype(np.float32)
    g, b = rgb[..., 1], rgb[..., 2]
    mx = rgb.max(axis=2)
    # where blue is brightest, DAPI outshines green; blue that only leaks from green stays below it
    # (or, where anything is bright, a fair share is blue: DAPI under a bright nuclear FITC pattern)
    if float(np.percentile(b, 99)) > 0.25 * float(np.percentile(mx, 99)):
        for bright, share in (
            (b > float(np.percentile(b, 80)), 0.3),
            (mx > float(np.percentile(mx, 75)), 0.15),
        ):
            if bright.any() and float(np.mean(b[bright] > 1.2 * g[bright] + 2.0)) > share:
                return _unit(b), "dapi"
        # (or blue is strong and draws its own picture: DAPI under a bright nuclear rim, say; a teal
        # tint is strong too but a copy of green)
        if float(np.percentile(b, 99)) > 0.46 * float(np.percentile(mx, 99)) and _corr(b, g) < 0.9:
            return _unit(b), "dapi"
    return _unit(mx), "signal"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a[::2, ::2].ravel() - a.mean(), b[::2, ::2].ravel() - b.mean()
    return float((a @ b) / max(float(np.sqrt((a @ a) * (b @ b))), 1e-9))


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    lo, hi = float(np.percentile(a, 0.5)), float(np.percentile(a, 99.8))
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)
