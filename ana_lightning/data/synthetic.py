"""Procedural HEp-2 indirect-immunofluorescence field simulator (ICAP patterns AC-0 … AC-31).

Every field is a dark, slightly uneven background with tens of flat HEp-2 cells (polygonal, mostly
faint cytoplasm; an elliptical nucleus taking 30-50 % of the cell, with 1-4 nucleoli) of varied size,
elongation and orientation, and a few mitotic cells (metaphase plates, some ana- and telophases).
A pattern renderer (one per ICAP code, following ``shared/domain/PATTERNS.md``) paints the FITC signal
into these cells; the field is then blurred (optics), lit (gain, background glow), given shot and read
noise and turned into an RGB ``uint8`` image: green dominant, a little red/blue leakage and, with
``dapi=True``, a blue DAPI counterstain of the nuclei and metaphase plates.

Speed comes from drawing label maps once with OpenCV (``fillPoly``/``ellipse``), painting textures as
whole-field array operations on crops of precomputed texture banks, and rendering dots/fibres in a
vectorised way (``bincount`` splats + one Gaussian blur, batched ``polylines``).

Public API: :data:`CODES`, :func:`render_field`, :func:`generate_dataset`,
:func:`generate_hospital_dataset` and :func:`main` (console script ``ana-synth``).

AC-30 and AC-31 have no confirmed ICAP definition. Their renders here are plausible, deliberately
distinct stand-ins (see :func:`_r30` and :func:`_r31`), not references.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "CODES",
    "LEVEL2",
    "render_field",
    "generate_dataset",
    "generate_hospital_dataset",
    "main",
]

CODES: tuple[str, ...] = tuple(f"AC-{i}" for i in range(32))

#: Level-2 (ICAP "competent level") group of each code; a local copy so the simulator stays
#: independent of the taxonomy module (used by the benchmark to report speed per group).
LEVEL2: dict[str, str] = {
    "AC-0": "negative",
    "AC-1": "homogeneous",
    "AC-2": "speckled", "AC-4": "speckled", "AC-5": "speckled", "AC-29": "speckled",
    "AC-3": "centromere",
    "AC-6": "discrete nuclear dots", "AC-7": "discrete nuclear dots",
    "AC-8": "nucleolar", "AC-9": "nucleolar", "AC-10": "nucleolar",
    "AC-11": "nuclear envelope", "AC-12": "nuclear envelope",
    "AC-13": "pleomorphic", "AC-14": "pleomorphic",
    "AC-15": "fibrillar", "AC-16": "fibrillar", "AC-17": "fibrillar",
    "AC-18": "cytoplasmic speckled", "AC-19": "cytoplasmic speckled", "AC-20": "cytoplasmic speckled",
    "AC-21": "reticular/AMA",
    "AC-22": "polar/Golgi-like",
    "AC-23": "rods and rings",
    "AC-24": "centrosome",
    "AC-25": "spindle fibers",
    "AC-26": "NuMA-like",
    "AC-27": "intercellular bridge",
    "AC-28": "mitotic chromosomal envelope",
    "AC-30": "unconfirmed", "AC-31": "unconfirmed",
}

_REF = 256  # geometry below is written for a 256x256 field and scaled by size / 256
_TAU = 2.0 * math.pi


# ----------------------------------------------------------------------------------------------
# Texture banks (deterministic, built once per field size)
# ----------------------------------------------------------------------------------------------


def _norm(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    return (a / (a.std() + 1e-8)).astype(np.float32)


def _mean1(a: np.ndarray) -> np.ndarray:
    return (a / (a.mean() + 1e-8)).astype(np.float32)


class _Bank:
    """Precomputed float32 textures of side ``2 * size``; fields use random crops of them."""

    def __init__(self, size: int, scale: float | None = None):
        s = size / _REF if scale is None else float(scale)
        t = 2 * size
        self.t = t
        r = np.random.default_rng(0x5EED_4E92)

        def smooth(sigma: float) -> np.ndarray:
            w = r.standard_normal((t, t)).astype(np.float32)
            return _norm(cv2.GaussianBlur(w, (0, 0), max(sigma * s, 0.3), borderType=cv2.BORDER_REFLECT))

        self.noise = r.standard_normal((t, t)).astype(np.float32)
        # fine grain (AC-4 like): dense tiny speckles, little gap between them
        self.fine = np.minimum(_mean1(np.maximum(smooth(0.6) + 0.4, 0.0) ** 1.3), 3.0)
        # coarse speckles (AC-5 like): discrete blobs with dark gaps
        self.coarse = np.minimum(_mean1(np.maximum(smooth(1.45) - 0.4, 0.0) ** 1.1), 3.5)
        # big clumps / holes
        self.blob = _mean1(np.maximum(smooth(2.8) - 0.6, 0.0))
        self.mid = smooth(4.0)
        self.low = smooth(14.0)
        # curvy thread networks: zero-crossings of smooth noise
        self.ridge = np.exp(-((smooth(2.4) / 0.28) ** 2)).astype(np.float32)
        self.ridge_thick = np.exp(-((smooth(2.2) / 0.45) ** 2)).astype(np.float32)


@lru_cache(maxsize=8)
def _bank(size: int, scale: float | None = None) -> _Bank:
    return _Bank(size, scale)


# ----------------------------------------------------------------------------------------------
# Field geometry
# ----------------------------------------------------------------------------------------------


def _rot(x: np.ndarray, y: np.ndarray, ang: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(ang), np.sin(ang)
    return x * c - y * s, x * s + y * c


class _Field:
    """Cells, label maps and helpers shared by the pattern renderers of one field."""

    def __init__(self, rng: np.random.Generator, size: int, n_mitoses: tuple[int, int] | None,
                 need_telophase: bool = False, scale: float | None = None):
        self.rng = rng
        self.H = self.W = size
        # scale: pixels per unit of the 256-px reference geometry (None: size / 256, the default look)
        self.s = size / _REF if scale is None else float(scale)
        self.fixed_zoom = scale is not None
        self.bank = _bank(size) if scale is None else _bank(size, round(float(scale), 4))
        self._cache: dict[str, np.ndarray] = {}
        self._make_cells(n_mitoses, need_telophase)

    # -- geometry ---------------------------------------------------------------------------
    def _make_cells(self, n_mitoses: tuple[int, int] | None, need_telophase: bool) -> None:
        rng, s, H = self.rng, self.s, self.H
        zoom = rng.uniform(0.8, 1.25)
        if self.fixed_zoom:  # a given nucleus size: no random zoom on top of it
            zoom = 1.0
        a_mean = 15.0 * zoom * s
        # hexagonal jittered grid, a few holes, cells touching / overlapping a little
        cell_r = a_mean * 1.66
        d = 2.0 * cell_r * rng.uniform(0.84, 0.97)
        rows = np.arange(-0.5, H / (0.866 * d) + 1.0)
        cols = np.arange(-0.5, H / d + 1.0)
        gy, gx = np.meshgrid(rows * 0.866 * d, cols * d, indexing="ij")
        gx = gx + (np.arange(len(rows))[:, None] % 2) * 0.5 * d
        cx = gx.ravel() + rng.uniform(-0.28, 0.28, gx.size) * d
        cy = gy.ravel() + rng.uniform(-0.28, 0.28, gy.size) * d
        keep = rng.random(cx.size) > rng.uniform(0.04, 0.35)
        keep &= (cx > -0.4 * d) & (cx < H + 0.4 * d) & (cy > -0.4 * d) & (cy < H + 0.4 * d)
        cx, cy = cx[keep], cy[keep]
        order = rng.permutation(cx.size)
        cx, cy = cx[order], cy[order]
        n = cx.size
        self.n = n
        theta0 = rng.uniform(0, math.pi)
        theta = theta0 + rng.normal(0, rng.uniform(0.25, 1.2), n)
        a = a_mean * rng.uniform(0.78, 1.22, n)
        b = a * rng.uniform(0.58, 0.9, n)
        A = a * rng.uniform(1.7, 2.2, n)
        B = b * rng.uniform(1.6, 2.0, n)
        # nucleus offset along the cell's long axis
        off = rng.uniform(-0.3, 0.3, n) * (A - a)
        nx = cx + off * np.cos(theta)
        ny = cy + off * np.sin(theta)
        self.cx, self.cy, self.theta, self.A, self.B = cx, cy, theta, A, B
        self.nx, self.ny, self.a, self.b = nx, ny, a, b
        self.gain = np.exp(rng.normal(0, 0.16, n)).astype(np.float32)
        self.phase = rng.random(n)  # cell-cycle position: <0.45 G1, <0.8 S, else G2

        # mitoses
        if n_mitoses is None:
            m = int(rng.binomial(n, 0.035))
            if m == 0 and rng.random() < 0.8:
                m = 1
        else:
            m = int(rng.integers(n_mitoses[0], n_mitoses[1] + 1))
        m = min(m, n)
        # prefer cells well inside the field for mitoses
        inside = np.abs(cx - H / 2) + np.abs(cy - H / 2)
        cand = np.argsort(inside + rng.uniform(0, H * 0.6, n))
        mit = np.sort(cand[:m])
        self.is_mit = np.zeros(n, bool)
        self.is_mit[mit] = True
        self.mit = mit
        st = rng.choice(3, size=m, p=[0.68, 0.14, 0.18])
        if need_telophase and m > 0 and not np.any(st > 0):
            st[rng.integers(m)] = int(rng.integers(1, 3))
        self.stage = st
        R = np.sqrt(A[mit] * B[mit]) * rng.uniform(0.8, 0.92, m)
        phi = rng.uniform(0, math.pi, m)  # plate axis
        Lh = a[mit] * rng.uniform(0.8, 1.05, m)
        Wh = np.maximum(Lh * rng.uniform(0.16, 0.25, m), 1.6 * s)
        px, py = -np.sin(phi), np.cos(phi)  # spindle axis (perpendicular to the plate)
        mx, my = cx[mit], cy[mit]
        self.mx, self.my, self.mR, self.mphi, self.mLh, self.mWh = mx, my, R, phi, Lh, Wh
        self.mpx, self.mpy = px, py
        dpole = np.where(st == 0, Lh * 0.85, Lh * 1.05)
        dpole = np.where(st == 2, R * 0.62, dpole)
        self.pole = np.stack([np.stack([mx + px * dpole, my + py * dpole], -1),
                              np.stack([mx - px * dpole, my - py * dpole], -1)], 1)  # (m, 2, 2)
        # chromatin ellipses: (owner j, x, y, a, b, angle)
        ch = []
        for j in range(m):
            if st[j] == 0:
                ch.append((j, mx[j], my[j], Lh[j], Wh[j], phi[j]))
            elif st[j] == 1:
                sep = Lh[j] * rng.uniform(0.35, 0.55)
                for sg in (1, -1):
                    ch.append((j, mx[j] + sg * px[j] * sep, my[j] + sg * py[j] * sep,
                               Lh[j] * 0.85, Wh[j] * 0.8, phi[j]))
            else:
                sep = R[j] * 0.62
                for sg in (1, -1):
                    ch.append((j, mx[j] + sg * px[j] * sep, my[j] + sg * py[j] * sep,
                               Lh[j] * 0.55, Lh[j] * 0.32, phi[j]))
        chs = np.array(ch, dtype=np.float64).reshape(-1, 6)
        self.ch_j = chs[:, 0].astype(int)
        self.ch_x, self.ch_y, self.ch_a, self.ch_b, self.ch_ang = chs[:, 1], chs[:, 2], chs[:, 3], chs[:, 4], chs[:, 5]

        # nucleoli (interphase cells)
        k = rng.choice(4, size=n, p=[0.2, 0.38, 0.28, 0.14]) + 1
        k[self.is_mit] = 0
        owner = np.repeat(np.arange(n), k)
        rr = np.sqrt(rng.random(owner.size)) * 0.5
        tt = rng.uniform(0, _TAU, owner.size)
        ux, uy = _rot(rr * a[owner] * np.cos(tt), rr * b[owner] * np.sin(tt), theta[owner])
        self.nol_j = owner
        self.nol_x, self.nol_y = nx[owner] + ux, ny[owner] + uy
        self.nol_r = np.sqrt(a[owner] * b[owner]) * rng.uniform(0.14, 0.24, owner.size)
        self.nol_e = rng.uniform(0.6, 1.0, owner.size)
        self.nol_ang = rng.uniform(0, 180, owner.size)

        self._draw_labels(rng)

    def _draw_labels(self, rng: np.random.Generator) -> None:
        n, H = self.n, self.H
        dt = np.uint8 if n < 255 else np.int32
        cyt = np.zeros((H, H), dt)
        nuc = np.zeros((H, H), dt)
        K = 18
        ang = np.linspace(0, _TAU, K, endpoint=False)[None, :]
        # smooth irregular outline: low harmonics plus an optional process (pseudopod)
        rad = np.ones((n, K))
        for h in (2, 3, 4):
            rad += rng.uniform(0, 0.2 / h, (n, 1)) * np.cos(h * ang + rng.uniform(0, _TAU, (n, 1)))
        t0 = rng.choice([0.0, math.pi], (n, 1)) + rng.normal(0, 0.4, (n, 1))
        dt = np.angle(np.exp(1j * (ang - t0)))
        rad += (rng.random((n, 1)) < 0.45) * rng.uniform(0.2, 0.7, (n, 1)) * np.exp(-((dt / 0.32) ** 2))
        ux, uy = _rot(self.A[:, None] * rad * np.cos(ang), self.B[:, None] * rad * np.sin(ang),
                      self.theta[:, None])
        poly = np.stack([self.cx[:, None] + ux, self.cy[:, None] + uy], -1).round().astype(np.int32)
        for i in np.flatnonzero(~self.is_mit):
            cv2.fillPoly(cyt, [poly[i]], int(i + 1))
        for i in np.flatnonzero(~self.is_mit):
            cv2.ellipse(nuc, ((float(self.nx[i]), float(self.ny[i])), (float(2 * self.a[i]), float(2 * self.b[i])),
                              float(np.degrees(self.theta[i]))), int(i + 1), -1)
        # mitotic cells are rounded up and sit on top
        for j, i in enumerate(self.mit):
            c = (float(self.mx[j]), float(self.my[j]))
            if self.stage[j] == 2:
                sep = self.mR[j] * 0.62
                for sg in (1, -1):
                    cc = (c[0] + sg * self.mpx[j] * sep, c[1] + sg * self.mpy[j] * sep)
                    box = (cc, (float(1.3 * self.mR[j]), float(1.3 * self.mR[j])), 0.0)
                    cv2.ellipse(cyt, box, int(i + 1), -1)
                    cv2.ellipse(nuc, box, 0, -1)
            else:
                box = (c, (float(2 * self.mR[j]), float(2 * self.mR[j] * 0.94)), float(np.degrees(self.mphi[j])))
                cv2.ellipse(cyt, box, int(i + 1), -1)
                cv2.ellipse(nuc, box, 0, -1)
        self.cyt_lab, self.nuc_lab = cyt, nuc

    # -- cached maps ------------------------------------------------------------------------
    def _get(self, key: str, fn: Callable[[], np.ndarray]) -> np.ndarray:
        v = self._cache.get(key)
        if v is None:
            v = fn()
            self._cache[key] = v
        return v

    def lut(self, values: np.ndarray, lab: np.ndarray) -> np.ndarray:
        t = np.zeros(self.n + 1, np.float32)
        t[1:] = values
        return t[lab]

    @property
    def nuc(self) -> np.ndarray:
        """Interphase nuclei, 0/1."""
        return self._get("nuc", lambda: (self.nuc_lab > 0).astype(np.float32))

    @property
    def mitm(self) -> np.ndarray:
        """Whole mitotic cells (rounded), 0/1."""
        return self._get("mitm", lambda: self.lut(self.is_mit.astype(np.float32), self.cyt_lab))

    @property
    def mits(self) -> np.ndarray:
        """Mitotic cells with soft edges (for diffuse mitotic staining)."""
        return self._get("mits", lambda: self.blur(self.mitm, 1.5))

    @property
    def allc(self) -> np.ndarray:
        return self._get("allc", lambda: np.maximum((self.cyt_lab > 0).astype(np.float32), self.nuc))

    @property
    def cyt(self) -> np.ndarray:
        """Interphase cytoplasm (outside nuclei and mitotic cells), 0/1."""
        return self._get("cyt", lambda: (self.allc - self.nuc - self.mitm).clip(0, 1))

    @property
    def ng(self) -> np.ndarray:
        """Interphase nuclei x per-cell gain."""
        return self._get("ng", lambda: self.lut(self.gain, self.nuc_lab))

    @property
    def cg(self) -> np.ndarray:
        """Interphase cytoplasm x per-cell gain."""
        return self._get("cg", lambda: self.lut(self.gain, self.cyt_lab) * self.cyt)

    @property
    def nol(self) -> np.ndarray:
        def mk() -> np.ndarray:
            c = np.zeros((self.H, self.W), np.float32)
            for x, y, r, e, an in zip(self.nol_x, self.nol_y, self.nol_r, self.nol_e, self.nol_ang,
                                      strict=True):
                cv2.ellipse(c, ((float(x), float(y)), (float(2 * r), float(2 * r * e)), float(an)), 1.0, -1)
            return c * self.nuc
        return self._get("nol", mk)

    @property
    def plate(self) -> np.ndarray:
        """Condensed mitotic chromatin, 0/1."""
        def mk() -> np.ndarray:
            c = np.zeros((self.H, self.W), np.float32)
            self.draw_chromatin(c, 1.0, -1)
            return c
        return self._get("plate", mk)

    @property
    def perinuc(self) -> np.ndarray:
        """Smooth halo around nuclei (higher near the nucleus), 0..~1."""
        def mk() -> np.ndarray:
            h = cv2.GaussianBlur(self.nuc, (0, 0), 6.0 * self.s)
            return np.minimum(h * 2.0, 1.0)
        return self._get("perinuc", mk)

    def draw_chromatin(self, canvas: np.ndarray, value: float, thickness: int) -> None:
        for x, y, a, b, an in zip(self.ch_x, self.ch_y, self.ch_a, self.ch_b, self.ch_ang, strict=True):
            cv2.ellipse(canvas, ((float(x), float(y)), (float(2 * a), float(2 * b)), float(np.degrees(an))),
                        value, thickness)

    def tex(self, name: str) -> np.ndarray:
        """Random crop (with random flips) of a bank texture, HxW float32 view."""
        t = getattr(self.bank, name)
        o = self.rng.integers(0, self.bank.t - self.H + 1, 2)
        v = t[o[0]:o[0] + self.H, o[1]:o[1] + self.W]
        f = int(self.rng.integers(4))
        if f & 1:
            v = v[::-1]
        if f & 2:
            v = v[:, ::-1]
        return v

    def canvas(self) -> np.ndarray:
        return np.zeros((self.H, self.W), np.float32)

    # -- point / line helpers ---------------------------------------------------------------
    def splat(self, x: np.ndarray, y: np.ndarray, amp: np.ndarray | float, sigma: float) -> np.ndarray:
        """Gaussian dots of peak ``amp`` and width ``sigma`` (pixels at 256) at (x, y)."""
        sig = sigma * self.s
        ix = np.rint(x).astype(np.int64)
        iy = np.rint(y).astype(np.int64)
        ok = (ix >= 0) & (ix < self.W) & (iy >= 0) & (iy < self.H)
        amp = np.broadcast_to(np.asarray(amp, np.float64), ix.shape)[ok]
        flat = np.bincount(iy[ok] * self.W + ix[ok], weights=amp, minlength=self.H * self.W)
        c = flat.reshape(self.H, self.W).astype(np.float32)
        return cv2.GaussianBlur(c, (0, 0), sig) * (_TAU * sig * sig)

    def in_ellipses(self, cx, cy, a, b, ang, counts, rmin: float = 0.0, rmax: float = 1.0):
        """Uniform points inside ellipses; returns (x, y, owner)."""
        owner = np.repeat(np.arange(len(counts)), counts)
        u = self.rng.random(owner.size)
        r = np.sqrt(rmin * rmin + u * (rmax * rmax - rmin * rmin))
        t = self.rng.uniform(0, _TAU, owner.size)
        ux, uy = _rot(r * a[owner] * np.cos(t), r * b[owner] * np.sin(t), ang[owner])
        return cx[owner] + ux, cy[owner] + uy, owner

    def in_nuclei(self, counts: np.ndarray, rmax: float = 0.92):
        counts = np.where(self.is_mit, 0, counts)
        return self.in_ellipses(self.nx, self.ny, self.a, self.b, self.theta, counts, 0.0, rmax)

    def in_cytoplasm(self, counts: np.ndarray, rmin: float = 0.25, rmax: float = 0.95):
        """Points in the cytoplasm of interphase cells (outside the nucleus)."""
        counts = np.where(self.is_mit, 0, counts)
        x, y, o = self.in_ellipses(self.cx, self.cy, self.A, self.B, self.theta, counts * 2, rmin, rmax)
        dx, dy = _rot(x - self.nx[o], y - self.ny[o], -self.theta[o])
        out = (dx / (self.a[o] * 1.08)) ** 2 + (dy / (self.b[o] * 1.08)) ** 2 > 1.0
        return x[out], y[out], o[out]

    def on_rim(self, counts: np.ndarray, scale: float = 1.0, jitter: float = 0.0):
        """Points on the nuclear outline of interphase cells (spacing ~ even with jitter)."""
        counts = np.where(self.is_mit, 0, counts)
        o = np.repeat(np.arange(self.n), counts)
        start = np.repeat(self.rng.uniform(0, _TAU, self.n), counts)
        idx = np.arange(o.size) - np.repeat(np.cumsum(counts) - counts, counts)
        t = start + _TAU * (idx + self.rng.uniform(-0.3, 0.3, o.size)) / np.maximum(counts[o], 1)
        r = scale + jitter * self.rng.normal(0, 1, o.size)
        ux, uy = _rot(r * self.a[o] * np.cos(t), r * self.b[o] * np.sin(t), self.theta[o])
        return self.nx[o] + ux, self.ny[o] + uy, o

    def in_chromatin(self, counts_per_mitosis: np.ndarray, rmax: float = 0.95):
        """Points inside the chromatin of each mitotic cell (counts indexed by mitosis j)."""
        per_ch = np.asarray(counts_per_mitosis)[self.ch_j] if len(self.ch_j) else np.zeros(0, int)
        nch = np.bincount(self.ch_j, minlength=len(self.mit)) if len(self.ch_j) else np.zeros(0, int)
        if len(nch):
            per_ch = np.maximum(per_ch // np.maximum(nch[self.ch_j], 1), 0)
        x, y, o = self.in_ellipses(self.ch_x, self.ch_y, self.ch_a, self.ch_b, self.ch_ang, per_ch, 0.0, rmax)
        return x, y, self.ch_j[o] if o.size else o

    def lines(self, canvas: np.ndarray, pts: np.ndarray, value: float = 1.0, thickness: float = 1.0) -> None:
        """Draw open polylines ``pts`` of shape (N, P, 2) (float, pixel coords) in one call."""
        if len(pts) == 0:
            return
        t = max(1, int(round(thickness * self.s)))
        cv2.polylines(canvas, list(np.rint(pts).astype(np.int32)), False, float(value), t, cv2.LINE_8)

    def blur(self, a: np.ndarray, sigma: float) -> np.ndarray:
        return cv2.GaussianBlur(a, (0, 0), max(sigma * self.s, 0.3))


# ----------------------------------------------------------------------------------------------
# Shared pieces of pattern renderers
# ----------------------------------------------------------------------------------------------


def _u(f: _Field, lo: float, hi: float) -> float:
    return float(f.rng.uniform(lo, hi))


def _dark_plate(f: _Field, level: float, tex: np.ndarray | None = None) -> np.ndarray:
    """Mitotic cell diffusely stained with an unstained (dark) chromatin mass."""
    m = f.mits * level
    if tex is not None:
        m = m * tex
    return m * (1.0 - 0.92 * f.blur(f.plate, 0.6))


def _bright_plate(f: _Field, level: float, tex: np.ndarray | None = None) -> np.ndarray:
    p = f.plate * level
    if tex is not None:
        p = p * tex
    return p


def _nucleoli_factor(f: _Field, keep: float) -> np.ndarray:
    return 1.0 - (1.0 - keep) * f.nol


def _fibres_along(f: _Field, nper: np.ndarray, frac_b: float = 0.9, jitter: float = 0.12,
                  cover: tuple[float, float] = (0.7, 0.98)) -> np.ndarray:
    """Straight chords of the cell ellipses along the cell's long axis: (N, 2, 2)."""
    nper = np.where(f.is_mit, 0, nper)
    o = np.repeat(np.arange(f.n), nper)
    t = f.rng.uniform(-frac_b, frac_b, o.size)
    h = np.sqrt(np.maximum(1 - t * t, 0.05)) * f.A[o] * f.rng.uniform(*cover, o.size)
    ang = f.theta[o] + f.rng.normal(0, jitter, o.size)
    sh = f.rng.uniform(-0.15, 0.15, o.size) * f.A[o]
    x0, y0 = _rot(-h + sh, t * f.B[o], ang)
    x1, y1 = _rot(h + sh, t * f.B[o], ang)
    p0 = np.stack([f.cx[o] + x0, f.cy[o] + y0], -1)
    p1 = np.stack([f.cx[o] + x1, f.cy[o] + y1], -1)
    return np.stack([p0, p1], 1)


