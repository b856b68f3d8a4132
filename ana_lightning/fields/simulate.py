"""Simulator fields at several magnifications, with their true cell and nucleus masks.

:func:`write_sim_fields` writes ``<root>/<code>/d<D>_<i>.png`` (the field), ``…_cells.png`` and
``…_nuclei.png`` (16-bit label maps; a cell and its nucleus share a label) and ``<root>/fields.csv``
(``path,label,nucleus_diameter_px,true_diameter_px,mitotic_labels``). ``true_diameter_px`` is the
median equivalent-circle diameter of the nuclei that do not touch the border, the figure scale
estimates are checked against (:func:`true_nucleus_diameter`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..data.synthetic.compose import render_field

__all__ = ["true_nucleus_diameter", "sim_field", "write_sim_fields", "read_sim_fields"]


def true_nucleus_diameter(nuclei: np.ndarray) -> float:
    """Median equivalent-circle diameter of the labelled nuclei not touching the image border."""
    from skimage.measure import regionprops

    h, w = nuclei.shape
    ds = [
        p.equivalent_diameter_area
        for p in regionprops(nuclei)
        if p.bbox[0] > 0 and p.bbox[1] > 0 and p.bbox[2] < h and p.bbox[3] < w
    ]
    if not ds:
        ds = [p.equivalent_diameter_area for p in regionprops(nuclei)]
    return float(np.median(ds)) if ds else float("nan")


def sim_field(
    code: str, diameter_px: float, seed: int, size: int = 384, dapi: bool = False, crowding: float = 0.0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(image, masks)`` of one simulator field rendered at a nucleus diameter of ``diameter_px``
    (``crowding``: from the default spacing, 0, to nuclei touching, 1; see ``render_field``)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(round(diameter_px * 10)), 77]))
    return render_field(
        code, rng, size=size, dapi=dapi, nucleus_diameter_px=diameter_px, return_masks=True, crowding=crowding
    )


def write_sim_fields(
    root: str | Path,
    codes: Sequence[str],
    diameters: Sequence[float],
    n_per: int = 1,
    size: int = 384,
    seed: int = 0,
    dapi: bool = False,
) -> Path:
    """Write fields and masks for every code × diameter × ``n_per`` (see the module docstring)."""
    root = Path(root)
    rows = []
    for ci, code in enumerate(codes):
        for d in diameters:
            for i in range(n_per):
                img, m = sim_field(code, float(d), seed * 100_003 + ci * 1009 + i, size=size, dapi=dapi)
                stem = f"{code}/d{float(d):g}_{i:03d}"
                (root / code).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / f"{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(root / f"{stem}_cells.png"), m["cells"].astype(np.uint16))
                cv2.imwrite(str(root / f"{stem}_nuclei.png"), m["nuclei"].astype(np.uint16))
                mit = " ".join(str(j) for j in np.flatnonzero(m["mitotic"]))
                rows.append(
                    (f"{stem}.png", code, f"{float(d):g}", f"{true_nucleus_diameter(m['nuclei']):.3f}", mit)
                )
    with open(root / "fields.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("path", "label", "nucleus_diameter_px", "true_diameter_px", "mitotic_labels"))
        w.writerows(rows)
    return root


def read_sim_fields(root: str | Path) -> list[dict]:
    """Rows of ``fields.csv`` with the image and masks loaded (``image`` RGB, ``cells``, ``nuclei``)."""
    root = Path(root)
    out = []
    with open(root / "fields.csv", newline="") as f:
        for r in csv.DictReader(f):
            stem = r["path"][: -len(".png")]
            img = cv2.cvtColor(cv2.imread(str(root / r["path"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            cells = cv2.imread(str(root / f"{stem}_cells.png"), cv2.IMREAD_UNCHANGED).astype(np.int32)
            nuclei = cv2.imread(str(root / f"{stem}_nuclei.png"), cv2.IMREAD_UNCHANGED).astype(np.int32)
            mit = np.zeros(int(max(cells.max(), 0)) + 1, bool)
            if r["mitotic_labels"]:
                mit[[int(x) for x in r["mitotic_labels"].split() if int(x) < mit.size]] = True
            out.append({**r, "image": img, "cells": cells, "nuclei": nuclei, "mitotic": mit})
    return out
