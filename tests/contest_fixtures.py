"""Fixture generators for the public contest layouts, written into tmp folders (never real images).

:func:`write_icpr2012_contest` writes the ICPR 2012 (MIVIA) contest layout exactly as distributed::

    <root>/training/001.png, 001_mask.png, …   8-bit RGB cells (green signal), 20–585 px, binary masks
    <root>/training/gt_training.csv              ID;pattern            (header)
    <root>/training/training.csv                 ID;intensity;width;height   (positive | intermediate)
    <root>/test/…, gt_test.csv, test.csv         the same for the official test set
    <root>/cells.csv                             ICPR2012Contest_Cell_ID;Set;Image;Intensity;Original_cell_ID;
                                                 Cell_class;Cell_width;Cell_height

:func:`write_specimens` writes the I3A 2014 Task-1 layout (``00001.png`` + ``00001_Mask.png``,
``gt_training.csv``), one brightness per specimen of consecutive IDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ICPR2012_CLASSES = (
    "homogeneous",
    "fine_speckled",
    "coarse_speckled",
    "nucleolar",
    "centromere",
    "cytoplasmatic",
)


#: The ICPR 2012 contest classes and the ICAP tree labels they map to (fine and coarse speckled at their
#: leaves, nucleolar at its level-2 node, cytoplasmatic at its level-1 node).
ICPR2012_NODES = {
    "homogeneous": "AC-1",
    "fine_speckled": "AC-4",
    "coarse_speckled": "AC-5",
    "nucleolar": "nucleolar",
    "centromere": "AC-3",
    "cytoplasmatic": "cytoplasmic",
}


def _icpr_cell(
    rng: np.random.Generator, k: int, h: int, w: int, bright: float
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB cell of class ``k`` (a texture per class, green signal) and its binary mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, ry, rx = (h - 1) / 2, (w - 1) / 2, max(h * 0.42, 2), max(w * 0.42, 2)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    freq = 0.15 + 0.12 * k
    texture = 0.5 + 0.5 * np.sin(xx * freq + rng.uniform(0, 6.3)) * np.cos(yy * freq * (1 + k % 2))
    signal = bright * (0.35 + 0.65 * texture) * inside + rng.normal(0, 6, (h, w))
    img = np.zeros((h, w, 3), np.float32)
    img[..., 1] = signal
    img[..., 0] = 0.12 * signal  # a little bleed into red, none into blue
    return np.clip(img, 0, 255).astype(np.uint8), inside.astype(np.uint8) * 255


def write_icpr2012_contest(
    root: Path,
    train_per_class: int = 4,
    test_per_class: int = 2,
    fields_per_set: int = 4,
    shared_field: bool = False,
    seed: int = 0,
    extreme_sizes: bool = True,
) -> Path:
    """Write the ICPR 2012 contest layout (module docstring) with small cells.

    Every class gets ``train_per_class`` training and ``test_per_class`` test cells. Field images are
    numbered 1… across the sets (``fields_per_set`` per set, cells spread over them); with
    ``shared_field=True`` one test cell is said to come from a training field (the leakage a contest
    protocol must flag). IDs are zero-padded and run on from training into test. With
    ``extreme_sizes`` one training cell is 20 px and one 585 px wide (the contest's range).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    cells = ["ICPR2012Contest_Cell_ID;Set;Image;Intensity;Original_cell_ID;Cell_class;Cell_width;Cell_height"]
    next_id = 1
    for s, (folder, gt_name, info_name, per_class) in enumerate(
        (
            ("training", "gt_training.csv", "training.csv", train_per_class),
            ("test", "gt_test.csv", "test.csv", test_per_class),
        )
    ):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        gt, info = ["ID;pattern"], ["ID;intensity;width;height"]
        n = 0
        for k, name in enumerate(ICPR2012_CLASSES):
            for j in range(per_class):
                cid = f"{next_id:03d}"
                h, w = (int(x) for x in rng.integers(34, 60, 2))
                if extreme_sizes and s == 0 and next_id == 1:
                    h, w = 20, 20
                if extreme_sizes and s == 0 and next_id == 2:
                    h, w = 400, 585
                intensity = "positive" if (j + k) % 2 == 0 else "intermediate"
                img, mask = _icpr_cell(rng, k, h, w, bright=200.0 if intensity == "positive" else 90.0)
                Image.fromarray(img, mode="RGB").save(d / f"{cid}.png")
                Image.fromarray(mask, mode="L").save(d / f"{cid}_mask.png")
                gt.append(f"{cid};{name}")
                info.append(f"{cid};{intensity};{w};{h}")
                field = 1 + s * fields_per_set + n % fields_per_set
                if shared_field and s == 1 and n == 0:
                    field = 1  # a test cell from a training field
                cells.append(f"{cid};{folder};{field};{intensity};{j + 1};{name};{w};{h}")
                n += 1
                next_id += 1
        (d / gt_name).write_text("\n".join(gt) + "\n")
        (d / info_name).write_text("\n".join(info) + "\n")
    (root / "cells.csv").write_text("\n".join(cells) + "\n")
    return root


I3A_CLASSES = ("Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi")


def write_i3a2014_cells(root: Path, per_class: int = 6, specimens_per_class: int = 3, seed: int = 0) -> Path:
    """I3A Task-1 layout: dim 8-bit grey ``NNNNN.png`` cells with ``NNNNN_Mask.png`` and
    ``gt_training.csv`` ``Image ID,Image class,Specimen ID`` (a specimen column, so no grouping is guessed)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["Image ID,Image class,Specimen ID"]
    i = 0
    for k, name in enumerate(I3A_CLASSES):
        for j in range(per_class):
            i += 1
            h, w = (int(x) for x in rng.integers(54, 70, 2))
            img, mask = _icpr_cell(rng, k, h, w, bright=float(rng.uniform(30, 60)))
            Image.fromarray(img[..., 1], mode="L").save(root / f"{i:05d}.png")
            Image.fromarray(mask, mode="L").save(root / f"{i:05d}_Mask.png")
            lines.append(f"{i},{name},{k * specimens_per_class + j % specimens_per_class}")
    (root / "gt_training.csv").write_text("\n".join(lines) + "\n")
    return root


def write_specimens(
    root: Path,
    specimens: list[tuple[str, int, int]],
    gap_after: int | None = None,
    specimen_column: bool = False,
) -> Path:
    """I3A layout; each ``(class, n_cells, level)`` is one specimen of consecutive IDs at one brightness."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    lines = ["Image ID,Image class" + (",Specimen ID" if specimen_column else "")]
    mask = np.zeros((12, 12), np.uint8)
    mask[2:10, 2:10] = 255
    i = 0
    for s, (name, n, level) in enumerate(specimens):
        if gap_after is not None and s == gap_after:
            i += 40  # a block of IDs kept aside: a missing specimen
        for _ in range(n):
            i += 1
            cell = np.clip(rng.normal(level, level * 0.08, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(cell).save(root / f"{i:05d}.png")
            Image.fromarray(mask).save(root / f"{i:05d}_Mask.png")
            lines.append(f"{i:05d},{name}" + (f",spec{s}" if specimen_column else ""))
    (root / "gt_training.csv").write_text("\n".join(lines) + "\n")
    return root


def i3a_contest_datamodule(root: Path, **overrides):
    """The datamodule of the cell tests on a :func:`write_specimens` folder: the six contest classes,
    the mask in the blue channel, 16 px, groups of ≥ 10 cells in three equal splits."""
    from ana_lightning.data.hierarchy import HEp2HierarchyDataModule

    settings = dict(
        root=str(root),
        reader="i3a2014",
        level="contest",
        mask="channel",
        image_size=16,
        group_min_size=10,
        split_fractions=(0.34, 0.33, 0.33),
    )
    return HEp2HierarchyDataModule(**{**settings, **overrides})
