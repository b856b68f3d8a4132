"""The harder synthetic field task (``data.difficulty=hard``, the default of ``make train``).

The first simulator made every field bright, sharp and at one magnification: a small CNN reached
test MCA 0.99 on it, so it no longer told a good recipe from a bad one. :func:`render_field_hard`
draws each field's acquisition from the ranges of real images instead (same pattern renderers, same
cells):

- **magnification** 0.7-1.45x (a field rendered at ``size / m`` and resampled to ``size``): nuclei of
  ~18-38 px in a 256-px field;
- **brightness**: log-uniform over ~12x, down to dim fields whose pattern is a few counts above the
  background, as the real I3A cells (many peak below 60/255); cell-to-cell gain spread is wider;
- **unspecific glow** of cytoplasm and nuclei up to ~2x the first simulator's, which hides weak
  patterns in dim fields;
- **optics**: blur sigma 0.5-2.0 px (defocus), then shot and read noise 1-3x stronger.

>>> import numpy as np
>>> render_field_hard("AC-4", np.random.default_rng(0), size=64).shape
(64, 64, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from .compose import field_plan, needs_telophase, pattern_signal, to_rgb
from .geometry import Field

__all__ = ["DIFFICULTIES", "render_field_hard"]

#: ``easy``: the first simulator's look (byte-identical); ``hard``: :func:`render_field_hard`.
DIFFICULTIES = ("easy", "hard")


def render_field_hard(
    code: str | Sequence[str], rng: np.random.Generator, size: int = 256, dapi: bool = False
) -> np.ndarray:
    """Like :func:`~.compose.render_field` (one code or 1-3 codes), with the harder acquisition."""
    pos, n_mit, size = field_plan(code, size, "render_field_hard")
    mag = math.exp(rng.uniform(math.log(0.7), math.log(1.45)))
    src = max(32, int(round(size / mag)))
    f = Field(rng, src, n_mit, need_telophase=needs_telophase(pos))
    f.gain = (f.gain * np.exp(rng.normal(0, 0.2, f.n))).astype(np.float32)  # wider cell-to-cell spread
    f._cache.clear()
    img = _compose_hard(f, pattern_signal(f, pos), negative=not pos, dapi=dapi)
    if src != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if src > size else cv2.INTER_LINEAR)
    return img


def _compose_hard(f: Field, sig: np.ndarray, negative: bool, dapi: bool) -> np.ndarray:
    rng = f.rng
    if negative:
        glow_c, glow_n, gain = rng.uniform(0.04, 0.14), rng.uniform(0.0, 0.08), 0.0
    else:
        glow_c, glow_n = rng.uniform(0.015, 0.09), rng.uniform(0.0, 0.06)
        gain = math.exp(rng.uniform(math.log(0.07), math.log(0.9)))
    bg = rng.uniform(0.012, 0.06) * (1.0 + 0.4 * f.tex("low"))
    g = bg + glow_c * f.cells + glow_n * f.nuclei
    if gain:
        g = g + gain * sig
    sig_opt = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    g = f.blur(g.astype(np.float32), sig_opt)
    read, shot = rng.uniform(0.006, 0.035), rng.uniform(0.01, 0.06)
    g = g + f.tex("noise") * (read + shot * np.sqrt(np.maximum(g, 0)))
    return to_rgb(f, g, sig_opt, dapi)
