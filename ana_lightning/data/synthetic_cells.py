"""Single-cell crops from the field simulator, in the layout of the public HEp-2 cell contests.

The contest cell sets (I3A / ICPR 2014 Task 1, ICPR 2012) hold one segmented cell per image: the
cell's nucleus centred in a crop about 1.4x its bounding box (the mask covers ~40 % of the crop),
8-bit, dim (raw camera counts on a dark offset of ~15), a binary mask beside it
(``<id>_Mask.png``) and a CSV ``Image ID,Image class``. :func:`render_cells` paints a field with the
pattern renderers of :mod:`.synthetic` (so every AC code it knows has cells) and cuts out its
interphase cells (its mitotic cells for the mitosis-only patterns AC-25 … AC-28);
:func:`generate_cell_dataset` writes them as a contest folder that
:func:`~.contest.read_i3a2014` reads.

Each field is one *specimen* (one intensity class, one exposure): the CSV's ``Specimen ID`` column
groups its cells so that a split never puts cells of one field on both sides.

>>> import numpy as np
>>> cells = render_cells("AC-1", np.random.default_rng(0), n_cells=2)
>>> [(im.dtype.name, im.ndim, int(m.max())) for im, m in cells]
[('uint8', 2, 255), ('uint8', 2, 255)]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .hierarchy import HEp2HierarchyDataModule
from .synthetic import (
    _MITOSES,
    _RENDERERS,
    CODES,
    LEVEL2,
    _atomic_write,
    _canon,
    _Field,
    _image_rng,
    _progress,
    _write_csv,
)

log = logging.getLogger(__name__)

__all__ = [
    "I3A_CLASSES",
    "CLASS_SETS",
    "INTENSITIES",
    "COLORS",
    "CellStyle",
    "class_table",
    "render_cells",
    "generate_cell_dataset",
    "SyntheticCellDataModule",
    "main",
]

#: The six I3A / ICPR 2014 Task 1 classes and the AC codes whose renderers stand for them.
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
#: Patterns seen only in dividing cells: their crops are mitotic cells.
_MITOTIC_ONLY = frozenset({"AC-25", "AC-26", "AC-27", "AC-28"})
#: Cytoplasmic patterns: their mask takes in the cytoplasm next to the nucleus (as the I3A Golgi masks do).
_CYTOPLASMIC = frozenset(f"AC-{i}" for i in range(15, 24))
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
    "AC-4": (20.5, 0.8), "AC-5": (20.5, 0.8),
    "AC-8": (9.0, 0.85), "AC-9": (9.0, 0.85), "AC-10": (9.0, 0.85),
    "AC-3": (53.0, 0.8),
    "AC-11": (15.0, 0.55), "AC-12": (15.0, 0.55),
    "AC-22": (12.0, 1.0),
}


def class_table(classes: str = "i3a", codes: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Class name written in the CSV → the AC codes rendered for it.

    >>> class_table("level2", ["AC-4", "AC-5", "AC-3"])
    {'centromere': ('AC-3',), 'speckled': ('AC-4', 'AC-5')}
    """
    if classes not in CLASS_SETS:
        raise ValueError(f"classes must be one of {CLASS_SETS}, got {classes!r}")
    sel = CODES if codes is None else tuple(dict.fromkeys(_canon(c) for c in codes))
    if classes == "i3a":
        out = {k: tuple(c for c in v if c in sel) for k, v in I3A_CLASSES.items()}
        out = {k: v for k, v in out.items() if v}
        if not out:
            raise ValueError(f"none of the codes {list(sel)} is an I3A class ({I3A_CLASSES})")
        return out
    if classes == "codes":
        return {c: (c,) for c in sel}
    out: dict[str, tuple[str, ...]] = {}
    for c in sorted(sel, key=CODES.index):
        out.setdefault(LEVEL2[c], ())
        out[LEVEL2[c]] += (c,)
    return dict(sorted(out.items(), key=lambda kv: CODES.index(kv[1][0])))


def _signal_field(code: str, rng: np.random.Generator, size: int) -> tuple[_Field, np.ndarray]:
    code = _canon(code)
    n_mit = _MITOSES.get(code)
    if code in _MITOTIC_ONLY:
        n_mit = (max(n_mit[0], 3), max(n_mit[1], 6))
    f = _Field(rng, size, n_mit, need_telophase=code in ("AC-25", "AC-27"))
    sig = _RENDERERS[code](f) if code != "AC-0" else f.canvas()
    return f, sig


