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

from .channels import nucleus_channel
from .segment import measure_nuclei

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


def estimate_nucleus_diameter(image: np.ndarray) -> ScaleEstimate:
    """Median equivalent-circle diameter (pixels) of the interphase nuclei of a field image.

    Raises ``ValueError`` when no nucleus-like object is found (a blank or saturated image).
    """
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
