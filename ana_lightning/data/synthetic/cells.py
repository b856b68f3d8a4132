"""Single-cell crops from the field simulator, as in the public HEp-2 cell contests.

The contest cell sets (I3A / ICPR 2014 Task 1, ICPR 2012) hold one segmented cell per image: the
cell's nucleus centred in a crop about 1.4x its bounding box (the mask covers ~40 % of the crop),
8-bit, dim (raw camera counts on a dark offset of ~15). :func:`render_cells` paints a field with the
registered pattern renderers (so every AC code the simulator knows has cells) and cuts out its
interphase cells (its mitotic cells for the mitosis-only patterns AC-25 … AC-28);
:func:`~.writers.generate_cell_dataset` writes them as a contest folder.

>>> import numpy as np
>>> cells = render_cells("AC-1", np.random.default_rng(0), n_cells=2)
>>> [(im.dtype.name, im.ndim, int(m.max())) for im, m in cells]
[('uint8', 2, 255), ('uint8', 2, 255)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from ...taxonomy import Taxonomy
from .geometry import Field
from .patterns import CODES, PATTERNS, canonical_code, is_negative

__all__ = [
    "I3A_CLASSES",
    "CLASS_SETS",
    "INTENSITIES",
    "COLORS",
    "REAL_BRIGHTNESS",
    "CellStyle",
    "class_table",
    "render_cells",
]

#: The six I3A / ICPR 2014 Task 1 classes and the AC codes whose renderers stand for them. A choice of
#: the simulator, not tree knowledge: the tree maps "Speckled" to its whole speckled group (AC-2, AC-4,
#: AC-5, AC-29); the simulator draws I3A speckled cells from AC-4 and AC-5 only.
I3A_CLASSES: dict[str, tuple[str, ...]] = {
    "Homogeneous": ("AC-1",),
    "Speckled": ("AC-4", "AC-5"),
    "Nucleolar": ("AC-8", "AC-9", "AC-10"),
    "Centromere": ("AC-3",),
    "NuMem": ("AC-11", "AC-12"),
    "Golgi": ("AC-22",),
}
#: ``classes=``: the six I3A names, every level-2 group of the simulator, or every AC code.
CLASS_SETS = ("i3a", "level2", "codes")
INTENSITIES = ("positive", "intermediate")
COLORS = ("grey", "green")
_CROP_FACTOR = math.sqrt(math.pi / 4 / 0.40)  # crop side / mask bounding-box side: mask = 40 % of the crop


class CellStyle:
    """The camera and specimen ranges a cell is drawn from (8-bit counts; defaults follow the real
    I3A cells' in-mask and background statistics, see ``experiments/simulator_realism``).

    Args:
        render_size: side of the field the cells are cut from (448: nuclei ~1.2x smaller than the crops).
        area: (median, log-sd) of the mask area in the written crop, pixels.
        offset: camera dark level range (background counts outside cells).
        brightness: per AC code, (median, log-sd) of the specimen's brightest counts above the offset
            (99th percentile of its first crop); intermediate specimens are drawn below the median,
            positive ones above it. Codes not listed use ``default_brightness``.
        read_noise: Gaussian read-noise range (counts); shot noise is added on top (Poisson-like).
        blur: extra optical blur range (pixels, at the written scale), before the noise.
        noise_blur: blur range after the noise (the camera and optics smooth the noise too: real
            cells have little power at the highest spatial frequencies).
        glow: unspecific cytoplasm/background glow range (fraction of the cell signal).
        haze: diffuse nucleoplasm staining range (fraction of the pattern's bright level): real
            cells are less contrasted inside the nucleus than the bare pattern renders.
        shot: shot-noise factor (variance = shot x counts).
    """

    def __init__(
        self,
        render_size: int = 448,
        area: tuple[float, float] = (1780.0, 0.18),
        offset: tuple[float, float] = (14.0, 26.0),
        brightness: dict[str, tuple[float, float]] | None = None,
        default_brightness: tuple[float, float] = (20.0, 0.8),
        read_noise: tuple[float, float] = (0.4, 1.5),
        blur: tuple[float, float] = (0.0, 0.6),
        noise_blur: tuple[float, float] = (0.35, 0.6),
        glow: tuple[float, float] = (0.02, 0.12),
        haze: tuple[float, float] = (0.1, 0.45),
        shot: float = 0.25,
    ):
        self.render_size = int(render_size)
        self.area, self.offset = area, offset
        self.brightness = dict(REAL_BRIGHTNESS if brightness is None else brightness)
        self.default_brightness = default_brightness
        self.read_noise, self.blur, self.noise_blur, self.glow = read_noise, blur, noise_blur, glow
        self.haze, self.shot = haze, float(shot)

    def draw_brightness(self, code: str, intensity: str, rng: np.random.Generator) -> float:
        """Brightest counts above the offset of one specimen of ``code`` at ``intensity``."""
        if intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")
        med, sd = self.brightness.get(code, self.default_brightness)
        z = abs(rng.normal()) * (1.0 if intensity == "positive" else -1.0)
        return float(np.clip(med * math.exp(sd * z), 3.0, 235.0))


#: (median, log-sd) of the brightest in-mask counts above the background of real I3A cells, per class
#: (experiments/simulator_realism, train+val splits only): homogeneous, nucleolar, NuMem and Golgi cells
#: are dim, centromere cells bright.
REAL_BRIGHTNESS: dict[str, tuple[float, float]] = {
    "AC-1": (13.5, 0.6),
    "AC-4": (20.5, 0.8),
    "AC-5": (20.5, 0.8),
    "AC-8": (9.0, 0.85),
    "AC-9": (9.0, 0.85),
    "AC-10": (9.0, 0.85),
    "AC-3": (53.0, 0.8),
    "AC-11": (15.0, 0.55),
    "AC-12": (15.0, 0.55),
    "AC-22": (12.0, 1.0),
}


def class_table(classes: str = "i3a", codes: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Class name written in the CSV → the AC codes rendered for it.

    >>> class_table("level2", ["AC-4", "AC-5", "AC-3"])
    {'centromere': ('AC-3',), 'speckled': ('AC-4', 'AC-5')}
    """
    if classes not in CLASS_SETS:
        raise ValueError(f"classes must be one of {CLASS_SETS}, got {classes!r}")
    sel = CODES if codes is None else tuple(dict.fromkeys(canonical_code(c) for c in codes))
    if classes == "i3a":
        out = {k: tuple(c for c in v if c in sel) for k, v in I3A_CLASSES.items()}
        out = {k: v for k, v in out.items() if v}
        if not out:
            raise ValueError(f"none of the codes {list(sel)} is an I3A class ({I3A_CLASSES})")
        return out
    if classes == "codes":
        return {c: (c,) for c in sel}
    level2 = Taxonomy.load().level2
    out: dict[str, tuple[str, ...]] = {}
    for c in sorted(sel, key=CODES.index):
        out.setdefault(level2[c], ())
        out[level2[c]] += (c,)
    return dict(sorted(out.items(), key=lambda kv: CODES.index(kv[1][0])))


def _signal_field(code: str, rng: np.random.Generator, size: int) -> tuple[Field, np.ndarray]:
    code = canonical_code(code)
    pattern = PATTERNS[code]
    n_mit = pattern.mitoses
    if pattern.mitotic_only:
        n_mit = (max(n_mit[0], 3), max(n_mit[1], 6))
    f = Field(rng, size, n_mit, need_telophase=pattern.telophase)
    sig = pattern.render(f) if not is_negative(code) else f.canvas()
    return f, sig


def _pick(f: Field, mitotic: bool, n: int, margin: float) -> list[int]:
    """Cells whose crop lies inside the field, nearest the centre first."""
    H = f.H
    if mitotic:
        idx = f.mitotic
        cx, cy, r = f.mx, f.my, f.mR
        ext = r
    else:
        idx = np.flatnonzero(~f.is_mitotic)
        cx, cy = f.nx[idx], f.ny[idx]
        ext = f.a[idx]
    ok = (
        (cx - margin * ext > 1)
        & (cx + margin * ext < H - 2)
        & (cy - margin * ext > 1)
        & (cy + margin * ext < H - 2)
    )
    d = np.hypot(cx - H / 2, cy - H / 2)
    order = [int(i) for i in np.argsort(d) if ok[i]]
    return [int(idx[i]) if not mitotic else int(i) for i in order[:n]]


def render_cells(
    code: str,
    rng: np.random.Generator,
    n_cells: int = 8,
    intensity: str = "positive",
    color: str = "grey",
    style: CellStyle | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``n_cells`` ``(image, mask)`` crops of one rendered field (one specimen) of ``code``.

    ``image`` is ``H×W`` uint8 (``color='grey'``) or ``H×W×3`` (``'green'``: the signal in green, a
    little red/blue leakage); ``mask`` is ``H×W`` uint8, 255 on the cell. All cells of a call share the
    specimen's exposure (offset, brightness, noise); cells differ by their own gain and shape.
    """
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    style = style or CellStyle()
    code = canonical_code(code)
    target = style.draw_brightness(code, intensity, rng)  # brightest counts above the offset
    f, sig = _signal_field(code, rng, style.render_size)
    mitotic = PATTERNS[code].mitotic_only
    cytoplasmic = Taxonomy.load().level1[code] == "cytoplasmic"
    # the specimen's exposure: signal + unspecific glow, optics, then counts on a dark offset
    glow = rng.uniform(*style.glow)
    ref = float(np.percentile(sig[f.cells > 0], 90)) if np.any(sig > 0) else 1.0
    haze = rng.uniform(*style.haze) * f.nuclei_gain * (0.8 + 0.2 * f.tex("mid"))
    g = sig / max(ref, 1e-3) + haze + glow * (f.cells + 0.5 * f.nuclei) + 0.02 * (1.0 + 0.4 * f.tex("low"))
    g = f.blur(g.astype(np.float32), rng.uniform(0.5, 0.9))
    offset = rng.uniform(*style.offset)
    read = rng.uniform(*style.read_noise)
    cells = _pick(f, mitotic, n_cells, margin=_CROP_FACTOR * 1.05)
    out = []
    nuc_lab, cyt_lab = f.nucleus_labels, f.cell_labels
    scale_ref = None
    for i in cells:
        if mitotic:
            j = i
            i = int(f.mitotic[j])
            cell = (cyt_lab == i + 1).astype(np.uint8)
            cx, cy, ext = float(f.mx[j]), float(f.my[j]), float(f.mR[j])
            ext_x = ext_y = ext
        else:
            cell = (nuc_lab == i + 1).astype(np.uint8)
            if cytoplasmic:  # the mask reaches into the cytoplasm around the nucleus
                ring = np.zeros_like(cell)
                axes = (float(2.6 * f.a[i]), float(2.6 * f.b[i]))
                cv2.ellipse(
                    ring, ((float(f.nx[i]), float(f.ny[i])), axes, float(np.degrees(f.theta[i]))), 1, -1
                )
                cell = np.maximum(cell, ring * (cyt_lab == i + 1))
            cx, cy = float(f.nx[i]), float(f.ny[i])
            ys, xs = np.nonzero(cell)
            if ys.size < 20:
                continue
            ext_x, ext_y = (xs.max() - xs.min() + 1) / 2, (ys.max() - ys.min() + 1) / 2
            cx, cy = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
        hw, hh = ext_x * _CROP_FACTOR, ext_y * _CROP_FACTOR
        x0, x1 = int(round(cx - hw)), int(round(cx + hw)) + 1
        y0, y1 = int(round(cy - hh)), int(round(cy + hh)) + 1
        if x0 < 0 or y0 < 0 or x1 > f.W or y1 > f.H:
            continue
        crop, m = g[y0:y1, x0:x1], cell[y0:y1, x0:x1]
        if m.sum() < 20:
            continue
        want = math.exp(rng.normal(math.log(style.area[0]), style.area[1]))
        k = math.sqrt(want / float(m.sum()))
        W, H = max(8, round(crop.shape[1] * k)), max(8, round(crop.shape[0] * k))
        crop = cv2.resize(crop, (W, H), interpolation=cv2.INTER_LINEAR if k > 1 else cv2.INTER_AREA)
        m = cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST)
        if m.sum() < 20:
            continue
        b = rng.uniform(*style.blur)
        if b > 0.05:
            crop = cv2.GaussianBlur(crop, (0, 0), b)
        if scale_ref is None:  # one exposure per specimen: set by the first (central) cell
            scale_ref = target / max(float(np.percentile(crop, 99)), 1e-4)
        counts = crop * scale_ref
        shot = rng.standard_normal(counts.shape).astype(np.float32) * np.sqrt(
            np.maximum(counts, 0) * style.shot
        )
        counts = offset + counts + shot + rng.standard_normal(counts.shape).astype(np.float32) * read
        counts = cv2.GaussianBlur(counts, (0, 0), rng.uniform(*style.noise_blur))
        grey = np.clip(np.rint(counts), 0, 255).astype(np.uint8)
        if color == "green":
            lr, lb = rng.uniform(0.0, 0.12), rng.uniform(0.0, 0.1)
            img = np.stack([np.rint(grey * lr), grey, np.rint(grey * lb)], -1).astype(np.uint8)
        else:
            img = grey
        out.append((img, (m > 0).astype(np.uint8) * 255))
    return out