def _pick(f: _Field, mitotic: bool, n: int, margin: float) -> list[int]:
    """Cells whose crop lies inside the field, nearest the centre first."""
    H = f.H
    if mitotic:
        idx = f.mit
        cx, cy, r = f.mx, f.my, f.mR
        ext = r
    else:
        idx = np.flatnonzero(~f.is_mit)
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
    code = _canon(code)
    target = style.draw_brightness(code, intensity, rng)  # brightest counts above the offset
    f, sig = _signal_field(code, rng, style.render_size)
    mitotic = code in _MITOTIC_ONLY
    # the specimen's exposure: signal + unspecific glow, optics, then counts on a dark offset
    glow = rng.uniform(*style.glow)
    ref = float(np.percentile(sig[f.allc > 0], 90)) if np.any(sig > 0) else 1.0
    haze = rng.uniform(*style.haze) * f.ng * (0.8 + 0.2 * f.tex("mid"))
    g = sig / max(ref, 1e-3) + haze + glow * (f.allc + 0.5 * f.nuc) + 0.02 * (1.0 + 0.4 * f.tex("low"))
    g = f.blur(g.astype(np.float32), rng.uniform(0.5, 0.9))
    offset = rng.uniform(*style.offset)
    read = rng.uniform(*style.read_noise)
    cells = _pick(f, mitotic, n_cells, margin=_CROP_FACTOR * 1.05)
    out = []
    nuc_lab, cyt_lab = f.nuc_lab, f.cyt_lab
    scale_ref = None
    for i in cells:
        if mitotic:
            j = i
            i = int(f.mit[j])
            cell = (cyt_lab == i + 1).astype(np.uint8)
            cx, cy, ext = float(f.mx[j]), float(f.my[j]), float(f.mR[j])
            ext_x = ext_y = ext
        else:
            cell = (nuc_lab == i + 1).astype(np.uint8)
            if code in _CYTOPLASMIC:  # the mask reaches into the cytoplasm around the nucleus
                ring = np.zeros_like(cell)
                axes = (float(2.6 * f.a[i]), float(2.6 * f.b[i]))
                cv2.ellipse(ring, ((float(f.nx[i]), float(f.ny[i])), axes, float(np.degrees(f.theta[i]))), 1, -1)
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
        shot = rng.standard_normal(counts.shape).astype(np.float32) * np.sqrt(np.maximum(counts, 0) * style.shot)
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


def _encode_png(img: np.ndarray) -> bytes:
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("could not encode a cell as PNG")
    return buf.tobytes()


def generate_cell_dataset(
    root: str | Path,
    classes: str = "i3a",
    codes: Sequence[str] | None = None,
    n_per_class: int = 200,
    cells_per_field: int = 8,
    intermediate_fraction: float = 0.5,
    color: str = "grey",
    seed: int = 0,
    style: CellStyle | None = None,
    csv_name: str = "gt_training.csv",
    progress: bool = True,
) -> Path:
    """Write a contest cell folder: ``<root>/<id:05d>.png``, ``<id>_Mask.png`` and ``<root>/<csv_name>``
    with ``Image ID,Image class,Intensity,Specimen ID`` (one specimen per rendered field).

    ``classes``: ``i3a`` (the six I3A class names, readable by the ``i3a2014`` reader as is),
    ``level2`` (ICAP level-2 group names) or ``codes`` (AC codes); ``codes`` restricts what is drawn.
    A class of several codes draws its specimens from them in turn. Deterministic: field ``k`` of a
    class uses ``SeedSequence([seed, 10000 + index of its code, k])``; existing files are kept.
    """
    root = Path(root)
    if not 0.0 <= intermediate_fraction <= 1.0:
        raise ValueError(f"intermediate_fraction must be in [0, 1], got {intermediate_fraction}")
    if n_per_class < 1 or cells_per_field < 1:
        raise ValueError("n_per_class and cells_per_field must be >= 1")
    table = class_table(classes, codes)
    style = style or CellStyle()
    root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    next_id = 1
    with _progress(len(table) * n_per_class, f"synthetic cells -> {root}", progress) as advance:
        for name, cls_codes in table.items():
            done, k = 0, 0
            while done < n_per_class:
                code = cls_codes[k % len(cls_codes)]
                rng = _image_rng(seed, 10_000 + CODES.index(code), k)
                intensity = "intermediate" if rng.random() < intermediate_fraction else "positive"
                want = min(cells_per_field, n_per_class - done)
                cells = render_cells(code, rng, n_cells=want, intensity=intensity, color=color, style=style)
                specimen = f"{name.replace(' ', '_').replace('/', '-')}-{k:04d}"
                for img, mask in cells:
                    iid = f"{next_id:05d}"
                    if not (root / f"{iid}.png").is_file() or not (root / f"{iid}_Mask.png").is_file():
                        _atomic_write(root / f"{iid}.png", _encode_png(img))
                        _atomic_write(root / f"{iid}_Mask.png", _encode_png(mask))
                    rows.append((iid, name, intensity, specimen))
                    next_id += 1
                    done += 1
                    advance()
                k += 1
                if k > 50 * n_per_class:  # a renderer that never yields a croppable cell
                    raise RuntimeError(f"no croppable cells for {name!r} ({cls_codes}) after {k} fields")
    _write_csv(root / csv_name, ("Image ID", "Image class", "Intensity", "Specimen ID"), rows)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """``ana-synth --cells``: write synthetic single-cell crops in the contest layout."""
    p = argparse.ArgumentParser(
        prog="ana-synth --cells", description="Render synthetic HEp-2 cell crops in the I3A contest layout."
    )
    p.add_argument("--cells", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--output", "-o", default="data/synthetic_cells", help="output folder (default: data/synthetic_cells)"
    )
    p.add_argument(
        "--classes",
        default="i3a",
        choices=CLASS_SETS,
        help="class names in the CSV: the six I3A classes, ICAP level-2 groups or AC codes (default: i3a)",
    )
    p.add_argument(
        "--codes", default=None, help="comma-separated AC codes to draw (default: all the class set knows)"
    )
    p.add_argument("--n-per-class", type=int, default=200, help="cells per class (default: 200)")
    p.add_argument(
        "--cells-per-field", type=int, default=8, help="cells cut from one field / specimen (default: 8)"
    )
    p.add_argument(
        "--intermediate-fraction",
        type=float,
        default=0.5,
        help="share of intermediate specimens (default: 0.5)",
    )
    p.add_argument(
        "--color", default="grey", choices=COLORS, help="8-bit grey (I3A) or RGB green (default: grey)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    codes = [c.strip() for c in a.codes.split(",") if c.strip()] if a.codes else None
    try:
        root = generate_cell_dataset(
            a.output,
            classes=a.classes,
            codes=codes,
            n_per_class=a.n_per_class,
            cells_per_field=a.cells_per_field,
            intermediate_fraction=a.intermediate_fraction,
            color=a.color,
            seed=a.seed,
            progress=not a.no_progress,
        )
    except ValueError as e:
        p.error(str(e))
        return
    n = len(class_table(a.classes, codes)) * a.n_per_class
    print(f"wrote {n} cells to {root} (labels: {root / 'gt_training.csv'})")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])


