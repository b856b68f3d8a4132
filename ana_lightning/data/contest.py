"""Readers for the public HEp-2 cell contests: their layouts → :class:`~.records.ImageRecord` lists.

- **ICPR 2012 / MIVIA** cell crops: one image per cell and a CSV ``ID;pattern`` (a header row is
  optional; an ``image`` / ``field`` column, when present, becomes the record's group so that cells of
  one field never straddle splits). The contest's own layout — ``training/`` and ``test/`` folders
  (``001.png`` + ``001_mask.png``, ``gt_training.csv`` / ``gt_test.csv`` ``ID;pattern``, ``training.csv`` /
  ``test.csv`` ``ID;intensity;width;height``) and a top-level ``cells.csv``
  (``ICPR2012Contest_Cell_ID;Set;Image;…``) — is read as given: the folders become the official split
  (:attr:`ContestData.official_split`) and ``cells.csv``'s ``Image`` (the field) the group.
- **I3A / ICPR 2014 Task 1** cells: 8-bit grey cell images, each with a mask (``<ID>_Mask.png``, or the
  same name in a ``mask``/``masks`` folder) and a CSV ``Image ID,Image class`` (a ``Specimen ID``
  column, when present, becomes the group).

Class names are mapped onto the ICAP tree by the packaged ``public_datasets`` table of
``icap_tree.yaml`` (:attr:`Taxonomy.public_datasets`). Some names map to a leaf (``homogeneous`` →
``AC-1``), others to a coarser node (``nucleolar`` → the level-2 node ``nucleolar``, ``cytoplasmatic``
→ the level-1 node ``cytoplasmic``): a record's label is then that node, and
:class:`~.hierarchy.HEp2HierarchyDataModule` uses it only at the levels it determines.

The layouts are read leniently (``;``/``,``/tab separators, header or not, zero-padded or plain IDs,
any image extension) and strictly (an unknown class name, an ID without an image file, a missing mask
or an unreadable file is an error naming the CSV line or the file).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..taxonomy import LabelError, Taxonomy
from .contest_labels import (
    CONTESTS,
    _norm,
    contest_class_of,
    contest_classes,
    contest_label_map,
    map_contest_label,
)
from .images import BadFile, is_ignored, is_image_path
from .masks import MASK_MODES, apply_mask, masked_loader
from .records import DatasetError, ImageRecord, read_table_text, resolve_bad_files, scan_images
from .specimens import GROUPINGS, consecutive_id_groups, group_i3a_specimens

__all__ = [
    "CONTESTS",
    "ContestData",
    "contest_classes",
    "contest_class_of",
    "is_icpr2012_contest_layout",
    "contest_label_map",
    "map_contest_label",
    "read_icpr2012",
    "read_i3a2014",
    "apply_mask",
    "MASK_MODES",
    "masked_loader",
    "GROUPINGS",
    "consecutive_id_groups",
    "group_i3a_specimens",
]
# The label maps (.contest_labels), masks (.masks) and I3A specimen groups (.specimens) have their
# own modules; their names stay importable from here.
_ = (_norm,)

log = logging.getLogger(__name__)


_ID_COLUMNS = ("id", "image id", "image_id", "imageid", "cell id", "cell")
_LABEL_COLUMNS = ("pattern", "image class", "image_class", "class", "label")
_GROUP_COLUMNS = ("specimen id", "specimen_id", "specimen", "image", "field", "slide", "patient", "group")
_MASK_NAME = re.compile(r"[_\- ]?mask$", re.IGNORECASE)


@dataclass
class ContestData:
    """What a contest reader found: records, rejected entries, each image's mask file, how the
    records were grouped (a group column, detected specimen runs, or nothing) and, for a layout with
    an official split, each image's split (``path → "train" | "test"``) and intensity."""

    records: list[ImageRecord]
    bad: list[BadFile]
    masks: dict[str, str]
    grouping: str = ""
    official_split: dict[str, str] = field(default_factory=dict)
    intensity: dict[str, str] = field(default_factory=dict)
    #: mask path → sha256 of its bytes, when the images were checked (the cell medians' cache key)
    mask_digests: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- CSV
def _find_csv(root: Path, csv_path: str | Path | None) -> Path:
    if csv_path:
        p = Path(csv_path).expanduser()
        p = p if p.is_absolute() or p.exists() else root / p
        if not p.is_file():
            raise FileNotFoundError(f"label CSV {p} does not exist")
        return p
    found = sorted(p for p in root.rglob("*.csv") if not is_ignored(p))
    if len(found) == 1:
        return found[0]
    preferred = [p for p in found if re.match(r"(gt|ground|label|annot)", p.name, re.IGNORECASE)]
    if len(preferred) == 1:
        return preferred[0]
    raise DatasetError(
        root,
        [
            BadFile(
                str(root),
                f"{'no' if not found else len(found)} CSV file(s) found "
                f"({', '.join(p.name for p in found[:5])}); set data.csv=<the label CSV>",
            )
        ],
    )