def _fibrils_to_plate(f: _Field, nfib: int, reach: float = 1.0) -> np.ndarray:
    """Spindle fibres from both poles of metaphase/anaphase cells towards the plate."""
    segs = []
    for j in range(len(f.mit)):
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
            segs.append(np.stack([np.stack([np.full(nfib, px), np.full(nfib, py)], -1),
                                  np.stack([ex, ey], -1)], 1))
    return np.concatenate(segs, 0) if segs else np.zeros((0, 2, 2))


def _pole_dots(f: _Field, amp: float, sigma: float) -> np.ndarray:
    ok = f.stage < 2
    if not np.any(ok):
        return f.canvas()
    p = f.pole[ok].reshape(-1, 2)
    return f.splat(p[:, 0], p[:, 1], amp, sigma)


def _nuclear_dots(f: _Field, lo: int, hi: int, amp: tuple[float, float], sigma: float,
                  rmax: float = 0.85) -> np.ndarray:
    k = f.rng.integers(lo, hi + 1, f.n)
    x, y, o = f.in_nuclei(k, rmax)
    a = f.rng.uniform(*amp, x.size) * f.gain[o]
    return f.splat(x, y, a, sigma)


# ----------------------------------------------------------------------------------------------
# Pattern renderers: each returns the FITC signal (float32 HxW, ~0..1)
# ----------------------------------------------------------------------------------------------


