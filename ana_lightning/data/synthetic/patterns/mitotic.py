"""Renderers of the mitotic patterns (AC-24 … AC-28), following ``shared/domain/PATTERNS.md``;
each returns the FITC signal (float32 H×W, ~0..1)."""

from __future__ import annotations

import cv2
import numpy as np

from ..geometry import TAU, Field, rotate
from .parts import (
    draw_nucleoli,
    fibrils_to_plate,
    pole_dots,
    uniform,
)
from .registry import renders


@renders("AC-24", mitoses=(2, 4))
def centrosome(f: Field) -> np.ndarray:
    """AC-24 centrosome: 1-2 distinct dots next to the nucleus of interphase cells, one at each
    spindle pole of mitotic cells."""
    k = 1 + (f.rng.random(f.n) < 0.35)
    k[f.is_mitotic] = 0
    o = np.repeat(np.arange(f.n), k)
    first = np.concatenate([[True], o[1:] != o[:-1]]) if o.size else np.zeros(0, bool)
    t = np.repeat(f.rng.uniform(0, TAU, f.n), k)
    r = f.rng.uniform(1.08, 1.35, f.n)[o] if o.size else np.zeros(0)
    x, y = rotate(r * f.a[o] * np.cos(t), r * f.b[o] * np.sin(t), f.theta[o])
    x, y = f.nx[o] + x, f.ny[o] + y
    x = x + np.where(first, 0, f.rng.uniform(-2.5, 2.5, o.size) * f.s)
    y = y + np.where(first, 0, f.rng.uniform(-2.5, 2.5, o.size) * f.s)
    dots = f.splat(x, y, f.rng.uniform(0.75, 1.0, o.size), 1.1)
    return (
        dots
        + pole_dots(f, 1.0, 1.6)
        + uniform(f, 0.04, 0.1) * f.cytoplasm_gain
        + 0.03 * f.nuclei_gain
        + 0.08 * f.mitotic_soft
    )


@renders("AC-25", mitoses=(2, 5), telophase=True, mitotic_only=True)
def spindle_fibers(f: Field) -> np.ndarray:
    """AC-25 spindle fibres: fibres between the poles and the plate with cone-shaped pole
    decoration; chromatin unstained; interphase nuclei negative; telophase midbody."""
    c = f.canvas()
    f.lines(c, fibrils_to_plate(f, 11, 0.95), 0.75, 1)
    c = f.blur(c, 0.6) * (1 - 0.85 * f.chromatin)
    cones = pole_dots(f, 1.0, 2.0)
    mid = f.canvas()
    late = np.flatnonzero(f.stage == 2)
    if late.size:
        seg = np.stack(
            [
                np.stack([f.mx[late] - f.mpx[late] * 5 * f.s, f.my[late] - f.mpy[late] * 5 * f.s], -1),
                np.stack([f.mx[late] + f.mpx[late] * 5 * f.s, f.my[late] + f.mpy[late] * 5 * f.s], -1),
            ],
            1,
        )
        f.lines(mid, seg, 0.8, 2)
    return (
        c
        + cones
        + f.blur(mid, 0.6)
        + 0.06 * f.cytoplasm_gain
        + 0.02 * f.nuclei_gain
        + 0.1 * f.mitotic_soft * (1 - f.chromatin)
    )


@renders("AC-26", mitoses=(3, 5), mitotic_only=True)
def numa_like(f: Field) -> np.ndarray:
    """AC-26 NuMA-like: fine speckled interphase nuclei (nucleoli spared); in mitosis the spindle
    poles and polar fibres are stained while chromosomes stay dark; telophase: re-forming nuclei."""
    nuc = (
        f.nuclei_gain
        * uniform(f, 0.35, 0.45)
        * (0.9 + 0.2 * f.tex("fine"))
        * (1.0 - 0.9 * f.blur(draw_nucleoli(f, 1.5), 0.6))
    )
    c = f.canvas()
    f.lines(c, fibrils_to_plate(f, 11, 0.7), 1.0, 2)
    c = f.blur(c, 0.8)
    poles = pole_dots(f, 1.0, 3.4)
    telo = np.isin(f.ch_j, np.flatnonzero(f.stage == 2))
    tl = f.canvas()
    for q in np.flatnonzero(telo):
        cv2.ellipse(
            tl,
            (
                (float(f.ch_x[q]), float(f.ch_y[q])),
                (float(2 * f.ch_a[q]), float(2 * f.ch_b[q])),
                float(np.degrees(f.ch_ang[q])),
            ),
            0.45,
            -1,
        )
    dark = 1 - 0.9 * f.chromatin * (1 - tl)
    return nuc + (c + poles + 0.12 * f.mitotic_soft) * dark + f.blur(tl, 0.7)


@renders("AC-27", mitoses=(2, 5), telophase=True, mitotic_only=True)
def intercellular_bridge(f: Field) -> np.ndarray:
    """AC-27 intercellular bridge: early interphase negative, late interphase fine speckles;
    metaphase centromere-like speckles; anaphase midzone band and telophase bridge/midbody bright."""
    lvl = np.where(f.phase > 0.5, uniform(f, 0.25, 0.4), 0.03)
    nuc = f.lut(lvl * f.gain, f.nucleus_labels) * (0.5 + 0.6 * f.tex("fine"))
    m = len(f.mitotic)
    meta = f.stage == 0
    x, y, j = f.in_chromatin(np.where(meta, f.rng.integers(25, 45, m), 0), 0.9)
    sp = f.splat(x, y, 0.6, 0.9) if m else f.canvas()
    c = f.canvas()
    ana = np.flatnonzero(f.stage == 1)
    if ana.size:  # midzone band between the separating chromatids (parallel to them)
        ux, uy = np.cos(f.mphi[ana]), np.sin(f.mphi[ana])
        h = f.mLh[ana] * 0.7
        f.lines(
            c,
            np.stack(
                [
                    np.stack([f.mx[ana] - ux * h, f.my[ana] - uy * h], -1),
                    np.stack([f.mx[ana] + ux * h, f.my[ana] + uy * h], -1),
                ],
                1,
            ),
            1.0,
            2,
        )
    tel = np.flatnonzero(f.stage == 2)
    if tel.size:  # bridge across the neck plus a midbody dot
        h = f.mR[tel] * 0.4
        f.lines(
            c,
            np.stack(
                [
                    np.stack([f.mx[tel] - f.mpx[tel] * h, f.my[tel] - f.mpy[tel] * h], -1),
                    np.stack([f.mx[tel] + f.mpx[tel] * h, f.my[tel] + f.mpy[tel] * h], -1),
                ],
                1,
            ),
            1.0,
            2,
        )
        c = np.maximum(c, f.splat(f.mx[tel], f.my[tel], 1.0, 1.5))
    return nuc + sp + f.blur(c, 0.6) * 1.1 + 0.08 * f.mitotic_soft + 0.04 * f.cytoplasm_gain


@renders("AC-28", mitoses=(2, 5), mitotic_only=True)
def mitotic_chromosomal_coat(f: Field) -> np.ndarray:
    """AC-28 mitotic chromosomal coat: bright perichromosomal coat on pro/metaphase chromatin
    (rim-accented); interphase nuclei unstained."""
    rim = f.canvas()
    f.draw_chromatin(rim, 1.0, max(1, round(2 * f.s)))
    coat = f.blur(0.8 * f.chromatin + 0.5 * rim, 0.8)
    return (
        coat * uniform(f, 1.0, 1.3) + 0.05 * f.nuclei_gain + 0.05 * f.cytoplasm_gain + 0.08 * f.mitotic_soft
    )