# ----------------------------------------------------------------------------------------------
# Datamodule: synthetic cells, read back through the contest reader
# ----------------------------------------------------------------------------------------------
class SyntheticCellDataModule(HEp2HierarchyDataModule):
    """Synthetic cells in the I3A layout (``data=synthetic_cells``), rendered once into ``cache_dir``
    and read back with the ``i3a2014`` contest reader, so training sees exactly what a real I3A
    folder gives; with ``root=<a real I3A folder>`` the same settings read that folder instead
    (``ana-eval ... data.root=<real I3A folder>``).

    Args (beyond :class:`~.hierarchy.HEp2HierarchyDataModule`; ``level: 2`` gives the six I3A classes
    as ICAP level-2 groups):
        root: null = render; or a contest cell folder to read instead.
        cache_dir: where rendered sets live (the folder name encodes every rendering argument).
        class_set, n_per_class, cells_per_field, intermediate_fraction, color, render_seed: see
            :func:`generate_cell_dataset`.
    """

    def __init__(
        self,
        root: str | None = None,
        cache_dir: str = "data/synthetic_cells",
        class_set: str = "i3a",
        n_per_class: int = 300,
        cells_per_field: int = 8,
        intermediate_fraction: float = 0.5,
        color: str = "grey",
        render_seed: int = 0,
        reader: str = "i3a2014",
        **kwargs,
    ):
        if class_set not in CLASS_SETS:
            raise ValueError(f"data.class_set must be one of {CLASS_SETS}, got {class_set!r}")
        if color not in COLORS:
            raise ValueError(f"data.color must be one of {COLORS}, got {color!r}")
        self.render = None
        if not root:
            name = (
                f"cells{_STYLE_VERSION}_{class_set}_n{n_per_class}_f{cells_per_field}"
                f"_i{intermediate_fraction:g}_{color}_seed{render_seed}"
            )
            root = str(Path(cache_dir).expanduser() / name)
            self.render = dict(
                classes=class_set,
                n_per_class=n_per_class,
                cells_per_field=cells_per_field,
                intermediate_fraction=intermediate_fraction,
                color=color,
                seed=render_seed,
            )
        super().__init__(root=root, reader=reader, **kwargs)

    def prepare_data(self) -> None:
        if self.render is None or (self.root / ".complete").exists():
            return
        log.info("rendering synthetic cells into %s (once; cached for later runs)", self.root)
        generate_cell_dataset(self.root, progress=False, **self.render)
        (self.root / ".complete").write_text("ok\n")


#: Bumped when the renderer's output changes, so cached sets are not reused across versions.
_STYLE_VERSION = 2
