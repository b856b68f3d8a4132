"""The field composer: the registered pattern renderers paint the FITC signal into the cells of a
:class:`~.geometry.Field`; the field is then blurred (optics), lit (gain, background glow), given shot
and read noise and turned into an RGB ``uint8`` image: green dominant, a little red/blue leakage and,
with ``dapi=True``, a blue DAPI counterstain of the nuclei and metaphase plates.

:func:`field_plan`, :func:`pattern_signal` and :func:`to_rgb` are shared with the harder acquisition
of :mod:`.hard` (same random draws in the same order, so ``easy`` renders stay byte-identical).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .geometry import Field
from .patterns import PATTERNS, canonical_code, is_negative
from .patterns.parts import uniform

__all__ = ["render_field", "field_plan", "pattern_signal", "to_rgb"]

#: Mean equivalent-circle nucleus diameter of the reference geometry (scale 1, zoom 1): 2 x 15 x E[sqrt(b/a)].
_NUC_DIAMETER_REF = 2.0 * 15.0 * 0.857


def field_plan(
    code: str | Sequence[str], size: int, who: str
) -> tuple[list[str], tuple[int, int] | None, int]:
    """Checked inputs of a field renderer: the positive codes, the mitosis counts they need, the size."""
    codes = [code] if isinstance(code, str) else list(code)
    if not 1 <= len(codes) <= 3:
        raise ValueError(f"{who} takes one code or a sequence of 1-3 codes")
    codes = list(dict.fromkeys(canonical_code(c) for c in codes))
    size = int(size)
    if size < 32:
        raise ValueError("size must be >= 32")
    pos = [c for c in codes if not is_negative(c)]
    mits = [PATTERNS[c].mitoses for c in pos if PATTERNS[c].mitoses is not None]
    n_mit = (max(m[0] for m in mits), max(m[1] for m in mits)) if mits else None
    return pos, n_mit, size


def needs_telophase(pos: Sequence[str]) -> bool:
    """Whether one of the (canonical) codes ``pos`` needs an ana- or telophase in the field."""
    return any(PATTERNS[c].telophase for c in pos)


def pattern_signal(f: Field, pos: Sequence[str]) -> np.ndarray:
    """The summed signal of the patterns ``pos`` on field ``f`` (mixed: none may hide the others)."""
    sig = f.canvas()
    for c in pos:
        s = PATTERNS[c].render(f)
        if len(pos) > 1:  # keep one saturating pattern from hiding the others
            hi = float(np.percentile(s[::4, ::4], 99.0))
            s = s * (uniform(f, 0.75, 1.0) / max(hi, 1.0))
        sig += s
    return sig


def render_field(
    code: str | Sequence[str],
    rng: np.random.Generator,
    size: int = 256,
    dapi: bool = False,
    nucleus_diameter_px: float | None = None,
    return_masks: bool = False,
    crowding: float = 0.0,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one ``size x size x 3`` uint8 RGB field showing the ICAP pattern ``code``.

    ``code`` may also be a sequence of 1-3 codes: a mixed field in which every listed pattern is
    visible at once (the signals are painted into the same cells and added). ``AC-0`` in a mixture
    with positive codes contributes nothing. ``dapi=True`` adds a blue DAPI counterstain.

    ``nucleus_diameter_px``: render at this mean nucleus diameter (equivalent-circle, pixels) instead
    of the default ~26 px x size / 256 with a random zoom — a field seen at another magnification.
    ``return_masks=True`` returns ``(image, masks)`` with ``masks["cells"]`` and ``masks["nuclei"]``
    (int32 label maps, one label per cell, the same label for a cell and its nucleus; mitotic cells
    have no nucleus label) and ``masks["mitotic"]`` (bool per label, index 0 unused).
    ``crowding`` (0-1): a denser culture, from the default spacing (0, the same field as before) to nuclei
    touching their neighbours (1), as in confluent wells; for segmentation benchmarks.

    >>> render_field("AC-4", np.random.default_rng(0), size=64).shape
    (64, 64, 3)
    """
    pos, n_mit, size = field_plan(code, size, "render_field")
    scale = None if nucleus_diameter_px is None else float(nucleus_diameter_px) / _NUC_DIAMETER_REF
    if scale is not None and not 1.0 <= float(nucleus_diameter_px) <= size:
        raise ValueError(
            f"nucleus_diameter_px={nucleus_diameter_px} must lie between 1 and the field size {size}"
        )
    f = Field(rng, size, n_mit, need_telophase=needs_telophase(pos), scale=scale, crowding=crowding)
    img = _compose(f, pattern_signal(f, pos), negative=not pos, dapi=dapi)
    if not return_masks:
        return img
    nuclei = f.nucleus_labels.astype(np.int32)
    masks = {
        "cells": np.where(nuclei > 0, nuclei, f.cell_labels).astype(np.int32),  # a nucleus in its own cell
        "nuclei": nuclei,
        "mitotic": np.concatenate([[False], f.is_mitotic]),
    }
    return img, masks


def _compose(f: Field, sig: np.ndarray, negative: bool, dapi: bool) -> np.ndarray:
    rng = f.rng
    if negative:
        glow_c, glow_n, gain = rng.uniform(0.04, 0.09), rng.uniform(0.0, 0.05), 0.0
    else:
        glow_c, glow_n, gain = rng.uniform(0.015, 0.05), rng.uniform(0.0, 0.03), rng.uniform(0.55, 0.9)
    bg = rng.uniform(0.012, 0.045) * (1.0 + 0.4 * f.tex("low"))
    g = bg + glow_c * f.cells + glow_n * f.nuclei
    if gain:
        g = g + gain * sig
    sig_opt = rng.uniform(0.45, 0.9)
    g = f.blur(g.astype(np.float32), sig_opt)
    # shot + read noise
    g = g + f.tex("noise") * (rng.uniform(0.006, 0.016) + rng.uniform(0.01, 0.03) * np.sqrt(np.maximum(g, 0)))
    return to_rgb(f, g, sig_opt, dapi)


def to_rgb(f: Field, g: np.ndarray, sig_opt: float, dapi: bool) -> np.ndarray:
    """The green signal ``g`` → an 8-bit RGB field: channel leak (a red or blue tint on some fields) and,
    with ``dapi``, a blue nuclear counterstain blurred like the signal (``sig_opt``). Shared by the easy
    and hard renderers (same random draws, in the same order)."""
    rng = f.rng
    tint = rng.random()
    leak_r = rng.uniform(0.02, 0.12) if tint < 0.85 else rng.uniform(0.2, 0.45)
    leak_b = rng.uniform(0.02, 0.1) if tint < 0.93 else rng.uniform(0.15, 0.35)
    r = g * leak_r + f.tex("noise") * 0.006
    b = g * leak_b + f.tex("noise") * 0.006
    if dapi:
        d = f.nuclei * f.lut(np.exp(rng.normal(0, 0.12, f.n)), f.nucleus_labels) * (1 - 0.45 * f.nucleoli)
        d = d * (0.85 + 0.15 * f.tex("mid")) + 1.6 * f.chromatin
        b = b + rng.uniform(0.35, 0.65) * f.blur(d, sig_opt + 0.4)
    return cv2.merge([_to_u8(r), _to_u8(g), _to_u8(b)])


def _to_u8(x: np.ndarray) -> np.ndarray:
    """float (0..1) -> uint8 with rounding and saturation."""
    x = np.maximum(np.asarray(x, np.float32), 0.0)
    return cv2.convertScaleAbs(x, alpha=255.0)
