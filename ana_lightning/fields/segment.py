"""Cut a field into cells: classical nucleus and cell segmentation (scikit-image, no weights).

:func:`segment_field` — nuclei by log-compressed intensity, Gaussian denoising, Otsu threshold,
closing and hole filling at the nucleus scale, a distance-transform watershed that splits touching
nuclei, and size/shape filters; cells grown from the nuclei by a watershed on the signal, limited to
a nucleus diameter around each nucleus; each cell flagged interphase or mitotic (a metaphase plate or
a condensed, bright, elongated object; see :func:`mitotic_flags`).

``backend="cellpose"`` uses a Cellpose model when the ``cellpose`` package and its weights are
installed (nothing is downloaded: a missing package or weight file is a clear error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .channels import nucleus_channel

__all__ = [
    "Segmentation",
    "segment_field",
    "measure_nuclei",
    "mitotic_flags",
    "BACKENDS",
    "SEGMENTERS",
    "ClassicalSegmenter",
    "CellposeSegmenter",
    "build_segmenter",
]


@dataclass
class Segmentation:
    """Label maps of one field (0 = background; a cell and its nucleus share a label)."""

    nuclei: np.ndarray  # int32 H×W
    cells: np.ndarray  # int32 H×W
    mitotic: np.ndarray  # bool per label (index 0 unused)
    diameter_px: float  # the nucleus diameter the segmentation was tuned to
    channel: str = "signal"
    polarity: str = "bright"
    touches_border: np.ndarray = field(default_factory=lambda: np.zeros(1, bool))  # bool per label

    @property
    def n(self) -> int:
        return int(self.mitotic.size - 1)

    @property
    def labels(self) -> np.ndarray:
        return np.arange(1, self.n + 1)


# ---------------------------------------------------------------------------------------------- nuclei
def _log_grey(grey: np.ndarray) -> np.ndarray:
    k = 3.0  # mild: faint nuclear haze around dots counts, faint cytoplasm mostly does not
    return (np.log1p(k * np.clip(grey, 0, 1)) / math.log1p(k)).astype(np.float32)


def _foreground(grey: np.ndarray, d: float | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Nucleus foreground (holes filled: with ``d``, those smaller than a nucleus), the smoothed image, and the polarity of the nuclei."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    sig = 1.0 if d is None else max(0.8, d / 14.0)
    sm = ndi.gaussian_filter(_log_grey(grey), sig)
    if float(sm.max() - sm.min()) < 1e-4:
        return np.zeros(grey.shape, bool), sm, "bright"
    fg = sm > threshold_otsu(sm)
    r = 1 if d is None else max(1, int(round(d / 9.0)))
    fg = ndi.binary_closing(fg, structure=disk(r), border_value=0)
    filled = ndi.binary_fill_holes(fg)
    holes = filled & ~fg
    # nuclei as dark holes in bright cytoplasm: much of the filled area is holes
    if filled.any() and holes.sum() > 0.12 * filled.sum():
        hl, n = ndi.label(holes)
        if n >= 3:
            return _open(holes, r), sm, "dark"
    if d is not None and holes.any():
        # a hole larger than a nucleus is not inside one: it is the space that a ring of touching nuclei encloses
        # (filled, a dense cluster became one object that the watershed could not split and the size filter dropped)
        hl, _ = ndi.label(holes)
        larger = np.bincount(hl.ravel()) > math.pi * d * d / 4.0
        larger[0] = False
        filled &= ~larger[hl]
    return _open(filled, r), sm, "bright"


def _open(mask: np.ndarray, r: int) -> np.ndarray:
    from skimage.morphology import disk

    return ndi.binary_opening(mask, structure=disk(r)) if r > 1 else mask


def _split(mask: np.ndarray, d: float) -> np.ndarray:
    """Distance-transform watershed: one label per nucleus, touching nuclei split."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(mask)
    dist = ndi.gaussian_filter(dist, max(0.5, d / 20.0))
    comp, _ = ndi.label(mask)
    peaks = peak_local_max(
        dist, min_distance=max(2, int(d * 0.33)), labels=comp, exclude_border=False, threshold_abs=d * 0.12
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (small ones) keep one label each
    lab = watershed(-dist, markers, mask=mask)
    rest = mask & (lab == 0)
    if rest.any():
        rl, _ = ndi.label(rest)
        lab = np.where(rest, rl + lab.max(), lab)
    return lab.astype(np.int32)


def _filter(
    lab: np.ndarray,
    d: float,
    min_area_frac: float = 0.12,
    max_area_frac: float = 4.0,
    min_solidity: float = 0.7,
) -> np.ndarray:
    from skimage.measure import regionprops
    from skimage.segmentation import relabel_sequential

    a0 = math.pi * d * d / 4.0
    out = lab.copy()
    for p in regionprops(lab):
        if not (min_area_frac * a0 <= p.area <= max_area_frac * a0) or p.solidity < min_solidity:
            out[lab == p.label] = 0
    return relabel_sequential(out)[0].astype(np.int32)


def _diameters(lab: np.ndarray, exclude_border: bool = True) -> np.ndarray:
    from skimage.measure import regionprops

    h, w = lab.shape
    ds = []
    for p in regionprops(lab):
        r0, c0, r1, c1 = p.bbox
        if exclude_border and (r0 == 0 or c0 == 0 or r1 == h or c1 == w):
            continue
        ds.append(p.equivalent_diameter_area)
    return np.asarray(ds, float)


def _nuclei(grey: np.ndarray, d: float) -> tuple[np.ndarray, str]:
    fg, _, polarity = _foreground(grey, d)
    return _filter(_split(fg, d), d), polarity


def measure_nuclei(grey: np.ndarray, iterations: int = 2) -> tuple[float, int, str]:
    """``(median nucleus diameter, objects measured, polarity)`` of a grey ``[0, 1]`` field image."""
    fg, _, polarity = _foreground(grey, None)
    comp, n = ndi.label(fg)
    if n == 0:
        raise ValueError(
            "no nucleus-like object found in the image (blank or saturated?): give nucleus_diameter_px"
        )
    # first guess: area-weighted median of inscribed diameters (isolated dots weigh little)
    dt = ndi.distance_transform_edt(fg)
    # per component: the largest inscribed radius and the area (np.maximum.at: the same values as ndi.maximum,
    # which takes about a second on a 4-megapixel field)
    r_in = np.zeros(n + 1)
    np.maximum.at(r_in, comp.ravel(), dt.ravel())
    r_in = r_in[1:]
    area = np.bincount(comp.ravel(), minlength=n + 1)[1:].astype(np.float64)
    keep = area >= 12
    if not keep.any():
        raise ValueError("no nucleus-like object found in the image (only specks): give nucleus_diameter_px")
    d = 2.3 * _weighted_median(r_in[keep], area[keep])
    count = int(keep.sum())
    f = _work_factor(d)  # large nuclei: measure on a smaller copy (same answer, much faster)
    g = _shrink(grey, f)
    d *= f
    for _ in range(iterations):
        lab, polarity = _nuclei(g, d)
        ds = _diameters(lab)
        if ds.size < 3:
            ds = _diameters(lab, exclude_border=False)
        if ds.size == 0:
            break
        d, count = float(np.median(ds)), int(ds.size)
    return float(d / f), count, polarity


#: Nuclei larger than this (pixels) are segmented on a copy shrunk to this diameter.
WORK_DIAMETER = 24.0


def _work_factor(d: float) -> float:
    return min(1.0, WORK_DIAMETER / max(float(d), 1e-6))


def _shrink(grey: np.ndarray, f: float) -> np.ndarray:
    if f >= 0.999:
        return grey
    import cv2

    h, w = grey.shape
    return cv2.resize(grey, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(x)
    c = np.cumsum(w[o])
    return float(x[o][np.searchsorted(c, 0.5 * c[-1])])


# ---------------------------------------------------------------------------------------------- cells
def _cells(grey: np.ndarray, nuclei: np.ndarray, d: float, polarity: str) -> np.ndarray:
    """Cells grown from the nuclei over the stained area, at most ~one nucleus diameter away."""
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    if nuclei.max() == 0:
        return nuclei.copy()
    sm = ndi.gaussian_filter(_log_grey(grey), max(1.0, d / 10.0))
    bg = sm[nuclei == 0]
    t = threshold_otsu(bg) if bg.size and float(bg.max() - bg.min()) > 1e-4 else float(sm.max()) + 1
    reach = ndi.distance_transform_edt(nuclei == 0) <= 0.9 * d
    mask = ((sm > min(t, float(np.percentile(bg, 60)) if bg.size else t)) & reach) | (nuclei > 0)
    cells = watershed(ndi.distance_transform_edt(nuclei == 0), nuclei, mask=mask)
    return cells.astype(np.int32)


def mitotic_flags(grey: np.ndarray, nuclei: np.ndarray, d: float) -> np.ndarray:
    """Bool per label: a mitotic cell — either the object is a metaphase plate itself (a compact bar,
    minor/major axis < 0.45, smaller than an interphase nucleus, at least as bright as the field's median
    nucleus), or a rounded cell holding one (its brightest pixels, well above the field's nuclei, form
    such a bar). Ana/telophase halves are not recognised (counted as interphase)."""
    from skimage.measure import label as cc_label
    from skimage.measure import regionprops

    n = int(nuclei.max())
    flags = np.zeros(n + 1, bool)
    if n == 0:
        return flags
    props = regionprops(nuclei, intensity_image=grey)
    means = np.array([p.intensity_mean for p in props])
    p95 = np.array([float(np.percentile(p.image_intensity[p.image], 95)) for p in props])
    ref, ref95 = float(np.median(means)), float(np.median(p95))
    a0 = math.pi * d * d / 4.0
    for p, m, top in zip(props, means, p95, strict=True):
        elong = p.axis_minor_length / max(p.axis_major_length, 1e-6)
        plate = 0.12 * a0 <= p.area <= 0.65 * a0 and elong < 0.45 and p.solidity > 0.85  # a bar of chromatin
        holds_plate = False
        if not plate and top > 1.6 * ref95 and p.area >= 0.3 * a0:
            core = p.image & (p.image_intensity > 0.6 * top)
            cores = regionprops(cc_label(core))
            if cores:
                c = max(cores, key=lambda r: r.area)
                holds_plate = (
                    c.area >= 0.04 * a0 and c.axis_minor_length / max(c.axis_major_length, 1e-6) < 0.5
                )
        flags[p.label] = (plate and m >= 0.9 * ref) or holds_plate
    return flags


# ---------------------------------------------------------------------------------------------- segmenters
class ClassicalSegmenter:
    """Nuclei by the classical pipeline of this module (scikit-image, no weights).

    Config: ``segmenter: {_target_: ana_lightning.fields.segment.ClassicalSegmenter}`` (or ``classical``).
    """

    def nuclei(
        self, image: np.ndarray, grey: np.ndarray, diameter_px: float | None
    ) -> tuple[np.ndarray, float, str]:
        """``(nucleus labels, the nucleus diameter used, polarity)`` of a field."""
        polarity = ""
        if diameter_px is None:
            diameter_px, _, polarity = measure_nuclei(grey)
        d = float(diameter_px)
        f = _work_factor(d)
        nuclei, polarity = _nuclei(_shrink(grey, f), d * f)
        if f < 0.999:  # labels back to the field's pixels
            import cv2

            nuclei = cv2.resize(nuclei, grey.shape[::-1], interpolation=cv2.INTER_NEAREST)
        return nuclei, d, polarity

    def __call__(self, image: np.ndarray, diameter_px: float | None = None) -> Segmentation:
        return segment_field(image, diameter_px, backend=self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CellposeSegmenter(ClassicalSegmenter):
    """Nuclei by a Cellpose model (the ``cellpose`` package and its weights installed; nothing is
    downloaded: a missing package or weight file is a clear error). Cells are grown as in the classical
    pipeline.

    Config: ``segmenter: {_target_: ana_lightning.fields.segment.CellposeSegmenter, model_type: nuclei}``
    (or ``cellpose``).
    """

    def __init__(self, model_type: str = "nuclei"):
        self.model_type = str(model_type)

    def nuclei(
        self, image: np.ndarray, grey: np.ndarray, diameter_px: float | None
    ) -> tuple[np.ndarray, float, str]:
        nuclei = _cellpose_nuclei(image, diameter_px, self.model_type)
        if diameter_px is None:
            diameter_px = float(np.median(_diameters(nuclei, False))) if nuclei.max() else 1.0
        return nuclei, float(diameter_px), "bright"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_type={self.model_type!r})"


#: The segmenters by the names ``segmenter=`` / ``backend=`` accept (a ``_target_`` config names any class
#: with ``nuclei(image, grey, diameter_px)``, e.g. a subclass of :class:`ClassicalSegmenter`).
SEGMENTERS: dict[str, type[ClassicalSegmenter]] = {
    "classical": ClassicalSegmenter,
    "cellpose": CellposeSegmenter,
}
BACKENDS = tuple(SEGMENTERS)


def build_segmenter(spec: Any = "classical", cellpose_model: str = "nuclei") -> ClassicalSegmenter:
    """A segmenter from a name (``classical``, ``cellpose``), a ``_target_`` mapping, or a segmenter object.

    >>> build_segmenter("classical")
    ClassicalSegmenter()
    >>> build_segmenter({"_target_": "ana_lightning.fields.segment.CellposeSegmenter", "model_type": "cyto"})
    CellposeSegmenter(model_type='cyto')
    """
    if hasattr(spec, "nuclei"):
        return spec
    if isinstance(spec, str):
        if spec not in SEGMENTERS:
            raise ValueError(f"segmentation backend={spec!r} is not one of {BACKENDS} (or a _target_ config)")
        return SEGMENTERS[spec](cellpose_model) if spec == "cellpose" else SEGMENTERS[spec]()
    if isinstance(spec, Mapping) and "_target_" in spec:
        from hydra.utils import instantiate

        return instantiate(spec)
    raise ValueError(f"segmenter={spec!r}: give a name {BACKENDS} or a config with _target_")


# ---------------------------------------------------------------------------------------------- entry
def segment_field(
    image: np.ndarray,
    diameter_px: float | None = None,
    backend: str | ClassicalSegmenter | Mapping[str, Any] = "classical",
    cellpose_model: str = "nuclei",
) -> Segmentation:
    """Nuclei and cells of a field image (``H×W×3`` RGB uint8 or ``H×W`` grey).

    ``diameter_px``: the nucleus diameter if known (else estimated from the image). ``backend``: a
    segmenter name (:data:`BACKENDS`), a ``_target_`` config or a segmenter (:func:`build_segmenter`).
    """
    segmenter = build_segmenter(backend, cellpose_model)
    grey, channel = nucleus_channel(image)
    signal = nucleus_channel(np.asarray(image)[..., 1] if np.ndim(image) == 3 else image)[0]
    nuclei, d, polarity = segmenter.nuclei(image, grey, diameter_px)
    mitotic = mitotic_flags(grey, nuclei, d)
    cells = _cells(signal, nuclei, d, polarity)
    border = np.zeros(int(nuclei.max()) + 1, bool)
    for edge in (cells[0], cells[-1], cells[:, 0], cells[:, -1]):
        border[np.unique(edge)] = True
    border[0] = False
    return Segmentation(nuclei, cells, mitotic, d, channel, polarity, border)


def _cellpose_nuclei(image: np.ndarray, diameter_px: float | None, model_type: str) -> np.ndarray:
    try:
        from cellpose import models  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError(
            "segmentation backend=cellpose needs the 'cellpose' package and its model weights "
            "(pip install cellpose, then place the weights in ~/.cellpose/models); "
            "or use the built-in backend=classical, which needs no weights"
        ) from None
    grey, _ = nucleus_channel(image)
    try:
        model = models.CellposeModel(model_type=model_type, gpu=False)
    except Exception as e:  # noqa: BLE001 - weights missing offline
        raise RuntimeError(
            f"cellpose model {model_type!r} could not be loaded (weights not installed?): {e}"
        ) from None
    masks, *_ = model.eval(grey, diameter=diameter_px, channels=[0, 0])
    return np.asarray(masks, np.int32)