def _r0(f: _Field) -> np.ndarray:
    """AC-0 negative: no structure (the faint cell glow is added by the compositor)."""
    return f.canvas()


def _r1(f: _Field) -> np.ndarray:
    """AC-1 homogeneous: even nucleoplasm, nucleoli +/-; metaphase chromatin bright and smooth."""
    nuc = f.ng * (0.9 + 0.06 * f.tex("mid")) * _nucleoli_factor(f, _u(f, 0.7, 1.0))
    return f.blur(nuc + _bright_plate(f, _u(f, 1.25, 1.55)), 0.7) + 0.05 * f.mits


def _r2(f: _Field) -> np.ndarray:
    """AC-2 dense fine speckled: mixed fine + coarse specks, denser/looser zones, broken rim;
    metaphase plate brighter than the interphase nuclei, same texture."""
    tex = (0.35 + 0.38 * f.tex("fine") + 0.1 * f.tex("coarse")) * (0.8 + 0.2 * f.tex("mid"))
    nuc = f.ng * tex * _nucleoli_factor(f, _u(f, 0.5, 0.85))
    nuc = nuc + _nuclear_dots(f, 2, 8, (0.2, 0.4), 1.0)
    band = f.nuc - cv2.erode(f.nuc, np.ones((3, 3), np.uint8))
    nuc = nuc * (1.0 - 0.7 * band * (f.tex("coarse") < 0.6))
    plate = _bright_plate(f, _u(f, 1.35, 1.7), 0.6 + 0.3 * f.tex("fine") + 0.3 * f.tex("coarse"))
    return nuc + f.blur(plate, 0.6) + 0.1 * f.mits


