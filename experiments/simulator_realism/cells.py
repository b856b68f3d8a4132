"""Shared by the realism report and the transfer benchmark: the real I3A cells, grouped by specimen
and split once (train / val / test), and cells loaded as arrays.

Grouping: the contest reader's specimen grouping when it has one (``read_i3a2014(grouping=...)``);
otherwise blocks of at least 250 consecutive IDs within a class (the data README's rule: smaller blocks
cut specimens in two). The split is :func:`ana_lightning.data.splits.split_records` (stratified,
grouped), seed 0, 60/20/20. The **test** split is only ever scored by the transfer benchmark; the
realism report and any renderer tuning read the train and val splits only.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from ana_lightning.data.contest import read_i3a2014
from ana_lightning.data.records import ImageRecord
from ana_lightning.data.splits import split_records
from ana_lightning.taxonomy import Taxonomy

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("ANA_SHARED", REPO.parent / "shared"))
REAL_ROOT = SHARED / "data" / "i3a2014-task1" / "training"
#: ICAP label of the reader → I3A class name, in the report's order.
I3A_NAMES = {
    "AC-1": "Homogeneous",
    "speckled": "Speckled",
    "nucleolar": "Nucleolar",
    "AC-3": "Centromere",
    "nuclear envelope": "NuMem",
    "AC-22": "Golgi",
}
FRACTIONS = (0.6, 0.2, 0.2)


def _block_groups(records: list[ImageRecord], min_size: int = 250) -> list[ImageRecord]:
    by_class: dict[str, list[ImageRecord]] = {}
    for r in sorted(records, key=lambda r: int(Path(r.path).stem)):
        by_class.setdefault(r.codes[0], []).append(r)
    out = []
    for label, rs in by_class.items():
        nblocks = max(1, len(rs) // min_size)
        for i, r in enumerate(rs):
            b = min(i // min_size, nblocks - 1)
            out.append(replace(r, group=f"{I3A_NAMES.get(label, label)}-block{b:02d}"))
    return out


def read_real(root: Path = REAL_ROOT) -> tuple[dict[str, list[ImageRecord]], dict[str, str], str]:
    """``(splits, masks, how grouped)`` of the real I3A cells (specimen-grouped, seed 0, 60/20/20)."""
    if not (root / "gt_training.csv").is_file():
        raise FileNotFoundError(f"no real I3A cells at {root} (set ANA_SHARED=<the shared folder>)")
    tree = Taxonomy.load()
    if "grouping" in inspect.signature(read_i3a2014).parameters:
        data = read_i3a2014(root, tree, check_images=False, grouping="auto")
        records, how = data.records, data.grouping
    else:
        data = read_i3a2014(root, tree, check_images=False)
        records, how = _block_groups(data.records), "blocks of >= 250 consecutive IDs per class"
    return split_records(records, FRACTIONS, seed=0), data.masks, how


def load_cell(path: str, mask_path: str) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read {path}")
    if img.ndim == 3:
        img = img[..., 1] if img.shape[2] >= 3 else img[..., 0]  # green channel of an RGB cell
    m = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise OSError(f"cannot read {mask_path}")
    return img.astype(np.uint8), (m > 0)


def sample_per_class(records: list[ImageRecord], n: int, seed: int = 0) -> list[ImageRecord]:
    """Up to ``n`` records per label, spread evenly over the (sorted) records of each label."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[ImageRecord]] = {}
    for r in sorted(records, key=lambda r: r.path):
        by.setdefault(r.codes[0], []).append(r)
    out = []
    for rs in by.values():
        idx = np.sort(rng.choice(len(rs), size=min(n, len(rs)), replace=False))
        out += [rs[i] for i in idx]
    return out