def _read_rows(path: Path, group_column: str | None) -> list[tuple[int, str, str, str | None]]:
    """``(line, id, class name, group)`` per data row of a contest CSV."""
    text = read_table_text(path, "label CSV", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DatasetError(path, [BadFile(str(path), "empty label CSV")])
    try:
        delimiter = csv.Sniffer().sniff(lines[0], delimiters=";,\t").delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [c.strip().lower() for c in rows[0]]
    id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    lab_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    if id_col is not None and lab_col is not None:
        body, first_line = rows[1:], 2
        if group_column:
            if group_column.lower() not in header:
                raise ValueError(f"{path}: no column {group_column!r} (columns: {rows[0]})")
            grp_col = header.index(group_column.lower())
        else:
            grp_col = next((header.index(c) for c in _GROUP_COLUMNS if c in header), None)
    else:  # no header: ID, class[, group]
        id_col, lab_col, grp_col = 0, 1, (2 if group_column else None)
        body, first_line = rows, 1
    out = []
    for n, row in enumerate(body, start=first_line):
        if len(row) <= max(id_col, lab_col):
            raise DatasetError(
                path,
                [BadFile(f"{path}:{n}", f"expected at least {max(id_col, lab_col) + 1} columns, got {row}")],
            )
        group = (
            row[grp_col].strip()
            if grp_col is not None and grp_col < len(row) and row[grp_col].strip()
            else None
        )
        out.append((n, row[id_col].strip(), row[lab_col].strip(), group))
    return out


# ---------------------------------------------------------------------------------------------- files
def _is_mask(p: Path) -> bool:
    return bool(_MASK_NAME.search(p.stem)) or p.parent.name.lower() in ("mask", "masks")


def _id_keys(stem: str) -> list[str]:
    """``'00012'`` is found as ID ``12`` and as ``00012``."""
    keys = [stem.lower()]
    if stem.isdigit() and str(int(stem)) != stem:
        keys.append(str(int(stem)))
    return keys


def _index_files(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or is_ignored(p) or not is_image_path(p):
            continue
        if _is_mask(p):
            stem = _MASK_NAME.sub("", p.stem)
            for k in _id_keys(stem):
                masks.setdefault(k, []).append(p)
        else:
            for k in _id_keys(p.stem):
                images.setdefault(k, []).append(p)
    return images, masks


def _read_contest(
    root: str | Path,
    tree: Taxonomy,
    contest: str,
    csv_path: str | Path | None,
    group_column: str | None,
    on_bad_file: str,
    check_images: bool,
    need_masks: bool | str,
) -> ContestData:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist (set data.root to the {contest} folder)"
        )
    table_path = _find_csv(root, csv_path)
    rows = _read_rows(table_path, group_column)
    images, masks = _index_files(root)
    if need_masks == "auto":  # masks are used when the layout has them, and then every cell needs one
        need_masks = bool(masks)
    bad: list[BadFile] = []
    cands: list[tuple[Path, str, str | None]] = []
    mask_of: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line, image_id, name, group in rows:
        where = f"{table_path}:{line}"
        try:
            label = map_contest_label(tree, contest, name)
        except LabelError as e:
            bad.append(BadFile(where, str(e)))
            continue
        key = next((k for k in _id_keys(image_id) if k in images), None)
        if key is None:
            bad.append(BadFile(where, f"no image file for ID {image_id!r} under {root}"))
            continue
        if len(images[key]) > 1:
            bad.append(
                BadFile(where, f"ID {image_id!r} matches several files: {[str(p) for p in images[key]]}")
            )
            continue
        if key in seen:
            bad.append(BadFile(where, f"ID {image_id!r} is listed twice (first on line {seen[key]})"))
            continue
        seen[key] = line
        path = images[key][0]
        if need_masks:
            mkey = next((k for k in _id_keys(image_id) if k in masks), None)
            if mkey is None:
                bad.append(
                    BadFile(
                        str(path),
                        "no mask file (expected <ID>_Mask.<ext> or masks/<ID>.<ext>); "
                        "set data.mask=none to use the cell without its mask",
                    )
                )
                continue
            mask_of[str(path)] = str(masks[mkey][0])
        cands.append((path, label, group))
    records: list[ImageRecord] = []
    if check_images:
        to_scan = [p for p, _, _ in cands] + [Path(m) for m in mask_of.values()]
        good, bad_images = scan_images(to_scan, masks=mask_of.values())
        bad += bad_images
        for p, label, group in cands:
            m = mask_of.get(str(p))
            if str(p) in good and (m is None or m in good):
                digest, size = good[str(p)]
                if m is not None and good[m][1] != size:  # found now, not by a loader in the middle of a fit
                    (mh, mw), (h, w) = good[m][1], size
                    bad.append(BadFile(str(p), f"its mask {m} is {mw}×{mh} px, the cell {w}×{h} px"))
                    continue
                records.append(ImageRecord(str(p), (label,), group, digest, size))
    else:
        records = [ImageRecord(str(p), (label,), group) for p, label, group in cands]
    resolve_bad_files(root, bad, on_bad_file)
    if not records:
        raise DatasetError(root, bad or [BadFile(str(table_path), "no usable rows")])
    records.sort(key=lambda r: r.path)
    kept = {r.path for r in records}
    masks = {k: v for k, v in mask_of.items() if k in kept}
    digests = {m: good[m][0] for m in masks.values()} if check_images else {}
    return ContestData(records, bad, masks, mask_digests=digests)


#: The ICPR 2012 contest layout: set folder → (split, label CSV, intensity CSV).
ICPR2012_SETS = {
    "training": ("train", "gt_training.csv", "training.csv"),
    "test": ("test", "gt_test.csv", "test.csv"),
}
ICPR2012_INTENSITIES = ("positive", "intermediate")


def is_icpr2012_contest_layout(root: str | Path) -> bool:
    """``root`` holds the contest's ``training/`` and ``test/`` folders, each with its ``gt_*.csv``."""
    root = Path(root).expanduser()
    return all((root / folder / gt).is_file() for folder, (_, gt, _) in ICPR2012_SETS.items())


def _read_semicolon_table(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """``(line, {column: value})`` per data row of a ``;``-separated CSV with a header (names compared
    case-insensitively); a missing column or a short row is a :class:`DatasetError` naming the line."""
    lines = read_table_text(path, errors="replace").splitlines()
    rows = [(n, ln) for n, ln in enumerate(lines, start=1) if ln.strip()]
    if not rows:
        raise DatasetError(path, [BadFile(str(path), "empty CSV")])
    delimiter = ";" if ";" in rows[0][1] else ","
    header = [c.strip().lower() for c in rows[0][1].split(delimiter)]
    missing = [c for c in required if c.lower() not in header]
    if missing:
        raise DatasetError(path, [BadFile(f"{path}:1", f"no column(s) {missing} in the header {header}")])
    out = []
    for n, ln in rows[1:]:
        cells = [c.strip() for c in ln.split(delimiter)]
        if len(cells) < len(header):
            raise DatasetError(path, [BadFile(f"{path}:{n}", f"expected {len(header)} columns, got {cells}")])
        out.append((n, dict(zip(header, cells, strict=False))))
    return out


def _id_key(value: str) -> str:
    return str(int(value)) if value.strip().isdigit() else value.strip().lower()


def _read_icpr2012_contest(
    root: Path, tree: Taxonomy, on_bad_file: str, check_images: bool, need_masks: bool | str
) -> ContestData:
    """The contest layout: ``training/`` and ``test/`` read as given (see the module docstring)."""
    records: list[ImageRecord] = []
    bad: list[BadFile] = []
    masks: dict[str, str] = {}
    official: dict[str, str] = {}
    intensity: dict[str, str] = {}
    id_of: dict[str, tuple[str, str]] = {}  # path -> (set folder, ID key)
    for folder, (split, gt, info) in ICPR2012_SETS.items():
        data = _read_contest(
            root / folder, tree, "icpr2012", root / folder / gt, None, "skip", check_images, need_masks
        )
        bad += data.bad
        masks.update(data.masks)
        for r in data.records:
            official[r.path] = split
            id_of[r.path] = (folder, _id_key(Path(r.path).stem))
        records += data.records
        info_path = root / folder / info
        if info_path.is_file():  # ID;intensity;width;height
            by_id = {k: r.path for r in data.records for k in [_id_key(Path(r.path).stem)]}
            for n, row in _read_semicolon_table(info_path, ("id", "intensity")):
                value = row["intensity"].lower()
                if value not in ICPR2012_INTENSITIES:
                    bad.append(
                        BadFile(
                            f"{info_path}:{n}",
                            f"intensity {row['intensity']!r} is not one of {ICPR2012_INTENSITIES}",
                        )
                    )
                elif _id_key(row["id"]) in by_id:
                    intensity[by_id[_id_key(row["id"])]] = value
    cells_csv = root / "cells.csv"
    if cells_csv.is_file():  # the field image of every cell: the group, so validation never splits a field
        rows = _read_semicolon_table(cells_csv, ("ICPR2012Contest_Cell_ID", "Set", "Image", "Cell_class"))
        field_of: dict[tuple[str, str], tuple[str, str, int]] = {}
        for n, row in rows:
            s = row["set"].lower()
            s = "training" if s.startswith("train") else s
            field_of[(s, _id_key(row["icpr2012contest_cell_id"]))] = (row["image"], row["cell_class"], n)
        grouped = []
        for r in records:
            hit = field_of.get(id_of[r.path])
            if hit is None:
                bad.append(
                    BadFile(
                        r.path,
                        f"not listed in {cells_csv} (Set {id_of[r.path][0]!r}, ID {id_of[r.path][1]!r})",
                    )
                )
                continue
            image, cls, n = hit
            try:
                label = map_contest_label(tree, "icpr2012", cls)
            except LabelError as e:
                bad.append(BadFile(f"{cells_csv}:{n}", str(e)))
                continue
            if label != r.codes[0]:
                bad.append(
                    BadFile(
                        f"{cells_csv}:{n}",
                        f"Cell_class {cls!r} contradicts the label of {r.path} ({r.codes[0]})",
                    )
                )
                continue
            grouped.append(ImageRecord(r.path, r.codes, f"image {image}", r.sha256, r.size))
        records = grouped
    else:
        log.info(
            "%s: no cells.csv, so the validation split is carved from training/ by cell, not by field image",
            root,
        )
    resolve_bad_files(root, bad, on_bad_file)
    if not records:
        raise DatasetError(root, bad or [BadFile(str(root), "no usable cells")])
    kept = {r.path for r in records}
    grouping = (
        f"field image of cells.csv ({len({r.group for r in records})} fields)"
        if cells_csv.is_file()
        else "none: no cells.csv, so validation is carved from training/ by cell"
    )
    return ContestData(
        sorted(records, key=lambda r: r.path),
        bad,
        {k: v for k, v in masks.items() if k in kept},
        grouping=grouping,
        official_split={k: v for k, v in official.items() if k in kept},
        intensity={k: v for k, v in intensity.items() if k in kept},
    )


def read_icpr2012(
    root: str | Path,
    tree: Taxonomy,
    csv_path: str | Path | None = None,
    group_column: str | None = None,
    on_bad_file: str = "error",
    check_images: bool = True,
    need_masks: bool | str = "auto",
) -> ContestData:
    """ICPR 2012 (MIVIA) cells: the contest layout (``training/`` + ``test/`` + ``cells.csv``, kept as
    the official split), or cell crops with an ``ID;pattern`` CSV (found under ``root`` when not given).
    Masks (``<ID>_mask.png``) are used when the layout has them (``need_masks="auto"``)."""
    root = Path(root).expanduser()
    if csv_path is None and group_column is None and is_icpr2012_contest_layout(root):
        return _read_icpr2012_contest(root, tree, on_bad_file, check_images, need_masks)
    return _read_contest(
        root, tree, "icpr2012", csv_path, group_column, on_bad_file, check_images, need_masks
    )


def read_i3a2014(
    root: str | Path,
    tree: Taxonomy,
    csv_path: str | Path | None = None,
    group_column: str | None = None,
    on_bad_file: str = "error",
    check_images: bool = True,
    need_masks: bool = True,
    grouping: str = "auto",
    group_min_size: int = 250,
) -> ContestData:
    """I3A / ICPR 2014 Task 1 cells with masks and an ``Image ID,Image class`` CSV.

    Groups: a ``Specimen ID`` (or ``group_column``) column when the CSV has one. Otherwise
    ``grouping=auto``/``steps`` finds specimens as runs of consecutive IDs cut at steps of the
    per-cell median intensity, ``blocks`` as blocks of consecutive IDs, each merged to at least
    ``group_min_size`` cells (:func:`group_i3a_specimens`); ``none`` leaves cells ungrouped (a split
    by cell then leaks specimens). ``ContestData.grouping`` says which was used.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"data.grouping must be one of {GROUPINGS}, got {grouping!r}")
    data = _read_contest(root, tree, "i3a2014", csv_path, group_column, on_bad_file, check_images, need_masks)
    if any(r.group for r in data.records):
        n = len({r.group for r in data.records if r.group})
        data.grouping = f"specimen column of the CSV ({n} groups)"
        if grouping in ("steps", "blocks"):
            log.warning("i3a2014: the CSV names specimens; data.grouping=%s is not used", grouping)
    elif grouping == "none":
        data.grouping = (
            "none: cells are not grouped, so a split by cell puts cells of one specimen in several splits"
        )
        log.warning("i3a2014: %s", data.grouping)
    else:
        data.records, data.grouping = group_i3a_specimens(
            data.records,
            data.masks,
            "steps" if grouping == "auto" else grouping,
            group_min_size,
            mask_digests=data.mask_digests,
        )
    log.info("i3a2014 groups: %s", data.grouping)
    return data