def _r3(f: _Field) -> np.ndarray:
    """AC-3 centromere: 40-80 discrete coarse dots per nucleus; a band of dots across the plate."""
    dots = _nuclear_dots(f, 50, 90, (0.45, 0.85), 0.95)
    m = len(f.mit)
    x, y, _ = f.in_chromatin(f.rng.integers(45, 80, m), 0.9)
    pd = f.splat(x, y, f.rng.uniform(0.6, 0.9, x.size), 0.8) if m else 0.0
    return dots + pd + 0.03 * f.ng + 0.12 * f.plate + 0.04 * f.mits


def _r4(f: _Field) -> np.ndarray:
    """AC-4 fine speckled: dense tiny speckles over the nucleoplasm; mitotic chromatin unstained."""
    fine = f.tex("fine")
    nuc = f.ng * (0.4 + 0.42 * fine) * _nucleoli_factor(f, _u(f, 0.5, 0.9))
    return nuc + _dark_plate(f, _u(f, 0.28, 0.4), 0.5 + 0.4 * f.tex("fine"))


def _r5(f: _Field) -> np.ndarray:
    """AC-5 large/coarse speckled: fewer, larger speckles with dark gaps (sponge-like);
    mitotic chromatin unstained."""
    k = (f.a * f.b / (13.0 * f.s * f.s) * f.rng.uniform(0.85, 1.15, f.n)).astype(int)
    x, y, o = f.in_nuclei(k, 0.92)
    sp = f.splat(x, y, f.rng.uniform(0.4, 0.75, x.size) * f.gain[o], 1.6)
    nuc = (np.minimum(sp, 0.95) + f.ng * (0.12 + 0.08 * f.tex("coarse"))) * _nucleoli_factor(f, _u(f, 0.1, 0.5))
    return nuc + _dark_plate(f, _u(f, 0.25, 0.35), 0.4 + 0.5 * f.tex("coarse"))


def _r6(f: _Field) -> np.ndarray:
    """AC-6 multiple nuclear dots: 6-20 medium dots per nucleus; mitoses dark without dots."""
    dots = _nuclear_dots(f, 6, 16, (0.85, 1.15), 1.4, 0.8)
    return dots + _u(f, 0.04, 0.1) * f.ng + _dark_plate(f, 0.08)


def _r7(f: _Field) -> np.ndarray:
    """AC-7 few nuclear dots: 1-6 dots (Cajal bodies) on a moderately stained nucleoplasm."""
    k = np.minimum(f.rng.geometric(0.38, f.n), 6)
    x, y, o = f.in_nuclei(k, 0.8)
    dots = f.splat(x, y, f.rng.uniform(0.85, 1.1, x.size) * f.gain[o], 1.5)
    nuc = f.ng * _u(f, 0.3, 0.42) * _nucleoli_factor(f, 0.8)
    return dots + f.blur(nuc, 1.0) + _dark_plate(f, 0.12)


def _nucleoli(f: _Field, scale: float, value: np.ndarray | float = 1.0, thickness: int = -1) -> np.ndarray:
    """Nucleoli drawn at ``scale`` x their radius (filled, or outlines with ``thickness`` > 0)."""
    c = f.canvas()
    v = np.broadcast_to(np.asarray(value, np.float64), f.nol_x.shape)
    t = thickness if thickness < 0 else max(1, int(round(thickness * f.s)))
    for x, y, r, e, an, vv in zip(f.nol_x, f.nol_y, f.nol_r, f.nol_e, f.nol_ang, v, strict=True):
        cv2.ellipse(c, ((float(x), float(y)), (float(2 * r * scale), float(2 * r * e * scale)), float(an)),
                    float(vv), t)
    return c


def _nol_points(f: _Field, lo: int, hi: int, spread: float):
    """Points clustered on the nucleoli: returns (x, y, owning cell)."""
    o = np.repeat(np.arange(f.nol_j.size), f.rng.integers(lo, hi + 1, f.nol_j.size))
    t = f.rng.uniform(0, _TAU, o.size)
    r = np.sqrt(f.rng.random(o.size)) * f.nol_r[o] * spread
    return f.nol_x[o] + r * np.cos(t), f.nol_y[o] + r * np.sin(t), f.nol_j[o]


def _r8(f: _Field) -> np.ndarray:
    """AC-8 homogeneous nucleolar: nucleoli evenly and smoothly bright; faint diffuse fine speckles
    in the nucleoplasm (PM/Scl-like); metaphase plate dark."""
    nol = f.blur(_nucleoli(f, 1.5, f.gain[f.nol_j] * f.rng.uniform(0.75, 1.0, f.nol_j.size)), 0.9)
    return nol * f.nuc + f.ng * _u(f, 0.1, 0.18) * (0.6 + 0.4 * f.tex("fine")) + _dark_plate(f, 0.12)


def _r9(f: _Field) -> np.ndarray:
    """AC-9 clumpy nucleolar: nucleoli as irregular clusters of large bright granules, 1-5
    Cajal-like dots in the nucleoplasm, a perichromosomal ring around the mitotic chromatin."""
    x, y, o = _nol_points(f, 4, 8, 2.0)
    clumps = f.splat(x, y, f.rng.uniform(0.4, 0.75, x.size) * f.gain[o], 1.3)
    caj = _nuclear_dots(f, 1, 5, (0.5, 0.8), 1.2)
    ring = f.canvas()
    f.draw_chromatin(ring, 1.0, max(1, round(2 * f.s)))
    ring = f.blur(ring * (1.0 - 0.7 * f.plate), 0.6)
    return np.minimum(clumps, 1.2) * f.nuc + caj + 0.03 * f.ng + 0.9 * ring + 0.06 * f.mits


def _r10(f: _Field) -> np.ndarray:
    """AC-10 punctate nucleolar: many distinct small grains inside (slightly enlarged) nucleoli; up to
    5 bright NOR pairs on the metaphase plate; faint mitotic cytoplasm."""
    x, y, o = _nol_points(f, 8, 14, 1.45)
    grains = f.splat(x, y, f.rng.uniform(0.5, 0.9, x.size) * f.gain[o], 0.7)
    return grains * f.nuc + 0.02 * f.ng + _nor_pairs(f, 1.0) + _dark_plate(f, 0.16)


def _nor_pairs(f: _Field, amp: float) -> np.ndarray:
    m = len(f.mit)
    if m == 0:
        return f.canvas()
    k = f.rng.integers(2, 6, m)
    x, y, j = f.in_chromatin(k * 1, 0.7)
    d = 1.6 * f.s
    ax, ay = f.mpx[j] * d, f.mpy[j] * d
    xs = np.concatenate([x + ax, x - ax])
    ys = np.concatenate([y + ay, y - ay])
    return f.splat(xs, ys, amp, 0.9)


def _rim(f: _Field, thickness: float) -> np.ndarray:
    c = f.canvas()
    t = max(1, int(round(thickness * f.s)))
    for i in np.flatnonzero(~f.is_mit):
        cv2.ellipse(c, ((float(f.nx[i]), float(f.ny[i])), (float(2 * f.a[i]), float(2 * f.b[i])),
                        float(np.degrees(f.theta[i]))), float(f.gain[i]), t)
    return c


def _r11(f: _Field) -> np.ndarray:
    """AC-11 smooth nuclear envelope: homogeneous nucleus with a bright continuous rim (accented
    where cells touch), occasional fold lines; mitotic chromatin unstained."""
    rim = _rim(f, 1.6) * _u(f, 0.6, 0.85)
    folds = f.canvas()
    sel = np.flatnonzero((~f.is_mit) & (f.rng.random(f.n) < 0.25))
    if sel.size:
        t = f.rng.uniform(-0.5, 0.5, sel.size)
        h = np.sqrt(1 - t * t) * f.a[sel] * 0.8
        ang = f.theta[sel] + f.rng.normal(0, 0.4, sel.size)
        x0, y0 = _rot(-h, t * f.b[sel], ang)
        x1, y1 = _rot(h, t * f.b[sel], ang)
        f.lines(folds, np.stack([np.stack([f.nx[sel] + x0, f.ny[sel] + y0], -1),
                                 np.stack([f.nx[sel] + x1, f.ny[sel] + y1], -1)], 1), 0.6, 1)
    nuc = f.ng * _u(f, 0.35, 0.5)
    return f.blur(nuc + rim + folds * f.nuc, 0.7) + _dark_plate(f, 0.12)


