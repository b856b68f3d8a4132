"""Cell geometry of one simulated field.

One class, :class:`Field`, kept whole (~430 lines): its layout, label maps, cached masks and drawing
helpers all work on the same per-cell arrays and cache. It lays out flat HEp-2 cells (polygonal, mostly
faint cytoplasm; an elliptical nucleus taking 30-50 % of the cell, with 1-4 nucleoli) of varied size,
elongation and orientation, and a few mitotic cells (metaphase plates, some ana- and telophases); it
draws their label maps once with OpenCV and offers the cached masks and the point/line helpers the
pattern renderers paint with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from .textures import REF_SIZE, texture_bank

__all__ = ["TAU", "Field", "rotate"]

TAU = 2.0 * math.pi


def rotate(x: np.ndarray, y: np.ndarray, ang: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` rotated by ``ang`` radians about the origin."""
    c, s = np.cos(ang), np.sin(ang)
    return x * c - y * s, x * s + y * c


class Field:
    """Cells, label maps and helpers shared by the pattern renderers of one field.

    Per cell ``i`` (``n`` cells): cell ellipse centre ``cx, cy``, half-axes ``A, B`` and angle ``theta``;
    nucleus centre ``nx, ny`` and half-axes ``a, b`` (same angle); brightness ``gain``; cell-cycle
    ``phase`` (<0.45 G1, <0.8 S, else G2); ``is_mitotic``. Per mitosis ``j`` (cell ``mitotic[j]``):
    ``stage`` (0 metaphase, 1 anaphase, 2 telophase), centre ``mx, my``, radius ``mR``, plate angle
    ``mphi``, plate half-length/-width ``mLh, mWh``, spindle axis ``mpx, mpy``, the two ``pole``
    positions; chromatin ellipses ``ch_j, ch_x, ch_y, ch_a, ch_b, ch_ang``. Nucleoli: ``nol_j`` (owner
    cell), ``nol_x, nol_y, nol_r, nol_e, nol_ang``. ``cell_labels`` / ``nucleus_labels``: label maps
    (label ``i + 1``). ``s``: pixels per unit of the 256-px reference geometry.

    Cached float32 masks (0/1 unless said): :attr:`nuclei`, :attr:`cytoplasm`, :attr:`cells`,
    :attr:`mitotic_cells`, :attr:`mitotic_soft`, :attr:`nuclei_gain`, :attr:`cytoplasm_gain`,
    :attr:`nucleoli`, :attr:`chromatin`, :attr:`perinuclear`.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        size: int,
        n_mitoses: tuple[int, int] | None,
        need_telophase: bool = False,
        scale: float | None = None,
        crowding: float = 0.0,
    ):
        if not 0.0 <= float(crowding) <= 1.0:
            raise ValueError(
                f"crowding={crowding} must lie between 0 (the default spacing) and 1 (nuclei touching)"
            )
        self.crowding = float(crowding)
        self.rng = rng
        self.H = self.W = size
        # scale: pixels per unit of the 256-px reference geometry (None: size / 256, the default look)
        self.s = size / REF_SIZE if scale is None else float(scale)
        self.fixed_zoom = scale is not None
        self.bank = texture_bank(size) if scale is None else texture_bank(size, round(float(scale), 4))
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
        # crowding: a confluent culture, nucleus centres closer (at 1, ~0.58 of the spacing: neighbours touch)
        d *= 1.0 - 0.42 * self.crowding
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
        self.is_mitotic = np.zeros(n, bool)
        self.is_mitotic[mit] = True
        self.mitotic = mit
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
        self.pole = np.stack(
            [
                np.stack([mx + px * dpole, my + py * dpole], -1),
                np.stack([mx - px * dpole, my - py * dpole], -1),
            ],
            1,
        )  # (m, 2, 2)
        # chromatin ellipses: (owner j, x, y, a, b, angle)
        ch = []
        for j in range(m):
            if st[j] == 0:
                ch.append((j, mx[j], my[j], Lh[j], Wh[j], phi[j]))
            elif st[j] == 1:
                sep = Lh[j] * rng.uniform(0.35, 0.55)
                for sg in (1, -1):
                    ch.append(
                        (
                            j,
                            mx[j] + sg * px[j] * sep,
                            my[j] + sg * py[j] * sep,
                            Lh[j] * 0.85,
                            Wh[j] * 0.8,
                            phi[j],
                        )
                    )
            else:
                sep = R[j] * 0.62
                for sg in (1, -1):
                    ch.append(
                        (
                            j,
                            mx[j] + sg * px[j] * sep,
                            my[j] + sg * py[j] * sep,
                            Lh[j] * 0.55,
                            Lh[j] * 0.32,
                            phi[j],
                        )
                    )
        chs = np.array(ch, dtype=np.float64).reshape(-1, 6)
        self.ch_j = chs[:, 0].astype(int)
        self.ch_x, self.ch_y, self.ch_a, self.ch_b, self.ch_ang = (
            chs[:, 1],
            chs[:, 2],
            chs[:, 3],
            chs[:, 4],
            chs[:, 5],
        )

        # nucleoli (interphase cells)
        k = rng.choice(4, size=n, p=[0.2, 0.38, 0.28, 0.14]) + 1
        k[self.is_mitotic] = 0
        owner = np.repeat(np.arange(n), k)
        rr = np.sqrt(rng.random(owner.size)) * 0.5
        tt = rng.uniform(0, TAU, owner.size)
        ux, uy = rotate(rr * a[owner] * np.cos(tt), rr * b[owner] * np.sin(tt), theta[owner])
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
        ang = np.linspace(0, TAU, K, endpoint=False)[None, :]
        # smooth irregular outline: low harmonics plus an optional process (pseudopod)
        rad = np.ones((n, K))
        for h in (2, 3, 4):
            rad += rng.uniform(0, 0.2 / h, (n, 1)) * np.cos(h * ang + rng.uniform(0, TAU, (n, 1)))
        t0 = rng.choice([0.0, math.pi], (n, 1)) + rng.normal(0, 0.4, (n, 1))
        dt = np.angle(np.exp(1j * (ang - t0)))
        rad += (rng.random((n, 1)) < 0.45) * rng.uniform(0.2, 0.7, (n, 1)) * np.exp(-((dt / 0.32) ** 2))
        ux, uy = rotate(
            self.A[:, None] * rad * np.cos(ang), self.B[:, None] * rad * np.sin(ang), self.theta[:, None]
        )
        poly = np.stack([self.cx[:, None] + ux, self.cy[:, None] + uy], -1).round().astype(np.int32)
        for i in np.flatnonzero(~self.is_mitotic):
            cv2.fillPoly(cyt, [poly[i]], int(i + 1))
        for i in np.flatnonzero(~self.is_mitotic):
            cv2.ellipse(
                nuc,
                (
                    (float(self.nx[i]), float(self.ny[i])),
                    (float(2 * self.a[i]), float(2 * self.b[i])),
                    float(np.degrees(self.theta[i])),
                ),
                int(i + 1),
                -1,
            )
        # mitotic cells are rounded up and sit on top
        for j, i in enumerate(self.mitotic):
            c = (float(self.mx[j]), float(self.my[j]))
            if self.stage[j] == 2:
                sep = self.mR[j] * 0.62
                for sg in (1, -1):
                    cc = (c[0] + sg * self.mpx[j] * sep, c[1] + sg * self.mpy[j] * sep)
                    box = (cc, (float(1.3 * self.mR[j]), float(1.3 * self.mR[j])), 0.0)
                    cv2.ellipse(cyt, box, int(i + 1), -1)
                    cv2.ellipse(nuc, box, 0, -1)
            else:
                box = (
                    c,
                    (float(2 * self.mR[j]), float(2 * self.mR[j] * 0.94)),
                    float(np.degrees(self.mphi[j])),
                )
                cv2.ellipse(cyt, box, int(i + 1), -1)
                cv2.ellipse(nuc, box, 0, -1)
        self.cell_labels, self.nucleus_labels = cyt, nuc

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
    def nuclei(self) -> np.ndarray:
        """Interphase nuclei, 0/1."""
        return self._get("nuclei", lambda: (self.nucleus_labels > 0).astype(np.float32))

    @property
    def mitotic_cells(self) -> np.ndarray:
        """Whole mitotic cells (rounded), 0/1."""
        return self._get(
            "mitotic_cells", lambda: self.lut(self.is_mitotic.astype(np.float32), self.cell_labels)
        )

    @property
    def mitotic_soft(self) -> np.ndarray:
        """Mitotic cells with soft edges (for diffuse mitotic staining)."""
        return self._get("mitotic_soft", lambda: self.blur(self.mitotic_cells, 1.5))

    @property
    def cells(self) -> np.ndarray:
        """Every cell (interphase with its nucleus, and mitotic), 0/1."""
        return self._get("cells", lambda: np.maximum((self.cell_labels > 0).astype(np.float32), self.nuclei))

    @property
    def cytoplasm(self) -> np.ndarray:
        """Interphase cytoplasm (outside nuclei and mitotic cells), 0/1."""
        return self._get("cytoplasm", lambda: (self.cells - self.nuclei - self.mitotic_cells).clip(0, 1))

    @property
    def nuclei_gain(self) -> np.ndarray:
        """Interphase nuclei x per-cell gain."""
        return self._get("nuclei_gain", lambda: self.lut(self.gain, self.nucleus_labels))

    @property
    def cytoplasm_gain(self) -> np.ndarray:
        """Interphase cytoplasm x per-cell gain."""
        return self._get("cytoplasm_gain", lambda: self.lut(self.gain, self.cell_labels) * self.cytoplasm)

    @property
    def nucleoli(self) -> np.ndarray:
        """Nucleoli of interphase nuclei, 0/1."""

        def mk() -> np.ndarray:
            c = np.zeros((self.H, self.W), np.float32)
            for x, y, r, e, an in zip(
                self.nol_x, self.nol_y, self.nol_r, self.nol_e, self.nol_ang, strict=True
            ):
                cv2.ellipse(c, ((float(x), float(y)), (float(2 * r), float(2 * r * e)), float(an)), 1.0, -1)
            return c * self.nuclei

        return self._get("nucleoli", mk)

    @property
    def chromatin(self) -> np.ndarray:
        """Condensed mitotic chromatin, 0/1."""

        def mk() -> np.ndarray:
            c = np.zeros((self.H, self.W), np.float32)
            self.draw_chromatin(c, 1.0, -1)
            return c

        return self._get("chromatin", mk)

    @property
    def perinuclear(self) -> np.ndarray:
        """Smooth halo around nuclei (higher near the nucleus), 0..~1."""

        def mk() -> np.ndarray:
            h = cv2.GaussianBlur(self.nuclei, (0, 0), 6.0 * self.s)
            return np.minimum(h * 2.0, 1.0)

        return self._get("perinuclear", mk)

    def draw_chromatin(self, canvas: np.ndarray, value: float, thickness: int) -> None:
        for x, y, a, b, an in zip(self.ch_x, self.ch_y, self.ch_a, self.ch_b, self.ch_ang, strict=True):
            cv2.ellipse(
                canvas,
                ((float(x), float(y)), (float(2 * a), float(2 * b)), float(np.degrees(an))),
                value,
                thickness,
            )

    def tex(self, name: str) -> np.ndarray:
        """Random crop (with random flips) of a bank texture, HxW float32 view."""
        t = getattr(self.bank, name)
        o = self.rng.integers(0, self.bank.t - self.H + 1, 2)
        v = t[o[0] : o[0] + self.H, o[1] : o[1] + self.W]
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
        return cv2.GaussianBlur(c, (0, 0), sig) * (TAU * sig * sig)

    def in_ellipses(
        self,
        cx: np.ndarray,
        cy: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        ang: np.ndarray,
        counts: np.ndarray,
        rmin: float = 0.0,
        rmax: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Uniform points inside ellipses; returns (x, y, owner)."""
        owner = np.repeat(np.arange(len(counts)), counts)
        u = self.rng.random(owner.size)
        r = np.sqrt(rmin * rmin + u * (rmax * rmax - rmin * rmin))
        t = self.rng.uniform(0, TAU, owner.size)
        ux, uy = rotate(r * a[owner] * np.cos(t), r * b[owner] * np.sin(t), ang[owner])
        return cx[owner] + ux, cy[owner] + uy, owner

    def in_nuclei(self, counts: np.ndarray, rmax: float = 0.92) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = np.where(self.is_mitotic, 0, counts)
        return self.in_ellipses(self.nx, self.ny, self.a, self.b, self.theta, counts, 0.0, rmax)

    def in_cytoplasm(
        self, counts: np.ndarray, rmin: float = 0.25, rmax: float = 0.95
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points in the cytoplasm of interphase cells (outside the nucleus)."""
        counts = np.where(self.is_mitotic, 0, counts)
        x, y, o = self.in_ellipses(self.cx, self.cy, self.A, self.B, self.theta, counts * 2, rmin, rmax)
        dx, dy = rotate(x - self.nx[o], y - self.ny[o], -self.theta[o])
        out = (dx / (self.a[o] * 1.08)) ** 2 + (dy / (self.b[o] * 1.08)) ** 2 > 1.0
        return x[out], y[out], o[out]

    def on_rim(
        self, counts: np.ndarray, scale: float = 1.0, jitter: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points on the nuclear outline of interphase cells (spacing ~ even with jitter)."""
        counts = np.where(self.is_mitotic, 0, counts)
        o = np.repeat(np.arange(self.n), counts)
        start = np.repeat(self.rng.uniform(0, TAU, self.n), counts)
        idx = np.arange(o.size) - np.repeat(np.cumsum(counts) - counts, counts)
        t = start + TAU * (idx + self.rng.uniform(-0.3, 0.3, o.size)) / np.maximum(counts[o], 1)
        r = scale + jitter * self.rng.normal(0, 1, o.size)
        ux, uy = rotate(r * self.a[o] * np.cos(t), r * self.b[o] * np.sin(t), self.theta[o])
        return self.nx[o] + ux, self.ny[o] + uy, o

    def in_chromatin(
        self, counts_per_mitosis: np.ndarray, rmax: float = 0.95
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points inside the chromatin of each mitotic cell (counts indexed by mitosis j)."""
        per_ch = np.asarray(counts_per_mitosis)[self.ch_j] if len(self.ch_j) else np.zeros(0, int)
        nch = np.bincount(self.ch_j, minlength=len(self.mitotic)) if len(self.ch_j) else np.zeros(0, int)
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
