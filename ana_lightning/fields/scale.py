"""How big are the nuclei in a field? The scale a field is brought to before a model reads it.

A field's scale is its **nucleus diameter in pixels** (equivalent-circle diameter of interphase
nuclei, median over the field). It comes, in this order of trust, from the user
(``nucleus_diameter_px``), from the pixel size (``pixel_size`` in µm/px and a typical HEp-2 nucleus
of ``nucleus_diameter_um``), or from the image (:func:`estimate_nucleus_diameter`).

The estimate segments nuclei twice (:mod:`ana_lightning.fields.segment`): a first pass with a small
smoothing that only needs the image size, then a pass whose smoothing, hole filling and watershed
spacing follow the first pass's diameter. What makes it robust to patterns whose signal is not the
whole nucleus:

- the DAPI (blue) channel is used when it carries its own signal (:func:`nucleus_channel`);
- intensities are log-compressed, so the faint nuclear haze around centromere dots or nucleoli is
  segmented with the dots, and dots are merged by smoothing and closing at the nucleus scale;
- when the nuclei are dark holes in bright cytoplasm (cytoplasmic patterns) the holes are measured;
- the diameter is a median over objects, and objects touching the border are left out.

It fails on fields where nuclei are neither stained nor dark holes and there is no DAPI (negative
fields, some cytoplasmic and mitosis-only patterns): such estimates usually come from few objects or
are implausibly large, and are marked ``reliable=False``.

>>> import numpy as np
>>> from ana_lightning.data.synthetic import render_field
>>> img = render_field("AC-1", np.random.default_rng(0), size=256, nucleus_diameter_px=30)
>>> 25 < estimate_nucleus_diameter(img).diameter_px < 35
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ScaleEstimate",
    "nucleus_channel",
    "estimate_nucleus_diameter",
    "resolve_scale",
    "NUCLEUS_DIAMETER_UM",
]

#: Typical HEp-2 interphase nucleus diameter in micrometres, used to turn ``pixel_size`` into pixels.
NUCLEUS_DIAMETER_UM = 12.0


@dataclass(frozen=True)
class ScaleEstimate:
    """A field's nucleus diameter in pixels and where it came from."""

    diameter_px: float
    source: str  # "estimated", "nucleus_diameter_px", "pixel_size"
    channel: str = ""  # the channel nuclei were measured in: "dapi" or "signal"
    n_objects: int = 0  # objects the median was taken over (estimates only)
    polarity: str = ""  # "bright" nuclei or "dark" (holes in bright cytoplasm)
    reliable: bool = True  # False: too few objects, or nuclei implausibly large for the image


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


def estimate_nucleus_diameter(image: np.ndarray) -> ScaleEstimate:
    """Median equivalent-circle diameter (pixels) of the interphase nuclei of a field image.

    Raises ``ValueError`` when no nucleus-like object is found (a blank or saturated image).
    """
    from .segment import measure_nuclei

    grey, channel = nucleus_channel(image)
    d, n, polarity = measure_nuclei(grey)
    reliable = n >= MIN_OBJECTS and d <= min(grey.shape) / 6.0
    return ScaleEstimate(float(d), "estimated", channel, n, polarity, reliable)


#: An estimate from fewer objects than this is marked unreliable (ana-predict then uses the median
#: of the reliable estimates of the same specimen / input).
MIN_OBJECTS = 8


def resolve_scale(
    image: np.ndarray | None,
    nucleus_diameter_px: float | None = None,
    pixel_size: float | None = None,
    nucleus_diameter_um: float = NUCLEUS_DIAMETER_UM,
) -> ScaleEstimate:
    """The field's scale: the user's ``nucleus_diameter_px``, else from ``pixel_size`` (µm per pixel),
    else estimated from ``image``."""
    if nucleus_diameter_px is not None:
        if not float(nucleus_diameter_px) > 0:
            raise ValueError(f"nucleus_diameter_px={nucleus_diameter_px} must be a positive number of pixels")
        return ScaleEstimate(float(nucleus_diameter_px), "nucleus_diameter_px")
    if pixel_size is not None:
        if not float(pixel_size) > 0:
            raise ValueError(f"pixel_size={pixel_size} must be a positive number of µm per pixel")
        return ScaleEstimate(float(nucleus_diameter_um) / float(pixel_size), "pixel_size")
    if image is None:
        raise ValueError("no image, nucleus_diameter_px or pixel_size to take the scale from")
    return estimate_nucleus_diameter(image)