def _r12(f: _Field) -> np.ndarray:
    """AC-12 punctate nuclear envelope: dotted rim (pores) plus punctate nuclear surface."""
    per = np.maximum((2 * math.pi * np.sqrt((f.a ** 2 + f.b ** 2) / 2) / (4.2 * f.s)).astype(int), 8)
    x, y, o = f.on_rim(per, 0.97, 0.02)
    rim = f.splat(x, y, f.rng.uniform(0.7, 1.0, x.size) * f.gain[o], 1.1)
    k = (f.a * f.b / (12.0 * f.s * f.s)).astype(int)
    x, y, o = f.in_nuclei(k, 0.9)
    surf = f.splat(x, y, f.rng.uniform(0.12, 0.3, x.size) * f.gain[o], 0.8)
    return rim + surf + f.ng * _u(f, 0.15, 0.25) + _dark_plate(f, 0.12)


def _r13(f: _Field) -> np.ndarray:
    """AC-13 PCNA-like: G1 nuclei negative, S nuclei intense pleomorphic speckles (nucleoli +/-),
    late S/G2 a few large scattered speckles; mitoses unstained."""
    ph = f.phase
    s_phase = (ph >= 0.45) & (ph < 0.8)
    late = ph >= 0.8
    lvl = np.where(s_phase, 1.0, 0.04).astype(np.float32)
    tex = 0.25 + 0.3 * f.tex("fine") + 0.55 * f.tex("coarse") * (0.7 + 0.3 * f.tex("mid"))
    nol_st = _u(f, 0.3, 1.3)
    nuc = f.lut(lvl * f.gain, f.nuc_lab) * tex * (1 + (nol_st - 1) * f.nol)
    k = np.where(late, f.rng.integers(3, 10, f.n), 0)
    x, y, o = f.in_nuclei(k, 0.8)
    big = f.splat(x, y, f.rng.uniform(0.5, 0.9, x.size), 1.7)
    return nuc + big + f.lut(np.where(late, 0.1, 0.0) * f.gain, f.nuc_lab) + _dark_plate(f, 0.08)


def _r14(f: _Field) -> np.ndarray:
    """AC-14 CENP-F-like: fine speckled nuclei whose intensity rises through the cycle (G1 negative,
    G2 bright); mitotic cells diffusely positive with many small faint kinetochore dots aligned in
    the plate and a midbody dot in ana/telophase."""
    lvl = 0.04 + 0.95 * np.clip((f.phase - 0.4) / 0.6, 0, 1) ** 1.3
    nuc = f.lut(lvl * f.gain, f.nuc_lab) * (0.35 + 0.55 * f.tex("fine")) * _nucleoli_factor(f, 0.5)
    m = len(f.mit)
    x, y, _ = f.in_chromatin(f.rng.integers(70, 110, m), 0.9)
    kin = f.splat(x, y, 0.45, 0.8) if m else 0.0
    mid = f.canvas()
    late = np.flatnonzero(f.stage > 0)
    if late.size:
        mid = f.splat(f.mx[late], f.my[late], 0.9, 1.6)
    mit = f.mits * 0.32 * (1 - 0.6 * f.plate)
    return nuc + kin + mid + mit


