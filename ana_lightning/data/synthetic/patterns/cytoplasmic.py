"""Renderers of the cytoplasmic patterns (AC-15 … AC-23), following ``shared/domain/PATTERNS.md``;
each returns the FITC signal (float32 H×W, ~0..1)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..geometry import TAU, Field, rotate
from .parts import (
    fibres_along,
    uniform,
    wavy_lines,
)
from .registry import renders


@renders("AC-15")
def fibrillar_linear(f: Field) -> np.ndarray:
    """AC-15 cytoplasmic fibrillar linear: straight actin cables along the cell's long axis, with
    small granular deposits; nucleus negative."""
    nper = f.rng.integers(8, 15, f.n)
    seg = fibres_along(f, nper, jitter=0.06, cover=(0.85, 1.0))
    c = f.canvas()
    k = len(seg)
    for q, (v, t) in enumerate(((0.6, 1), (0.85, 1), (1.0, 2))):
        f.lines(c, seg[q * k // 3 : (q + 1) * k // 3], v, t)
    cell = f.cytoplasm + 0.4 * f.nuclei
    sig = c * cell * f.lut(f.gain, f.cell_labels) * (0.85 + 0.15 * f.tex("fine"))
    return f.blur(sig, 0.6) + 0.1 * f.cytoplasm_gain + 0.05 * f.nuclei_gain + 0.15 * f.mitotic_soft


@renders("AC-16")
def fibrillar_filamentous(f: Field) -> np.ndarray:
    """AC-16 cytoplasmic fibrillar filamentous: wavy intermediate-filament network radiating from a
    bright perinuclear cage to the periphery; nucleus negative."""
    nper = np.where(f.is_mitotic, 0, f.rng.integers(14, 24, f.n))
    o = np.repeat(np.arange(f.n), nper)
    t0 = f.rng.uniform(0, TAU, o.size)
    sx, sy = rotate(1.05 * f.a[o] * np.cos(t0), 1.05 * f.b[o] * np.sin(t0), f.theta[o])
    sx, sy = f.nx[o] + sx, f.ny[o] + sy
    # end point: on the cell outline, roughly in the radial direction
    dx, dy = sx - f.cx[o], sy - f.cy[o]
    lx, ly = rotate(dx, dy, -f.theta[o])
    tt = np.arctan2(ly / f.B[o], lx / f.A[o]) + f.rng.normal(0, 0.25, o.size)
    ex, ey = rotate(0.95 * f.A[o] * np.cos(tt), 0.95 * f.B[o] * np.sin(tt), f.theta[o])
    ex, ey = f.cx[o] + ex, f.cy[o] + ey
    # plus wavy chords crossing the cytoplasm in random directions
    kc = np.where(f.is_mitotic, 0, f.rng.integers(4, 9, f.n))
    oc = np.repeat(np.arange(f.n), kc)
    tc = f.rng.uniform(-0.85, 0.85, oc.size)
    h = np.sqrt(1 - tc * tc) * 0.95
    x0, y0 = rotate(-h * f.A[oc], tc * f.B[oc], f.theta[oc])
    x1, y1 = rotate(h * f.A[oc], tc * f.B[oc], f.theta[oc])
    rot = f.rng.normal(0, 0.5, oc.size)
    x0, y0 = rotate(x0, y0, rot)
    x1, y1 = rotate(x1, y1, rot)
    sx = np.concatenate([sx, f.cx[oc] + x0])
    sy = np.concatenate([sy, f.cy[oc] + y0])
    ex = np.concatenate([ex, f.cx[oc] + x1])
    ey = np.concatenate([ey, f.cy[oc] + y1])
    c = f.canvas()
    w = wavy_lines(f, sx, sy, ex, ey, (1.0, 3.0))
    f.lines(c, w[::2], 1.0, 1)
    f.lines(c, w[1::2], 0.8, 2)
    cage = f.canvas()
    t = max(1, round(1.5 * f.s))
    for i in np.flatnonzero(~f.is_mitotic):
        cv2.ellipse(
            cage,
            (
                (float(f.nx[i]), float(f.ny[i])),
                (float(2.25 * f.a[i]), float(2.3 * f.b[i])),
                float(np.degrees(f.theta[i])),
            ),
            1.0,
            t,
        )
    sig = (0.9 * c + uniform(f, 0.45, 0.7) * cage) * f.cytoplasm * f.lut(f.gain, f.cell_labels)
    return f.blur(sig, 0.6) + 0.12 * f.cytoplasm_gain + 0.03 * f.nuclei_gain + 0.2 * f.mitotic_soft


@renders("AC-17")
def fibrillar_segmental(f: Field) -> np.ndarray:
    """AC-17 cytoplasmic fibrillar segmental: stress fibres decorated with short periodic dense
    bodies (beaded cables); nucleus negative."""
    nper = f.rng.integers(5, 10, f.n)
    seg = fibres_along(f, nper, cover=(0.6, 0.9))
    base = f.canvas()
    f.lines(base, seg, 1.0, 2)
    # beads: points every ~5 px along the cables
    p0, p1 = seg[:, 0], seg[:, 1]
    L = np.hypot(*(p1 - p0).T)
    nb = np.maximum((L / (5.5 * f.s)).astype(int), 1)
    o = np.repeat(np.arange(len(seg)), nb)
    k = np.arange(o.size) - np.repeat(np.cumsum(nb) - nb, nb)
    u = (k + 0.5 + f.rng.uniform(-0.08, 0.08, o.size)) / nb[o]
    x = p0[o, 0] + (p1[o, 0] - p0[o, 0]) * u
    y = p0[o, 1] + (p1[o, 1] - p0[o, 1]) * u
    beads = f.splat(x, y, f.rng.uniform(0.7, 1.0, o.size), 1.3)
    cell = f.cytoplasm + 0.3 * f.nuclei
    sig = (0.35 * f.blur(base, 0.5) + beads) * cell * f.lut(f.gain, f.cell_labels)
    return sig + 0.12 * f.cytoplasm_gain + 0.04 * f.nuclei_gain + 0.15 * f.mitotic_soft


@renders("AC-18")
def discrete_cytoplasmic_dots(f: Field) -> np.ndarray:
    """AC-18 cytoplasmic discrete dots (GW bodies): up to ~30 bright dots per interphase cell
    (more in late S/G2), none in mitotic cells; nucleus negative."""
    k = (2 + 22 * f.phase * f.rng.uniform(0.5, 1.2, f.n)).astype(int)
    x, y, o = f.in_cytoplasm(k)
    dots = f.splat(x, y, f.rng.uniform(0.6, 1.0, x.size) * f.gain[o], 1.15)
    return (
        dots * (f.cytoplasm + 0.3 * f.nuclei)
        + 0.06 * f.cytoplasm_gain
        + 0.02 * f.nuclei_gain
        + 0.05 * f.mitotic_soft
    )


@renders("AC-19")
def dense_fine_speckled_cytoplasm(f: Field) -> np.ndarray:
    """AC-19 cytoplasmic dense fine speckled (ribosomal P-like): cloudy, near-homogeneous cytoplasm
    with darker holes, denser towards the nucleus; faint nucleoli; mitotic cells diffuse."""
    holes = np.clip(f.tex("blob"), 0, 1.5)
    c = f.cytoplasm_gain * (0.5 + 0.22 * f.tex("fine") - 0.25 * holes) * (0.7 + 0.55 * f.perinuclear)
    nol = 0.25 * f.blur(f.nucleoli, 0.6) * f.nuclei_gain
    return f.blur(c, 0.6) + nol + 0.04 * f.nuclei_gain + f.mitotic_soft * 0.45 * (1 - 0.6 * f.chromatin)


@renders("AC-20")
def fine_speckled_cytoplasm(f: Field) -> np.ndarray:
    """AC-20 cytoplasmic fine speckled (Jo-1-like): scattered small distinct speckles over a weak
    homogeneous cytoplasm; nucleus negative."""
    k = (f.A * f.B / (14.0 * f.s * f.s)).astype(int)
    x, y, o = f.in_cytoplasm(k, 0.2, 1.0)
    sp = f.splat(x, y, f.rng.uniform(0.3, 0.6, x.size) * f.gain[o], 0.8)
    base = f.cytoplasm_gain * uniform(f, 0.24, 0.34) * (0.85 + 0.15 * f.tex("mid"))
    mit = f.mitotic_soft * 0.22 * (1 - 0.6 * f.chromatin) * (0.6 + 0.4 * f.tex("fine"))
    return sp * (f.cytoplasm + 0.4 * f.mitotic_soft) + base + 0.03 * f.nuclei_gain + mit


@renders("AC-21")
def reticular_ama(f: Field) -> np.ndarray:
    """AC-21 reticular/AMA: coarse granular-filamentous (mitochondrial) threads throughout the
    cytoplasm, densest around the nucleus; nucleus negative."""
    thr = f.tex("ridge_thick") * (0.45 + 0.55 * np.minimum(f.tex("coarse"), 2.0))
    c = f.cytoplasm_gain * (0.08 + 1.2 * thr) * (0.5 + 0.8 * f.perinuclear)
    m = f.mitotic_soft * (0.1 + 0.45 * f.tex("ridge")) * (1 - 0.8 * f.chromatin)
    return f.blur(c, 0.5) + m + 0.03 * f.nuclei_gain


@renders("AC-22")
def polar_golgi_like(f: Field) -> np.ndarray:
    """AC-22 polar/Golgi-like: a broken granular ribbon hugging one side of the nucleus; mitotic
    cells diffuse, accented around the chromosomes."""
    # Golgi sits on the side with more cytoplasm (towards the cell centre), else random
    side = np.arctan2(f.cy - f.ny, f.cx - f.nx)
    lx, ly = rotate(np.cos(side), np.sin(side), -f.theta)
    side_loc = np.where(
        np.hypot(f.cx - f.nx, f.cy - f.ny) > 1.5 * f.s, np.arctan2(ly, lx), f.rng.uniform(0, TAU, f.n)
    )
    side_loc = side_loc + f.rng.normal(0, 0.5, f.n)
    k = f.rng.integers(12, 26, f.n)
    k[f.is_mitotic] = 0
    o = np.repeat(np.arange(f.n), k)
    span = np.repeat(f.rng.uniform(0.9, 2.0, f.n), k)
    t = side_loc[o] + (f.rng.random(o.size) - 0.5) * span
    r = f.rng.uniform(1.08, 1.4, o.size)
    x, y = rotate(r * f.a[o] * np.cos(t), r * f.b[o] * np.sin(t), f.theta[o])
    x, y = f.nx[o] + x, f.ny[o] + y
    dots = f.splat(x, y, f.rng.uniform(0.5, 1.0, o.size) * f.gain[o], 1.15)
    mit = f.mitotic_soft * 0.25 * (1 + 0.6 * f.blur(f.chromatin, 3.0))
    return dots + 0.05 * f.cytoplasm_gain + 0.03 * f.nuclei_gain + mit


@renders("AC-23")
def rods_and_rings(f: Field) -> np.ndarray:
    """AC-23 rods and rings: a few bright rods (3-10 um) and rings (2-5 um) in the cytoplasm."""
    k = (f.rng.random(f.n) < 0.6).astype(int) + (f.rng.random(f.n) < 0.15)
    x, y, o = f.in_cytoplasm(k, 0.3, 0.85)
    x, y, o = x[: k.sum()], y[: k.sum()], o[: k.sum()]
    ring = f.rng.random(x.size) < 0.3
    c = f.canvas()
    rods = np.flatnonzero(~ring)
    if rods.size:
        L = f.rng.uniform(7, 18, rods.size) * f.s
        ang = f.rng.uniform(0, math.pi, rods.size)
        bend = f.rng.normal(0, 0.25, rods.size) * L
        dx, dy = np.cos(ang) * L / 2, np.sin(ang) * L / 2
        mx_, my_ = x[rods] - np.sin(ang) * bend, y[rods] + np.cos(ang) * bend
        pts = np.stack(
            [
                np.stack([x[rods] - dx, y[rods] - dy], -1),
                np.stack([mx_, my_], -1),
                np.stack([x[rods] + dx, y[rods] + dy], -1),
            ],
            1,
        )
        f.lines(c, pts, 1.0, 2)
    t = max(1, round(1.6 * f.s))
    for q in np.flatnonzero(ring):
        cv2.circle(
            c, (int(round(x[q])), int(round(y[q]))), max(2, int(round(f.rng.uniform(3, 5.5) * f.s))), 1.0, t
        )
    return f.blur(c, 0.6) * 1.1 + 0.08 * f.cytoplasm_gain + 0.06 * f.nuclei_gain + 0.06 * f.mitotic_soft
