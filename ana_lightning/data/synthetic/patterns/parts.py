"""Pieces several pattern renderers share: dark/bright mitotic plates, nuclear dots, nucleoli,
fibres, spindle poles, nuclear rims and wavy filaments."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..geometry import TAU, Field, rotate

__all__ = [
    "uniform",
    "dark_plate",
    "bright_plate",
    "nucleoli_factor",
    "nuclear_dots",
    "draw_nucleoli",
    "nor_pairs",
    "nucleolus_points",
    "pole_dots",
    "fibrils_to_plate",
    "fibres_along",
    "nuclear_rim",
    "wavy_lines",
]


def uniform(f: Field, lo: float, hi: float) -> float:
    return float(f.rng.uniform(lo, hi))


def dark_plate(f: Field, level: float, tex: np.ndarray | None = None) -> np.ndarray:
    """Mitotic cell diffusely stained with an unstained (dark) chromatin mass."""
    m = f.mitotic_soft * level
    if tex is not None:
        m = m * tex
    return m * (1.0 - 0.92 * f.blur(f.chromatin, 0.6))


def bright_plate(f: Field, level: float, tex: np.ndarray | None = None) -> np.ndarray:
    p = f.chromatin * level
    if tex is not None:
        p = p * tex
    return p


def nucleoli_factor(f: Field, keep: float) -> np.ndarray:
    return 1.0 - (1.0 - keep) * f.nucleoli


def fibres_along(
    f: Field,
    nper: np.ndarray,
    frac_b: float = 0.9,
    jitter: float = 0.12,
    cover: tuple[float, float] = (0.7, 0.98),
) -> np.ndarray:
    """Straight chords of the cell ellipses along the cell's long axis: (N, 2, 2)."""
    nper = np.where(f.is_mitotic, 0, nper)
    o = np.repeat(np.arange(f.n), nper)
    t = f.rng.uniform(-frac_b, frac_b, o.size)
    h = np.sqrt(np.maximum(1 - t * t, 0.05)) * f.A[o] * f.rng.uniform(*cover, o.size)
    ang = f.theta[o] + f.rng.normal(0, jitter, o.size)
    sh = f.rng.uniform(-0.15, 0.15, o.size) * f.A[o]
    x0, y0 = rotate(-h + sh, t * f.B[o], ang)
    x1, y1 = rotate(h + sh, t * f.B[o], ang)
    p0 = np.stack([f.cx[o] + x0, f.cy[o] + y0], -1)
    p1 = np.stack([f.cx[o] + x1, f.cy[o] + y1], -1)
    return np.stack([p0, p1], 1)


def fibrils_to_plate(f: Field, nfib: int, reach: float = 1.0) -> np.ndarray:
    """Spindle fibres from both poles of metaphase/anaphase cells towards the plate."""
    segs = []
    for j in range(len(f.mitotic)):
        if f.stage[j] == 2:
            continue
        ux, uy = math.cos(f.mphi[j]), math.sin(f.mphi[j])
        for p in range(2):
            px, py = f.pole[j, p]
            tt = np.linspace(-0.95, 0.95, nfib) * f.mLh[j] + f.rng.normal(0, 0.08 * f.mLh[j], nfib)
            tx = f.mx[j] + tt * ux
            ty = f.my[j] + tt * uy
            ex = px + (tx - px) * reach
            ey = py + (ty - py) * reach
            segs.append(
                np.stack([np.stack([np.full(nfib, px), np.full(nfib, py)], -1), np.stack([ex, ey], -1)], 1)
            )
    return np.concatenate(segs, 0) if segs else np.zeros((0, 2, 2))


def pole_dots(f: Field, amp: float, sigma: float) -> np.ndarray:
    ok = f.stage < 2
    if not np.any(ok):
        return f.canvas()
    p = f.pole[ok].reshape(-1, 2)
    return f.splat(p[:, 0], p[:, 1], amp, sigma)


def nuclear_dots(
    f: Field, lo: int, hi: int, amp: tuple[float, float], sigma: float, rmax: float = 0.85
) -> np.ndarray:
    k = f.rng.integers(lo, hi + 1, f.n)
    x, y, o = f.in_nuclei(k, rmax)
    a = f.rng.uniform(*amp, x.size) * f.gain[o]
    return f.splat(x, y, a, sigma)


def draw_nucleoli(f: Field, scale: float, value: np.ndarray | float = 1.0, thickness: int = -1) -> np.ndarray:
    """Nucleoli drawn at ``scale`` x their radius (filled, or outlines with ``thickness`` > 0)."""
    c = f.canvas()
    v = np.broadcast_to(np.asarray(value, np.float64), f.nol_x.shape)
    t = thickness if thickness < 0 else max(1, int(round(thickness * f.s)))
    for x, y, r, e, an, vv in zip(f.nol_x, f.nol_y, f.nol_r, f.nol_e, f.nol_ang, v, strict=True):
        cv2.ellipse(
            c,
            ((float(x), float(y)), (float(2 * r * scale), float(2 * r * e * scale)), float(an)),
            float(vv),
            t,
        )
    return c


def nucleolus_points(f: Field, lo: int, hi: int, spread: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points clustered on the nucleoli: returns (x, y, owning cell)."""
    o = np.repeat(np.arange(f.nol_j.size), f.rng.integers(lo, hi + 1, f.nol_j.size))
    t = f.rng.uniform(0, TAU, o.size)
    r = np.sqrt(f.rng.random(o.size)) * f.nol_r[o] * spread
    return f.nol_x[o] + r * np.cos(t), f.nol_y[o] + r * np.sin(t), f.nol_j[o]


def nor_pairs(f: Field, amp: float) -> np.ndarray:
    m = len(f.mitotic)
    if m == 0:
        return f.canvas()
    k = f.rng.integers(2, 6, m)
    x, y, j = f.in_chromatin(k * 1, 0.7)
    d = 1.6 * f.s
    ax, ay = f.mpx[j] * d, f.mpy[j] * d
    xs = np.concatenate([x + ax, x - ax])
    ys = np.concatenate([y + ay, y - ay])
    return f.splat(xs, ys, amp, 0.9)


def nuclear_rim(f: Field, thickness: float) -> np.ndarray:
    c = f.canvas()
    t = max(1, int(round(thickness * f.s)))
    for i in np.flatnonzero(~f.is_mitotic):
        cv2.ellipse(
            c,
            (
                (float(f.nx[i]), float(f.ny[i])),
                (float(2 * f.a[i]), float(2 * f.b[i])),
                float(np.degrees(f.theta[i])),
            ),
            float(f.gain[i]),
            t,
        )
    return c


def wavy_lines(f: Field, sx, sy, ex, ey, amp: tuple[float, float], P: int = 8) -> np.ndarray:
    """Wavy polylines from (sx, sy) to (ex, ey): (N, P, 2)."""
    u = np.linspace(0, 1, P)[None, :]
    L = np.hypot(ex - sx, ey - sy) + 1e-6
    nx_, ny_ = -(ey - sy) / L, (ex - sx) / L
    n = len(sx)
    a = f.rng.uniform(*amp, n)[:, None] * f.s
    ph = f.rng.uniform(0, TAU, n)[:, None]
    fr = f.rng.uniform(0.8, 2.2, n)[:, None]
    w = a * np.sin(TAU * fr * u + ph) * np.sin(math.pi * u)
    px = sx[:, None] + (ex - sx)[:, None] * u + nx_[:, None] * w
    py = sy[:, None] + (ey - sy)[:, None] * u + ny_[:, None] * w
    return np.stack([px, py], -1)
