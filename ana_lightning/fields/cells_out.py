"""``ana-predict … truth=folder cells_out=<folder>``: the cells a cell model read in a lab's labelled fields,
written as training cells (round 24).

A lab that checks a handed model on its own labelled fields (``truth=``) gets, from the same run, every cell the
model read (interphase, not cut by the field's border) as an I3A-layout folder: ``00001.png`` (the crop as the model
read it, before masking or re-framing: grey, the DAPI counterstain left out) with ``00001_Mask.png`` (the cell's
mask), and ``gt_training.csv`` with ``Image ID,Image class,Specimen ID,Field``: the class is the model class the
field's known label meets on the ICAP tree (``ac-11`` → ``NuMem`` for an I3A model), the specimen is the field's
``group_by`` group, else the field itself. Then

    ana-train experiment=i3a_cells data.root=<I3A training folder> data.extra_train=<folder>

trains on the I3A cells with the lab's cells added to the training split only
(:meth:`~ana_lightning.data.hierarchy.HEp2HierarchyDataModule._extra_train_records`). Fields whose label no
model class meets, or several do, are not written (the log counts them). The folder must be new or empty: nothing is overwritten.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "MIN_SIDE", "CellsWriter", "check_cells_out", "cell_labels", "field_labels"]

COLUMNS = ["Image ID", "Image class", "Specimen ID", "Field"]
#: crops with a shorter side are not written (a fragment, not a cell a model could learn from)
MIN_SIDE = 12


def check_cells_out(cfg) -> Path | None:
    """``cells_out`` checked before the model loads: it needs ``truth=`` (the cells' labels) and a new or
    empty folder. None when it is not set."""
    value = cfg.get("cells_out")
    if not value:
        return None
    out = Path(str(value)).expanduser()
    if not cfg.get("truth"):
        raise ValueError(
            f"cells_out={out}: the cells are labelled by the fields' known labels, so it needs truth= "
            "(e.g. truth=folder for fields in <ac-N>/ folders)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"cells_out={out} exists and is not an empty folder: give a new one")
    return out


def cell_labels(
    truth_of: Mapping[Path, str], nodes: Mapping[str, str], min_level: int = 2
) -> tuple[dict[Path, str], Counter]:
    """Each field's model class: the one class its known (tree) label meets on the ICAP tree at ``min_level``
    or finer (:func:`~ana_lightning.cross_dataset.shared_classes`). Returns ``(field → class, count of the
    labels left out)``; a label that meets no class, or several, is left out."""
    from ..cross_dataset import shared_classes
    from ..taxonomy import Taxonomy

    labels = sorted(set(truth_of.values()))
    shared = shared_classes(dict(nodes), labels, Taxonomy.load(), min_level)
    of = {d: s.model_classes[0] for s in shared if len(s.model_classes) == 1 for d in s.data_labels}
    out = {f: of[lab] for f, lab in truth_of.items() if lab in of}
    return out, Counter(lab for lab in truth_of.values() if lab not in of)


def field_labels(
    out: Path, task: str, truth: tuple[Mapping[str, str], Mapping[str, str]], min_level: int = 2
) -> dict[Path, str]:
    """``cells_out``'s label of each field (:func:`cell_labels`), checked once the model is loaded and before any
    field is read: a single-label model (a cell gets one class, which ``data.extra_train`` reads) and at least one
    field whose label meets exactly one class. ``truth``: ``ana-predict``'s ``(field → tree label, model class →
    tree label)``."""
    if task != "single_label":
        raise ValueError(
            f"cells_out={out} labels each cell with one class of a single-label cell model "
            f"(data.extra_train reads one class per cell); this model is {task!r}"
        )
    by_name, left = cell_labels(truth[0], truth[1], min_level)
    if not by_name:  # nothing would be written: say so before the fields are read, not after
        raise ValueError(
            f"cells_out={out}: no field's label meets exactly one class of the model, so no cell would be "
            f"written (labels: {', '.join(sorted(left))}; the model's classes: {', '.join(truth[1])}); "
            "label the fields with the model's classes or their ICAP codes"
        )
    if left:
        log.info(
            "cells_out: fields of %s are not written (their label meets no class of the model, or several)",
            ", ".join(f"{k} ({v})" for k, v in sorted(left.items())),
        )
    return {Path(f): c for f, c in by_name.items()}


class CellsWriter:
    """Writes the cells of labelled fields into ``folder`` (see the module docstring); :meth:`close` writes
    ``gt_training.csv`` (atomically, so a folder without it is an unfinished one)."""

    def __init__(self, folder: Path, input_root: Path):
        self.folder, self.input_root = Path(folder), Path(input_root)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, str]] = []
        self.fields = 0

    def _field_name(self, field: str | Path) -> str:
        p = Path(field)
        try:
            return p.relative_to(self.input_root).as_posix()
        except ValueError:
            return p.name

    def write(
        self,
        field: str | Path,
        label: str,
        specimen: str | None,
        cells: Sequence[tuple[np.ndarray, np.ndarray]],
    ) -> int:
        """Write one field's ``(crop, mask)`` pairs labelled ``label``; returns how many were written."""
        name = self._field_name(field)
        n = 0
        for crop, mask in cells:
            if min(crop.shape[:2]) < MIN_SIDE:
                continue
            i = f"{len(self.rows) + 1:05d}"
            Image.fromarray(np.ascontiguousarray(crop)).save(self.folder / f"{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(self.folder / f"{i}_Mask.png")
            self.rows.append(
                {"Image ID": i, "Image class": label, "Specimen ID": specimen or name, "Field": name}
            )
            n += 1
        self.fields += 1
        return n

    def close(self) -> Path:
        path = self.folder / "gt_training.csv"
        part = path.with_name(path.name + ".part")
        with open(part, "w", newline="") as fh:
            w = csv.DictWriter(fh, COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(part, path)
        per_class = Counter(r["Image class"] for r in self.rows)
        log.info(
            "cells_out: %d cell(s) of %d labelled field(s) → %s (%s); train with them: ana-train … data.extra_train=%s",
            len(self.rows),
            self.fields,
            self.folder,
            ", ".join(f"{k}: {v}" for k, v in sorted(per_class.items())) or "none",
            self.folder,
        )
        return path
