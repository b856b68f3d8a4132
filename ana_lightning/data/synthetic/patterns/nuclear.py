"""Renderers of the nuclear patterns (AC-0 … AC-14, AC-29 … AC-31), following
``shared/domain/PATTERNS.md``; each returns the FITC signal (float32 H×W, ~0..1).

AC-30 and AC-31 have no confirmed ICAP definition. Their renders here are plausible, deliberately
distinct stand-ins (see :func:`ac30_stand_in` and :func:`ac31_myriad_fine_speckled`), not references.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..geometry import Field, rotate
from .parts import (
    bright_plate,
    dark_plate,
    draw_nucleoli,
    nor_pairs,
    nuclear_dots,
    nuclear_rim,
    nucleoli_factor,
    nucleolus_points,
    uniform,
)
from .registry import renders


@renders("AC-0")
def negative(f: Field) -> np.ndarray:
    """AC-0 negative: no structure (the faint cell glow is added by the compositor)."""
    return f.canvas()


@renders("AC-1")
def homogeneous(f: Field) -> np.ndarray:
    """AC-1 homogeneous: even nucleoplasm, nucleoli +/-; metaphase chromatin bright and smooth."""
    nuc = f.nuclei_gain * (0.9 + 0.06 * f.tex("mid")) * nucleoli_factor(f, uniform(f, 0.7, 1.0))
    return f.blur(nuc + bright_plate(f, uniform(f, 1.25, 1.55)), 0.7) + 0.05 * f.mitotic_soft


@renders("AC-2", mitoses=(1, 3))
def dense_fine_speckled(f: Field) -> np.ndarray:
    """AC-2 dense fine speckled: mixed fine + coarse specks, denser/looser zones, broken rim;
    metaphase plate brighter than the interphase nuclei, same texture."""
    tex = (0.35 + 0.38 * f.tex("fine") + 0.1 * f.tex("coarse")) * (0.8 + 0.2 * f.tex("mid"))
    nuc = f.nuclei_gain * tex * nucleoli_factor(f, uniform(f, 0.5, 0.85))
    nuc = nuc + nuclear_dots(f, 2, 8, (0.2, 0.4), 1.0)
    band = f.nuclei - cv2.erode(f.nuclei, np.ones((3, 3), np.uint8))
    nuc = nuc * (1.0 - 0.7 * band * (f.tex("coarse") < 0.6))
    plate = bright_plate(f, uniform(f, 1.35, 1.7), 0.6 + 0.3 * f.tex("fine") + 0.3 * f.tex("coarse"))
    return nuc + f.blur(plate, 0.6) + 0.1 * f.mitotic_soft


@renders("AC-3", mitoses=(1, 3))
def centromere(f: Field) -> np.ndarray:
    """AC-3 centromere: 40-80 discrete coarse dots per nucleus; a band of dots across the plate."""
    dots = nuclear_dots(f, 50, 90, (0.45, 0.85), 0.95)
    m = len(f.mitotic)
    x, y, _ = f.in_chromatin(f.rng.integers(45, 80, m), 0.9)
    pd = f.splat(x, y, f.rng.uniform(0.6, 0.9, x.size), 0.8) if m else 0.0
    return dots + pd + 0.03 * f.nuclei_gain + 0.12 * f.chromatin + 0.04 * f.mitotic_soft


@renders("AC-4")
def fine_speckled(f: Field) -> np.ndarray:
    """AC-4 fine speckled: dense tiny speckles over the nucleoplasm; mitotic chromatin unstained."""
    fine = f.tex("fine")
    nuc = f.nuclei_gain * (0.4 + 0.42 * fine) * nucleoli_factor(f, uniform(f, 0.5, 0.9))
    return nuc + dark_plate(f, uniform(f, 0.28, 0.4), 0.5 + 0.4 * f.tex("fine"))


@renders("AC-5")
def coarse_speckled(f: Field) -> np.ndarray:
    """AC-5 large/coarse speckled: fewer, larger speckles with dark gaps (sponge-like);
    mitotic chromatin unstained."""
    k = (f.a * f.b / (13.0 * f.s * f.s) * f.rng.uniform(0.85, 1.15, f.n)).astype(int)
    x, y, o = f.in_nuclei(k, 0.92)
    sp = f.splat(x, y, f.rng.uniform(0.4, 0.75, x.size) * f.gain[o], 1.6)
    nuc = (np.minimum(sp, 0.95) + f.nuclei_gain * (0.12 + 0.08 * f.tex("coarse"))) * nucleoli_factor(
        f, uniform(f, 0.1, 0.5)
    )
    return nuc + dark_plate(f, uniform(f, 0.25, 0.35), 0.4 + 0.5 * f.tex("coarse"))


@renders("AC-6")
def multiple_nuclear_dots(f: Field) -> np.ndarray:
    """AC-6 multiple nuclear dots: 6-20 medium dots per nucleus; mitoses dark without dots."""
    dots = nuclear_dots(f, 6, 16, (0.85, 1.15), 1.4, 0.8)
    return dots + uniform(f, 0.04, 0.1) * f.nuclei_gain + dark_plate(f, 0.08)


@renders("AC-7")
def few_nuclear_dots(f: Field) -> np.ndarray:
    """AC-7 few nuclear dots: 1-6 dots (Cajal bodies) on a moderately stained nucleoplasm."""
    k = np.minimum(f.rng.geometric(0.38, f.n), 6)
    x, y, o = f.in_nuclei(k, 0.8)
    dots = f.splat(x, y, f.rng.uniform(0.85, 1.1, x.size) * f.gain[o], 1.5)
    nuc = f.nuclei_gain * uniform(f, 0.3, 0.42) * nucleoli_factor(f, 0.8)
    return dots + f.blur(nuc, 1.0) + dark_plate(f, 0.12)


@renders("AC-8")
def homogeneous_nucleolar(f: Field) -> np.ndarray:
    """AC-8 homogeneous nucleolar: nucleoli evenly and smoothly bright; faint diffuse fine speckles
    in the nucleoplasm (PM/Scl-like); metaphase plate dark."""
    nol = f.blur(draw_nucleoli(f, 1.5, f.gain[f.nol_j] * f.rng.uniform(0.75, 1.0, f.nol_j.size)), 0.9)
    return (
        nol * f.nuclei
        + f.nuclei_gain * uniform(f, 0.1, 0.18) * (0.6 + 0.4 * f.tex("fine"))
        + dark_plate(f, 0.12)
    )


@renders("AC-9")
def clumpy_nucleolar(f: Field) -> np.ndarray:
    """AC-9 clumpy nucleolar: nucleoli as irregular clusters of large bright granules, 1-5
    Cajal-like dots in the nucleoplasm, a perichromosomal ring around the mitotic chromatin."""
    x, y, o = nucleolus_points(f, 4, 8, 2.0)
    clumps = f.splat(x, y, f.rng.uniform(0.4, 0.75, x.size) * f.gain[o], 1.3)
    caj = nuclear_dots(f, 1, 5, (0.5, 0.8), 1.2)
    ring = f.canvas()
    f.draw_chromatin(ring, 1.0, max(1, round(2 * f.s)))
    ring = f.blur(ring * (1.0 - 0.7 * f.chromatin), 0.6)
    return (
        np.minimum(clumps, 1.2) * f.nuclei + caj + 0.03 * f.nuclei_gain + 0.9 * ring + 0.06 * f.mitotic_soft
    )


@renders("AC-10", mitoses=(1, 3))
def punctate_nucleolar(f: Field) -> np.ndarray:
    """AC-10 punctate nucleolar: many distinct small grains inside (slightly enlarged) nucleoli; up to
    5 bright NOR pairs on the metaphase plate; faint mitotic cytoplasm."""
    x, y, o = nucleolus_points(f, 8, 14, 1.45)
    grains = f.splat(x, y, f.rng.uniform(0.5, 0.9, x.size) * f.gain[o], 0.7)
    return grains * f.nuclei + 0.02 * f.nuclei_gain + nor_pairs(f, 1.0) + dark_plate(f, 0.16)


@renders("AC-11")
def smooth_nuclear_envelope(f: Field) -> np.ndarray:
    """AC-11 smooth nuclear envelope: homogeneous nucleus with a bright continuous rim (accented
    where cells touch), occasional fold lines; mitotic chromatin unstained."""
    rim = nuclear_rim(f, 1.6) * uniform(f, 0.6, 0.85)
    folds = f.canvas()
    sel = np.flatnonzero((~f.is_mitotic) & (f.rng.random(f.n) < 0.25))
    if sel.size:
        t = f.rng.uniform(-0.5, 0.5, sel.size)
        h = np.sqrt(1 - t * t) * f.a[sel] * 0.8
        ang = f.theta[sel] + f.rng.normal(0, 0.4, sel.size)
        x0, y0 = rotate(-h, t * f.b[sel], ang)
        x1, y1 = rotate(h, t * f.b[sel], ang)
        f.lines(
            folds,
            np.stack(
                [
                    np.stack([f.nx[sel] + x0, f.ny[sel] + y0], -1),
                    np.stack([f.nx[sel] + x1, f.ny[sel] + y1], -1),
                ],
                1,
            ),
            0.6,
            1,
        )
    nuc = f.nuclei_gain * uniform(f, 0.35, 0.5)
    return f.blur(nuc + rim + folds * f.nuclei, 0.7) + dark_plate(f, 0.12)


@renders("AC-12")
def punctate_nuclear_envelope(f: Field) -> np.ndarray:
    """AC-12 punctate nuclear envelope: dotted rim (pores) plus punctate nuclear surface."""
    per = np.maximum((2 * math.pi * np.sqrt((f.a**2 + f.b**2) / 2) / (4.2 * f.s)).astype(int), 8)
    x, y, o = f.on_rim(per, 0.97, 0.02)
    rim = f.splat(x, y, f.rng.uniform(0.7, 1.0, x.size) * f.gain[o], 1.1)
    k = (f.a * f.b / (12.0 * f.s * f.s)).astype(int)
    x, y, o = f.in_nuclei(k, 0.9)
    surf = f.splat(x, y, f.rng.uniform(0.12, 0.3, x.size) * f.gain[o], 0.8)
    return rim + surf + f.nuclei_gain * uniform(f, 0.15, 0.25) + dark_plate(f, 0.12)


@renders("AC-13")
def pcna_like(f: Field) -> np.ndarray:
    """AC-13 PCNA-like: G1 nuclei negative, S nuclei intense pleomorphic speckles (nucleoli +/-),
    late S/G2 a few large scattered speckles; mitoses unstained."""
    ph = f.phase
    s_phase = (ph >= 0.45) & (ph < 0.8)
    late = ph >= 0.8
    lvl = np.where(s_phase, 1.0, 0.04).astype(np.float32)
    tex = 0.25 + 0.3 * f.tex("fine") + 0.55 * f.tex("coarse") * (0.7 + 0.3 * f.tex("mid"))
    nol_st = uniform(f, 0.3, 1.3)
    nuc = f.lut(lvl * f.gain, f.nucleus_labels) * tex * (1 + (nol_st - 1) * f.nucleoli)
    k = np.where(late, f.rng.integers(3, 10, f.n), 0)
    x, y, o = f.in_nuclei(k, 0.8)
    big = f.splat(x, y, f.rng.uniform(0.5, 0.9, x.size), 1.7)
    return nuc + big + f.lut(np.where(late, 0.1, 0.0) * f.gain, f.nucleus_labels) + dark_plate(f, 0.08)


@renders("AC-14", mitoses=(1, 3))
def cenpf_like(f: Field) -> np.ndarray:
    """AC-14 CENP-F-like: fine speckled nuclei whose intensity rises through the cycle (G1 negative,
    G2 bright); mitotic cells diffusely positive with many small faint kinetochore dots aligned in
    the plate and a midbody dot in ana/telophase."""
    lvl = 0.04 + 0.95 * np.clip((f.phase - 0.4) / 0.6, 0, 1) ** 1.3
    nuc = f.lut(lvl * f.gain, f.nucleus_labels) * (0.35 + 0.55 * f.tex("fine")) * nucleoli_factor(f, 0.5)
    m = len(f.mitotic)
    x, y, _ = f.in_chromatin(f.rng.integers(70, 110, m), 0.9)
    kin = f.splat(x, y, 0.45, 0.8) if m else 0.0
    mid = f.canvas()
    late = np.flatnonzero(f.stage > 0)
    if late.size:
        mid = f.splat(f.mx[late], f.my[late], 0.9, 1.6)
    mit = f.mitotic_soft * 0.32 * (1 - 0.6 * f.chromatin)
    return nuc + kin + mid + mit


@renders("AC-29", mitoses=(1, 3))
def topo_i_like(f: Field) -> np.ndarray:
    """AC-29 topo I-like: fine speckled/homogeneous nucleus blurred past the envelope, nucleoli
    rim-accented, cobweb-like cytoplasm; stained metaphase chromatin with NOR dots, mitotic cell
    near interphase intensity."""
    nuc = f.nuclei_gain * (0.5 + 0.22 * f.tex("fine")) * nucleoli_factor(f, 0.35)
    nol_rim = f.canvas()
    t = max(1, round(1.0 * f.s))
    for x, y, r in zip(f.nol_x, f.nol_y, f.nol_r, strict=True):
        cv2.circle(nol_rim, (int(round(x)), int(round(y))), max(1, int(round(r))), 0.45, t)
    nuc = f.blur(nuc + nol_rim * f.nuclei, 1.3)
    web = f.cytoplasm_gain * (0.1 + 0.25 * f.tex("ridge") * f.tex("fine"))
    mit = f.mitotic_soft * 0.45 + bright_plate(f, 0.55) + nor_pairs(f, 0.7)
    return nuc + f.blur(web, 0.5) + f.blur(mit, 0.6)


@renders("AC-30")
def ac30_stand_in(f: Field) -> np.ndarray:
    """AC-30 (definition not confirmed by a source; plausible stand-in): quasi-homogeneous, finely
    granular nuclei together with smooth diffuse cytoplasmic staining at roughly half the nuclear
    intensity, and a stained metaphase plate (resembles the ICAP example images)."""
    nuc = f.nuclei_gain * (0.62 + 0.15 * f.tex("fine")) * nucleoli_factor(f, 0.8)
    cyt = f.cytoplasm_gain * uniform(f, 0.4, 0.55) * (0.9 + 0.1 * f.tex("mid"))
    return f.blur(nuc + cyt + 0.35 * f.mitotic_soft + bright_plate(f, 0.9), 0.8)


@renders("AC-31")
def ac31_myriad_fine_speckled(f: Field) -> np.ndarray:
    """AC-31 (definition not confirmed; rendered as "myriad discrete fine speckled"): a great many
    small, evenly sized, discrete speckles over a faint nucleoplasm, with enlarged dark nucleoli
    outlined by a thin bright rim; mitotic chromatin unstained, mitotic cell finely speckled."""
    k = (f.a * f.b / (3.2 * f.s * f.s) * f.rng.uniform(0.85, 1.1, f.n)).astype(int)
    x, y, o = f.in_nuclei(k, 0.95)
    dots = f.splat(x, y, f.rng.uniform(0.4, 0.7, x.size) * f.gain[o], 0.75)
    holes = draw_nucleoli(f, 1.45)
    rims = f.blur(draw_nucleoli(f, 1.6, f.gain[f.nol_j] * 0.55, 1), 0.5)
    nuc = (np.minimum(dots, 0.9) + 0.12 * f.nuclei_gain) * (1.0 - 0.9 * holes) * f.nuclei + rims * f.nuclei
    return nuc + dark_plate(f, 0.3, 0.3 + 0.7 * f.tex("fine"))