def _r15(f: _Field) -> np.ndarray:
    """AC-15 cytoplasmic fibrillar linear: straight actin cables along the cell's long axis, with
    small granular deposits; nucleus negative."""
    nper = f.rng.integers(8, 15, f.n)
    seg = _fibres_along(f, nper, jitter=0.06, cover=(0.85, 1.0))
    c = f.canvas()
    k = len(seg)
    for q, (v, t) in enumerate(((0.6, 1), (0.85, 1), (1.0, 2))):
        f.lines(c, seg[q * k // 3:(q + 1) * k // 3], v, t)
    cell = f.cyt + 0.4 * f.nuc
    sig = c * cell * f.lut(f.gain, f.cyt_lab) * (0.85 + 0.15 * f.tex("fine"))
    return f.blur(sig, 0.6) + 0.1 * f.cg + 0.05 * f.ng + 0.15 * f.mits


def _wavy(f: _Field, sx, sy, ex, ey, amp: tuple[float, float], P: int = 8) -> np.ndarray:
    """Wavy polylines from (sx, sy) to (ex, ey): (N, P, 2)."""
    u = np.linspace(0, 1, P)[None, :]
    L = np.hypot(ex - sx, ey - sy) + 1e-6
    nx_, ny_ = -(ey - sy) / L, (ex - sx) / L
    n = len(sx)
    a = f.rng.uniform(*amp, n)[:, None] * f.s
    ph = f.rng.uniform(0, _TAU, n)[:, None]
    fr = f.rng.uniform(0.8, 2.2, n)[:, None]
    w = a * np.sin(_TAU * fr * u + ph) * np.sin(math.pi * u)
    px = sx[:, None] + (ex - sx)[:, None] * u + nx_[:, None] * w
    py = sy[:, None] + (ey - sy)[:, None] * u + ny_[:, None] * w
    return np.stack([px, py], -1)


def _r16(f: _Field) -> np.ndarray:
    """AC-16 cytoplasmic fibrillar filamentous: wavy intermediate-filament network radiating from a
    bright perinuclear cage to the periphery; nucleus negative."""
    nper = np.where(f.is_mit, 0, f.rng.integers(14, 24, f.n))
    o = np.repeat(np.arange(f.n), nper)
    t0 = f.rng.uniform(0, _TAU, o.size)
    sx, sy = _rot(1.05 * f.a[o] * np.cos(t0), 1.05 * f.b[o] * np.sin(t0), f.theta[o])
    sx, sy = f.nx[o] + sx, f.ny[o] + sy
    # end point: on the cell outline, roughly in the radial direction
    dx, dy = sx - f.cx[o], sy - f.cy[o]
    lx, ly = _rot(dx, dy, -f.theta[o])
    tt = np.arctan2(ly / f.B[o], lx / f.A[o]) + f.rng.normal(0, 0.25, o.size)
    ex, ey = _rot(0.95 * f.A[o] * np.cos(tt), 0.95 * f.B[o] * np.sin(tt), f.theta[o])
    ex, ey = f.cx[o] + ex, f.cy[o] + ey
    # plus wavy chords crossing the cytoplasm in random directions
    kc = np.where(f.is_mit, 0, f.rng.integers(4, 9, f.n))
    oc = np.repeat(np.arange(f.n), kc)
    tc = f.rng.uniform(-0.85, 0.85, oc.size)
    h = np.sqrt(1 - tc * tc) * 0.95
    x0, y0 = _rot(-h * f.A[oc], tc * f.B[oc], f.theta[oc])
    x1, y1 = _rot(h * f.A[oc], tc * f.B[oc], f.theta[oc])
    rot = f.rng.normal(0, 0.5, oc.size)
    x0, y0 = _rot(x0, y0, rot)
    x1, y1 = _rot(x1, y1, rot)
    sx = np.concatenate([sx, f.cx[oc] + x0])
    sy = np.concatenate([sy, f.cy[oc] + y0])
    ex = np.concatenate([ex, f.cx[oc] + x1])
    ey = np.concatenate([ey, f.cy[oc] + y1])
    c = f.canvas()
    w = _wavy(f, sx, sy, ex, ey, (1.0, 3.0))
    f.lines(c, w[::2], 1.0, 1)
    f.lines(c, w[1::2], 0.8, 2)
    cage = f.canvas()
    t = max(1, round(1.5 * f.s))
    for i in np.flatnonzero(~f.is_mit):
        cv2.ellipse(cage, ((float(f.nx[i]), float(f.ny[i])), (float(2.25 * f.a[i]), float(2.3 * f.b[i])),
                           float(np.degrees(f.theta[i]))), 1.0, t)
    sig = (0.9 * c + _u(f, 0.45, 0.7) * cage) * f.cyt * f.lut(f.gain, f.cyt_lab)
    return f.blur(sig, 0.6) + 0.12 * f.cg + 0.03 * f.ng + 0.2 * f.mits


def _r17(f: _Field) -> np.ndarray:
    """AC-17 cytoplasmic fibrillar segmental: stress fibres decorated with short periodic dense
    bodies (beaded cables); nucleus negative."""
    nper = f.rng.integers(5, 10, f.n)
    seg = _fibres_along(f, nper, cover=(0.6, 0.9))
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
    cell = f.cyt + 0.3 * f.nuc
    sig = (0.35 * f.blur(base, 0.5) + beads) * cell * f.lut(f.gain, f.cyt_lab)
    return sig + 0.12 * f.cg + 0.04 * f.ng + 0.15 * f.mits


def _r18(f: _Field) -> np.ndarray:
    """AC-18 cytoplasmic discrete dots (GW bodies): up to ~30 bright dots per interphase cell
    (more in late S/G2), none in mitotic cells; nucleus negative."""
    k = (2 + 22 * f.phase * f.rng.uniform(0.5, 1.2, f.n)).astype(int)
    x, y, o = f.in_cytoplasm(k)
    dots = f.splat(x, y, f.rng.uniform(0.6, 1.0, x.size) * f.gain[o], 1.15)
    return dots * (f.cyt + 0.3 * f.nuc) + 0.06 * f.cg + 0.02 * f.ng + 0.05 * f.mits


def _r19(f: _Field) -> np.ndarray:
    """AC-19 cytoplasmic dense fine speckled (ribosomal P-like): cloudy, near-homogeneous cytoplasm
    with darker holes, denser towards the nucleus; faint nucleoli; mitotic cells diffuse."""
    holes = np.clip(f.tex("blob"), 0, 1.5)
    c = f.cg * (0.5 + 0.22 * f.tex("fine") - 0.25 * holes) * (0.7 + 0.55 * f.perinuc)
    nol = 0.25 * f.blur(f.nol, 0.6) * f.ng
    return f.blur(c, 0.6) + nol + 0.04 * f.ng + f.mits * 0.45 * (1 - 0.6 * f.plate)


def _r20(f: _Field) -> np.ndarray:
    """AC-20 cytoplasmic fine speckled (Jo-1-like): scattered small distinct speckles over a weak
    homogeneous cytoplasm; nucleus negative."""
    k = (f.A * f.B / (14.0 * f.s * f.s)).astype(int)
    x, y, o = f.in_cytoplasm(k, 0.2, 1.0)
    sp = f.splat(x, y, f.rng.uniform(0.3, 0.6, x.size) * f.gain[o], 0.8)
    base = f.cg * _u(f, 0.24, 0.34) * (0.85 + 0.15 * f.tex("mid"))
    mit = f.mits * 0.22 * (1 - 0.6 * f.plate) * (0.6 + 0.4 * f.tex("fine"))
    return sp * (f.cyt + 0.4 * f.mits) + base + 0.03 * f.ng + mit


def _r21(f: _Field) -> np.ndarray:
    """AC-21 reticular/AMA: coarse granular-filamentous (mitochondrial) threads throughout the
    cytoplasm, densest around the nucleus; nucleus negative."""
    thr = f.tex("ridge_thick") * (0.45 + 0.55 * np.minimum(f.tex("coarse"), 2.0))
    c = f.cg * (0.08 + 1.2 * thr) * (0.5 + 0.8 * f.perinuc)
    m = f.mits * (0.1 + 0.45 * f.tex("ridge")) * (1 - 0.8 * f.plate)
    return f.blur(c, 0.5) + m + 0.03 * f.ng


def _r22(f: _Field) -> np.ndarray:
    """AC-22 polar/Golgi-like: a broken granular ribbon hugging one side of the nucleus; mitotic
    cells diffuse, accented around the chromosomes."""
    # Golgi sits on the side with more cytoplasm (towards the cell centre), else random
    side = np.arctan2(f.cy - f.ny, f.cx - f.nx)
    lx, ly = _rot(np.cos(side), np.sin(side), -f.theta)
    side_loc = np.where(np.hypot(f.cx - f.nx, f.cy - f.ny) > 1.5 * f.s, np.arctan2(ly, lx),
                        f.rng.uniform(0, _TAU, f.n))
    side_loc = side_loc + f.rng.normal(0, 0.5, f.n)
    k = f.rng.integers(12, 26, f.n)
    k[f.is_mit] = 0
    o = np.repeat(np.arange(f.n), k)
    span = np.repeat(f.rng.uniform(0.9, 2.0, f.n), k)
    t = side_loc[o] + (f.rng.random(o.size) - 0.5) * span
    r = f.rng.uniform(1.08, 1.4, o.size)
    x, y = _rot(r * f.a[o] * np.cos(t), r * f.b[o] * np.sin(t), f.theta[o])
    x, y = f.nx[o] + x, f.ny[o] + y
    dots = f.splat(x, y, f.rng.uniform(0.5, 1.0, o.size) * f.gain[o], 1.15)
    mit = f.mits * 0.25 * (1 + 0.6 * f.blur(f.plate, 3.0))
    return dots + 0.05 * f.cg + 0.03 * f.ng + mit


def _r23(f: _Field) -> np.ndarray:
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
        pts = np.stack([np.stack([x[rods] - dx, y[rods] - dy], -1), np.stack([mx_, my_], -1),
                        np.stack([x[rods] + dx, y[rods] + dy], -1)], 1)
        f.lines(c, pts, 1.0, 2)
    t = max(1, round(1.6 * f.s))
    for q in np.flatnonzero(ring):
        cv2.circle(c, (int(round(x[q])), int(round(y[q]))), max(2, int(round(f.rng.uniform(3, 5.5) * f.s))),
                   1.0, t)
    return f.blur(c, 0.6) * 1.1 + 0.08 * f.cg + 0.06 * f.ng + 0.06 * f.mits


def _r24(f: _Field) -> np.ndarray:
    """AC-24 centrosome: 1-2 distinct dots next to the nucleus of interphase cells, one at each
    spindle pole of mitotic cells."""
    k = 1 + (f.rng.random(f.n) < 0.35)
    k[f.is_mit] = 0
    o = np.repeat(np.arange(f.n), k)
    first = np.concatenate([[True], o[1:] != o[:-1]]) if o.size else np.zeros(0, bool)
    t = np.repeat(f.rng.uniform(0, _TAU, f.n), k)
    r = f.rng.uniform(1.08, 1.35, f.n)[o] if o.size else np.zeros(0)
    x, y = _rot(r * f.a[o] * np.cos(t), r * f.b[o] * np.sin(t), f.theta[o])
    x, y = f.nx[o] + x, f.ny[o] + y
    x = x + np.where(first, 0, f.rng.uniform(-2.5, 2.5, o.size) * f.s)
    y = y + np.where(first, 0, f.rng.uniform(-2.5, 2.5, o.size) * f.s)
    dots = f.splat(x, y, f.rng.uniform(0.75, 1.0, o.size), 1.1)
    return dots + _pole_dots(f, 1.0, 1.6) + _u(f, 0.04, 0.1) * f.cg + 0.03 * f.ng + 0.08 * f.mits


def _r25(f: _Field) -> np.ndarray:
    """AC-25 spindle fibres: fibres between the poles and the plate with cone-shaped pole
    decoration; chromatin unstained; interphase nuclei negative; telophase midbody."""
    c = f.canvas()
    f.lines(c, _fibrils_to_plate(f, 11, 0.95), 0.75, 1)
    c = f.blur(c, 0.6) * (1 - 0.85 * f.plate)
    cones = _pole_dots(f, 1.0, 2.0)
    mid = f.canvas()
    late = np.flatnonzero(f.stage == 2)
    if late.size:
        seg = np.stack([np.stack([f.mx[late] - f.mpx[late] * 5 * f.s, f.my[late] - f.mpy[late] * 5 * f.s], -1),
                        np.stack([f.mx[late] + f.mpx[late] * 5 * f.s, f.my[late] + f.mpy[late] * 5 * f.s], -1)], 1)
        f.lines(mid, seg, 0.8, 2)
    return c + cones + f.blur(mid, 0.6) + 0.06 * f.cg + 0.02 * f.ng + 0.1 * f.mits * (1 - f.plate)


def _r26(f: _Field) -> np.ndarray:
    """AC-26 NuMA-like: fine speckled interphase nuclei (nucleoli spared); in mitosis the spindle
    poles and polar fibres are stained while chromosomes stay dark; telophase: re-forming nuclei."""
    nuc = f.ng * _u(f, 0.35, 0.45) * (0.9 + 0.2 * f.tex("fine")) * (1.0 - 0.9 * f.blur(_nucleoli(f, 1.5), 0.6))
    c = f.canvas()
    f.lines(c, _fibrils_to_plate(f, 11, 0.7), 1.0, 2)
    c = f.blur(c, 0.8)
    poles = _pole_dots(f, 1.0, 3.4)
    telo = np.isin(f.ch_j, np.flatnonzero(f.stage == 2))
    tl = f.canvas()
    for q in np.flatnonzero(telo):
        cv2.ellipse(tl, ((float(f.ch_x[q]), float(f.ch_y[q])), (float(2 * f.ch_a[q]), float(2 * f.ch_b[q])),
                         float(np.degrees(f.ch_ang[q]))), 0.45, -1)
    dark = 1 - 0.9 * f.plate * (1 - tl)
    return nuc + (c + poles + 0.12 * f.mits) * dark + f.blur(tl, 0.7)


def _r27(f: _Field) -> np.ndarray:
    """AC-27 intercellular bridge: early interphase negative, late interphase fine speckles;
    metaphase centromere-like speckles; anaphase midzone band and telophase bridge/midbody bright."""
    lvl = np.where(f.phase > 0.5, _u(f, 0.25, 0.4), 0.03)
    nuc = f.lut(lvl * f.gain, f.nuc_lab) * (0.5 + 0.6 * f.tex("fine"))
    m = len(f.mit)
    meta = f.stage == 0
    x, y, j = f.in_chromatin(np.where(meta, f.rng.integers(25, 45, m), 0), 0.9)
    sp = f.splat(x, y, 0.6, 0.9) if m else f.canvas()
    c = f.canvas()
    ana = np.flatnonzero(f.stage == 1)
    if ana.size:  # midzone band between the separating chromatids (parallel to them)
        ux, uy = np.cos(f.mphi[ana]), np.sin(f.mphi[ana])
        h = f.mLh[ana] * 0.7
        f.lines(c, np.stack([np.stack([f.mx[ana] - ux * h, f.my[ana] - uy * h], -1),
                             np.stack([f.mx[ana] + ux * h, f.my[ana] + uy * h], -1)], 1), 1.0, 2)
    tel = np.flatnonzero(f.stage == 2)
    if tel.size:  # bridge across the neck plus a midbody dot
        h = f.mR[tel] * 0.4
        f.lines(c, np.stack([np.stack([f.mx[tel] - f.mpx[tel] * h, f.my[tel] - f.mpy[tel] * h], -1),
                             np.stack([f.mx[tel] + f.mpx[tel] * h, f.my[tel] + f.mpy[tel] * h], -1)], 1),
                1.0, 2)
        c = np.maximum(c, f.splat(f.mx[tel], f.my[tel], 1.0, 1.5))
    return nuc + sp + f.blur(c, 0.6) * 1.1 + 0.08 * f.mits + 0.04 * f.cg


def _r28(f: _Field) -> np.ndarray:
    """AC-28 mitotic chromosomal coat: bright perichromosomal coat on pro/metaphase chromatin
    (rim-accented); interphase nuclei unstained."""
    rim = f.canvas()
    f.draw_chromatin(rim, 1.0, max(1, round(2 * f.s)))
    coat = f.blur(0.8 * f.plate + 0.5 * rim, 0.8)
    return coat * _u(f, 1.0, 1.3) + 0.05 * f.ng + 0.05 * f.cg + 0.08 * f.mits


def _r29(f: _Field) -> np.ndarray:
    """AC-29 topo I-like: fine speckled/homogeneous nucleus blurred past the envelope, nucleoli
    rim-accented, cobweb-like cytoplasm; stained metaphase chromatin with NOR dots, mitotic cell
    near interphase intensity."""
    nuc = f.ng * (0.5 + 0.22 * f.tex("fine")) * _nucleoli_factor(f, 0.35)
    nol_rim = f.canvas()
    t = max(1, round(1.0 * f.s))
    for x, y, r in zip(f.nol_x, f.nol_y, f.nol_r, strict=True):
        cv2.circle(nol_rim, (int(round(x)), int(round(y))), max(1, int(round(r))), 0.45, t)
    nuc = f.blur(nuc + nol_rim * f.nuc, 1.3)
    web = f.cg * (0.1 + 0.25 * f.tex("ridge") * f.tex("fine"))
    mit = f.mits * 0.45 + _bright_plate(f, 0.55) + _nor_pairs(f, 0.7)
    return nuc + f.blur(web, 0.5) + f.blur(mit, 0.6)


def _r30(f: _Field) -> np.ndarray:
    """AC-30 (definition not confirmed by a source; plausible stand-in): quasi-homogeneous, finely
    granular nuclei together with smooth diffuse cytoplasmic staining at roughly half the nuclear
    intensity, and a stained metaphase plate (resembles the ICAP example images)."""
    nuc = f.ng * (0.62 + 0.15 * f.tex("fine")) * _nucleoli_factor(f, 0.8)
    cyt = f.cg * _u(f, 0.4, 0.55) * (0.9 + 0.1 * f.tex("mid"))
    return f.blur(nuc + cyt + 0.35 * f.mits + _bright_plate(f, 0.9), 0.8)


def _r31(f: _Field) -> np.ndarray:
    """AC-31 (definition not confirmed; rendered as "myriad discrete fine speckled"): a great many
    small, evenly sized, discrete speckles over a faint nucleoplasm, with enlarged dark nucleoli
    outlined by a thin bright rim; mitotic chromatin unstained, mitotic cell finely speckled."""
    k = (f.a * f.b / (3.2 * f.s * f.s) * f.rng.uniform(0.85, 1.1, f.n)).astype(int)
    x, y, o = f.in_nuclei(k, 0.95)
    dots = f.splat(x, y, f.rng.uniform(0.4, 0.7, x.size) * f.gain[o], 0.75)
    holes = _nucleoli(f, 1.45)
    rims = f.blur(_nucleoli(f, 1.6, f.gain[f.nol_j] * 0.55, 1), 0.5)
    nuc = (np.minimum(dots, 0.9) + 0.12 * f.ng) * (1.0 - 0.9 * holes) * f.nuc + rims * f.nuc
    return nuc + _dark_plate(f, 0.3, 0.3 + 0.7 * f.tex("fine"))


_RENDERERS: dict[str, Callable[[_Field], np.ndarray]] = {
    f"AC-{i}": fn for i, fn in enumerate([
        _r0, _r1, _r2, _r3, _r4, _r5, _r6, _r7, _r8, _r9, _r10, _r11, _r12, _r13, _r14, _r15,
        _r16, _r17, _r18, _r19, _r20, _r21, _r22, _r23, _r24, _r25, _r26, _r27, _r28, _r29, _r30, _r31,
    ])
}

# (min, max) mitoses per field for patterns whose mitotic staining is the point
_MITOSES: dict[str, tuple[int, int]] = {
    "AC-14": (1, 3), "AC-24": (2, 4), "AC-25": (2, 5), "AC-26": (3, 5), "AC-27": (2, 5), "AC-28": (2, 5),
    "AC-2": (1, 3), "AC-3": (1, 3), "AC-10": (1, 3), "AC-29": (1, 3),
}


# ----------------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------------


def _canon(code: str) -> str:
    m = re.fullmatch(r"\s*AC[-_ ]?0*(\d+)\s*", str(code), flags=re.IGNORECASE)
    if not m or f"AC-{int(m.group(1))}" not in _RENDERERS:
        raise ValueError(f"unknown ICAP code {code!r}; expected one of AC-0 … AC-31")
    return f"AC-{int(m.group(1))}"


def _field_plan(code: str | Sequence[str], size: int, who: str) -> tuple[list[str], tuple[int, int] | None, int]:
    """Checked inputs of a field renderer: the positive codes, the mitosis counts they need, the size."""
    codes = [code] if isinstance(code, str) else list(code)
    if not 1 <= len(codes) <= 3:
        raise ValueError(f"{who} takes one code or a sequence of 1-3 codes")
    codes = list(dict.fromkeys(_canon(c) for c in codes))
    size = int(size)
    if size < 32:
        raise ValueError("size must be >= 32")
    pos = [c for c in codes if c != "AC-0"]
    mits = [_MITOSES[c] for c in pos if c in _MITOSES]
    n_mit = (max(m[0] for m in mits), max(m[1] for m in mits)) if mits else None
    return pos, n_mit, size


def _pattern_signal(f: _Field, pos: Sequence[str]) -> np.ndarray:
    """The summed signal of the patterns ``pos`` on field ``f`` (mixed: none may hide the others)."""
    sig = f.canvas()
    for c in pos:
        s = _RENDERERS[c](f)
        if len(pos) > 1:  # keep one saturating pattern from hiding the others
            hi = float(np.percentile(s[::4, ::4], 99.0))
            s = s * (_u(f, 0.75, 1.0) / max(hi, 1.0))
        sig += s
    return sig


def render_field(code: str | Sequence[str], rng: np.random.Generator, size: int = 256,
                 dapi: bool = False, nucleus_diameter_px: float | None = None,
                 return_masks: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one ``size x size x 3`` uint8 RGB field showing the ICAP pattern ``code``.

    ``code`` may also be a sequence of 1-3 codes: a mixed field in which every listed pattern is
    visible at once (the signals are painted into the same cells and added). ``AC-0`` in a mixture
    with positive codes contributes nothing. ``dapi=True`` adds a blue DAPI counterstain.

    ``nucleus_diameter_px``: render at this mean nucleus diameter (equivalent-circle, pixels) instead
    of the default ~26 px x size / 256 with a random zoom — a field seen at another magnification.
    ``return_masks=True`` returns ``(image, masks)`` with ``masks["cells"]`` and ``masks["nuclei"]``
    (int32 label maps, one label per cell, the same label for a cell and its nucleus; mitotic cells
    have no nucleus label) and ``masks["mitotic"]`` (bool per label, index 0 unused).
    """
    pos, n_mit, size = _field_plan(code, size, "render_field")
    scale = None if nucleus_diameter_px is None else float(nucleus_diameter_px) / _NUC_DIAMETER_REF
    if scale is not None and not 1.0 <= float(nucleus_diameter_px) <= size:
        raise ValueError(f"nucleus_diameter_px={nucleus_diameter_px} must lie between 1 and the field size {size}")
    f = _Field(rng, size, n_mit, need_telophase="AC-27" in pos or "AC-25" in pos, scale=scale)
    img = _compose(f, _pattern_signal(f, pos), negative=not pos, dapi=dapi)
    if not return_masks:
        return img
    nuclei = f.nuc_lab.astype(np.int32)
    masks = {"cells": np.where(nuclei > 0, nuclei, f.cyt_lab).astype(np.int32), "nuclei": nuclei,  # nucleus in own cell
             "mitotic": np.concatenate([[False], f.is_mit])}
    return img, masks


#: Mean equivalent-circle nucleus diameter of the reference geometry (scale 1, zoom 1): 2 x 15 x E[sqrt(b/a)].
_NUC_DIAMETER_REF = 2.0 * 15.0 * 0.857


def _compose(f: _Field, sig: np.ndarray, negative: bool, dapi: bool) -> np.ndarray:
    rng = f.rng
    if negative:
        glow_c, glow_n, gain = rng.uniform(0.04, 0.09), rng.uniform(0.0, 0.05), 0.0
    else:
        glow_c, glow_n, gain = rng.uniform(0.015, 0.05), rng.uniform(0.0, 0.03), rng.uniform(0.55, 0.9)
    bg = rng.uniform(0.012, 0.045) * (1.0 + 0.4 * f.tex("low"))
    g = bg + glow_c * f.allc + glow_n * f.nuc
    if gain:
        g = g + gain * sig
    sig_opt = rng.uniform(0.45, 0.9)
    g = f.blur(g.astype(np.float32), sig_opt)
    # shot + read noise
    g = g + f.tex("noise") * (rng.uniform(0.006, 0.016) + rng.uniform(0.01, 0.03) * np.sqrt(np.maximum(g, 0)))
    return _to_rgb(f, g, sig_opt, dapi)


def _to_rgb(f, g: np.ndarray, sig_opt: float, dapi: bool) -> np.ndarray:
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
        d = f.nuc * f.lut(np.exp(rng.normal(0, 0.12, f.n)), f.nuc_lab) * (1 - 0.45 * f.nol)
        d = d * (0.85 + 0.15 * f.tex("mid")) + 1.6 * f.plate
        b = b + rng.uniform(0.35, 0.65) * f.blur(d, sig_opt + 0.4)
    return cv2.merge([_to_u8(r), _to_u8(g), _to_u8(b)])


def _to_u8(x: np.ndarray) -> np.ndarray:
    """float (0..1) -> uint8 with rounding and saturation."""
    x = np.maximum(np.asarray(x, np.float32), 0.0)
    return cv2.convertScaleAbs(x, alpha=255.0)


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


def _image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(index)]))


def _encode(img: np.ndarray, fmt: str) -> bytes:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"could not encode image as {fmt}")
    return buf.tobytes()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    _atomic_write(path, buf.getvalue().encode("utf-8"))


@contextlib.contextmanager
def _progress(total: int, desc: str, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yields an ``advance()`` callable; uses rich, else tqdm, else nothing."""
    if not enabled or total <= 0:
        yield lambda: None
        return
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        try:
            from tqdm import tqdm
        except ImportError:
            yield lambda: None
            return
        bar = tqdm(total=total, desc=desc, unit="img")
        try:
            yield lambda: bar.update(1)
        finally:
            bar.close()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=False) as prog:
        task = prog.add_task(desc, total=total)
        yield lambda: prog.advance(task)


def _check_fmt(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in ("png", "jpg"):
        raise ValueError("fmt must be 'png' or 'jpg'")
    return fmt


def generate_dataset(root: str | Path, codes: Sequence[str] | None = None, n_per_class: int = 60,
                     size: int = 256, seed: int = 0, dapi: bool = False, fmt: str = "png",
                     progress: bool = True, difficulty: str = "easy") -> Path:
    """Write ``<root>/<code>/<code>_<i:05d>.png`` for each code plus ``<root>/manifest.csv``
    (``path,label,seed,size,dapi``; paths relative to root, posix).

    Deterministic: image ``i`` of code ``c`` uses ``SeedSequence([seed, CODES.index(c), i])``, so the
    same arguments give byte-identical files regardless of which codes are selected. Existing files
    are kept (resume); files are written atomically. ``difficulty='hard'`` renders with
    :func:`~.synthetic_hard.render_field_hard` (magnification, dim fields, blur, noise). Returns ``root``.
    """
    from .synthetic_hard import DIFFICULTIES, render_field_hard

    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    render = render_field_hard if difficulty == "hard" else render_field
    root = Path(root)
    fmt = _check_fmt(fmt)
    sel = CODES if codes is None else tuple(dict.fromkeys(_canon(c) for c in codes))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    todo = []
    for c in sel:
        ci = CODES.index(c)
        for i in range(int(n_per_class)):
            rel = f"{c}/{c}_{i:05d}.{fmt}"
            rows.append((rel, c, int(seed), int(size), int(bool(dapi))))
            if not (root / rel).is_file():
                todo.append((rel, c, ci, i))
    with _progress(len(todo), f"synthetic -> {root}", progress) as advance:
        for rel, c, ci, i in todo:
            img = render(c, _image_rng(seed, ci, i), size=size, dapi=dapi)
            _atomic_write(root / rel, _encode(img, fmt))
            advance()
    _write_csv(root / "manifest.csv", ("path", "label", "seed", "size", "dapi"), rows)
    return root


_SEPARATORS = (" + ", ", ", "_")


def generate_hospital_dataset(root: str | Path, n_images: int = 300, codes: Sequence[str] | None = None,
                              max_patterns: int = 3, n_patients: int = 60, size: int = 256, seed: int = 0,
                              dapi: bool = False, progress: bool = True) -> Path:
    """Multi-label "hospital export" layout:
    ``<root>/patient<k:03d>/<label folder>/<patient>_<j:05d>.png`` where the label folder names the
    1-3 codes shown, joined by ``' + '`` (sometimes ``', '`` or ``'_'``), e.g. ``AC-1 + AC-4``.
    Each patient has 1-3 label combinations. ``manifest.csv`` has ``path,labels,group`` with the
    labels joined by ``';'`` and the patient as group. Deterministic like :func:`generate_dataset`.
    """
    root = Path(root)
    pool = [c for c in (CODES if codes is None else [_canon(c) for c in codes])]
    pool = list(dict.fromkeys(pool))
    positives = [c for c in pool if c != "AC-0"]
    if not pool:
        raise ValueError("no codes to draw from")
    max_patterns = max(1, min(int(max_patterns), 3))
    n_patients = max(1, int(n_patients))
    root.mkdir(parents=True, exist_ok=True)

    patients = []
    for k in range(n_patients):
        r = _image_rng(seed, 1_000_003, k)
        sep = _SEPARATORS[int(r.choice(3, p=[0.6, 0.25, 0.15]))]
        combos = []
        for _ in range(int(r.integers(1, 4))):
            if "AC-0" in pool and (not positives or r.random() < 0.08):
                combo = ["AC-0"]
            else:
                kmax = min(max_patterns, len(positives))
                nk = int(r.choice(np.arange(1, kmax + 1), p=_combo_p(kmax)))
                combo = [str(x) for x in r.choice(positives, size=nk, replace=False)]
            combo = sorted(combo, key=CODES.index)
            if combo not in combos:
                combos.append(combo)
        patients.append((f"patient{k:03d}", sep, combos))

    rows = []
    todo = []
    for j in range(int(n_images)):
        pid, sep, combos = patients[j % n_patients]
        r = _image_rng(seed, 2_000_003, j)
        combo = combos[int(r.integers(len(combos)))]
        rel = f"{pid}/{sep.join(combo)}/{pid}_{j:05d}.png"
        rows.append((rel, ";".join(combo), pid))
        if not (root / rel).is_file():
            todo.append((rel, combo, j))
    with _progress(len(todo), f"hospital -> {root}", progress) as advance:
        for rel, combo, j in todo:
            img = render_field(combo, _image_rng(seed, 3_000_017, j), size=size, dapi=dapi)
            _atomic_write(root / rel, _encode(img, "png"))
            advance()
    _write_csv(root / "manifest.csv", ("path", "labels", "group"), rows)
    return root


def _combo_p(kmax: int) -> np.ndarray:
    p = np.array([0.5, 0.32, 0.18][:kmax])
    return p / p.sum()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """``ana-synth``: write a synthetic single-label dataset (or, with --hospital, a multi-label one)."""
    p = argparse.ArgumentParser(prog="ana-synth", description="Render synthetic HEp-2 IIF fields (ICAP AC-0..AC-31).")
    p.add_argument("--output", "-o", default="data/synthetic", help="output folder (default: data/synthetic)")
    p.add_argument("--n-per-class", type=int, default=60, help="images per code (default: 60)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dapi", action="store_true", help="add a blue DAPI nuclear counterstain")
    p.add_argument("--codes", default=None, help="comma-separated codes, e.g. AC-1,AC-4 (default: all 32)")
    p.add_argument("--format", dest="fmt", default="png", choices=["png", "jpg"])
    p.add_argument("--difficulty", default="easy", choices=["easy", "hard"],
                   help="hard: varied magnification, dim fields, blur and noise like real images (default: easy)")
    p.add_argument("--hospital", action="store_true", help="write the multi-label hospital layout instead")
    p.add_argument("--cells", action="store_true",
                   help="single-cell crops in the contest layout instead (options: ana-synth --cells --help)")
    p.add_argument("--n-images", type=int, default=300, help="images in the hospital layout (default: 300)")
    p.add_argument("--n-patients", type=int, default=60)
    p.add_argument("--max-patterns", type=int, default=3)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    codes = [c.strip() for c in a.codes.split(",") if c.strip()] if a.codes else None
    try:
        if a.hospital:
            root = generate_hospital_dataset(a.output, n_images=a.n_images, codes=codes,
                                             max_patterns=a.max_patterns, n_patients=a.n_patients,
                                             size=a.size, seed=a.seed, dapi=a.dapi, progress=not a.no_progress)
            n = a.n_images
        else:
            root = generate_dataset(a.output, codes=codes, n_per_class=a.n_per_class, size=a.size, seed=a.seed,
                                    dapi=a.dapi, fmt=a.fmt, progress=not a.no_progress, difficulty=a.difficulty)
            n = a.n_per_class * (len(codes) if codes else len(CODES))
    except ValueError as e:
        p.error(str(e))
        return
    print(f"wrote {n} images to {root} (manifest: {root / 'manifest.csv'})")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
