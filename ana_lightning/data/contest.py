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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..taxonomy import LabelError, Taxonomy
from .images import BadFile, is_ignored, is_image_path, load_image
from .records import DatasetError, ImageRecord, resolve_bad_files, scan_images

log = logging.getLogger(__name__)

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

log = logging.getLogger(__name__)

#: Reader name (``data.reader``) → key of ``public_datasets`` in the tree YAML.
CONTESTS = {"icpr2012": "ICPR2012_MIVIA", "i3a2014": "I3A_ICPR2014_task1"}
#: How an I3A mask is used: multiplied into the cell, put into the blue channel, or ignored.
MASK_MODES = ("apply", "channel", "none")

_ID_COLUMNS = ("id", "image id", "image_id", "imageid", "cell id", "cell")
_LABEL_COLUMNS = ("pattern", "image class", "image_class", "class", "label")
_GROUP_COLUMNS = ("specimen id", "specimen_id", "specimen", "image", "field", "slide", "patient", "group")
_MASK_NAME = re.compile(r"[_\- ]?mask$", re.IGNORECASE)


def _norm(name: str) -> str:
    """``'Fine Speckled'``, ``'fine-speckled'`` and ``'fine_speckled'`` all become ``'fine_speckled'``."""
    return re.sub(r"[\s_\-]+", "_", str(name).strip()).lower()


def contest_label_map(tree: Taxonomy, contest: str) -> dict[str, str]:
    """Normalised contest class name → tree label (an AC code or a level-1/level-2 node)."""
    key = CONTESTS.get(contest, contest)
    table = tree.public_datasets.get(key)
    if not table:
        raise ValueError(
            f"the class tree {tree.source} has no public_datasets.{key} mapping (known: {sorted(tree.public_datasets)})"
        )
    out = {}
    for name, target in table.items():
        if tree.is_code(target):
            target = tree.parse_code(target)
        else:
            tree.children(target)  # raises LabelError when the node is not in the tree
        out[_norm(name)] = target
    return out


def map_contest_label(tree: Taxonomy, contest: str, name: str) -> str:
    """The tree label of one contest class name (case, spaces, ``_`` and ``-`` do not matter).

    >>> map_contest_label(Taxonomy.load(), "icpr2012", "Fine speckled"), map_contest_label(Taxonomy.load(), "icpr2012", "nucleolar")
    ('AC-4', 'nucleolar')
    """
    table = contest_label_map(tree, contest)
    try:
        return table[_norm(name)]
    except KeyError:
        pass
    # not a contest name: an AC code or a level-2 group (ana-synth --cells --classes codes|level2)
    if tree.is_code(name):
        return tree.parse_code(name)
    nodes = {_norm(n): n for n in tree.nodes(2)}
    if _norm(name) in nodes:
        return nodes[_norm(name)]
    raise LabelError(f"{name!r} is not a {CONTESTS.get(contest, contest)} class (known: {sorted(table)}), "
                     "nor an AC code or a level-2 group of the class tree") from None


def contest_classes(tree: Taxonomy, contest: str) -> dict[str, str]:
    """The contest's class names as it spells them, in its own order → tree label.

    >>> list(contest_classes(Taxonomy.load(), "icpr2012"))[:3]
    ['homogeneous', 'fine_speckled', 'coarse_speckled']
    """
    key = CONTESTS.get(contest, contest)
    mapped = contest_label_map(tree, contest)
    return {str(name): mapped[_norm(name)] for name in tree.public_datasets[key]}


def contest_class_of(tree: Taxonomy, contest: str) -> dict[str, str]:
    """Tree label → the contest class name (the inverse of :func:`contest_classes`; one name per label)."""
    out: dict[str, str] = {}
    for name, label in contest_classes(tree, contest).items():
        if label in out:
            raise ValueError(f"{CONTESTS.get(contest, contest)}: {out[label]!r} and {name!r} both map to {label!r}, "
                             "so the contest classes cannot be a flat target")
        out[label] = name
    return out


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
        [BadFile(str(root), f"{'no' if not found else len(found)} CSV file(s) found "
                            f"({', '.join(p.name for p in found[:5])}); set data.csv=<the label CSV>")],
    )


def _read_rows(path: Path, group_column: str | None) -> list[tuple[int, str, str, str | None]]:
    """``(line, id, class name, group)`` per data row of a contest CSV."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
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
            raise DatasetError(path, [BadFile(f"{path}:{n}", f"expected at least {max(id_col, lab_col) + 1} columns, got {row}")])
        group = row[grp_col].strip() if grp_col is not None and grp_col < len(row) and row[grp_col].strip() else None
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
        raise FileNotFoundError(f"dataset folder {root} does not exist (set data.root to the {contest} folder)")
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
            bad.append(BadFile(where, f"ID {image_id!r} matches several files: {[str(p) for p in images[key]]}"))
            continue
        if key in seen:
            bad.append(BadFile(where, f"ID {image_id!r} is listed twice (first on line {seen[key]})"))
            continue
        seen[key] = line
        path = images[key][0]
        if need_masks:
            mkey = next((k for k in _id_keys(image_id) if k in masks), None)
            if mkey is None:
                bad.append(BadFile(str(path), "no mask file (expected <ID>_Mask.<ext> or masks/<ID>.<ext>); "
                                              "set data.mask=none to use the cell without its mask"))
                continue
            mask_of[str(path)] = str(masks[mkey][0])
        cands.append((path, label, group))
    records: list[ImageRecord] = []
    if check_images:
        to_scan = [p for p, _, _ in cands] + [Path(m) for m in mask_of.values()]
        good, bad_images = scan_images(to_scan)
        bad += bad_images
        for p, label, group in cands:
            m = mask_of.get(str(p))
            if str(p) in good and (m is None or m in good):
                digest, size = good[str(p)]
                records.append(ImageRecord(str(p), (label,), group, digest, size))
    else:
        records = [ImageRecord(str(p), (label,), group) for p, label, group in cands]
    resolve_bad_files(root, bad, on_bad_file)
    if not records:
        raise DatasetError(root, bad or [BadFile(str(table_path), "no usable rows")])
    records.sort(key=lambda r: r.path)
    kept = {r.path for r in records}
    return ContestData(records, bad, {k: v for k, v in mask_of.items() if k in kept})


#: The ICPR 2012 contest layout: set folder → (split, label CSV, intensity CSV).
ICPR2012_SETS = {"training": ("train", "gt_training.csv", "training.csv"), "test": ("test", "gt_test.csv", "test.csv")}
ICPR2012_INTENSITIES = ("positive", "intermediate")


def is_icpr2012_contest_layout(root: str | Path) -> bool:
    """``root`` holds the contest's ``training/`` and ``test/`` folders, each with its ``gt_*.csv``."""
    root = Path(root).expanduser()
    return all((root / folder / gt).is_file() for folder, (_, gt, _) in ICPR2012_SETS.items())


def _read_semicolon_table(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """``(line, {column: value})`` per data row of a ``;``-separated CSV with a header (names compared
    case-insensitively); a missing column or a short row is a :class:`DatasetError` naming the line."""
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
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
        data = _read_contest(root / folder, tree, "icpr2012", root / folder / gt, None, "skip", check_images, need_masks)
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
                    bad.append(BadFile(f"{info_path}:{n}", f"intensity {row['intensity']!r} is not one of {ICPR2012_INTENSITIES}"))
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
                bad.append(BadFile(r.path, f"not listed in {cells_csv} (Set {id_of[r.path][0]!r}, ID {id_of[r.path][1]!r})"))
                continue
            image, cls, n = hit
            try:
                label = map_contest_label(tree, "icpr2012", cls)
            except LabelError as e:
                bad.append(BadFile(f"{cells_csv}:{n}", str(e)))
                continue
            if label != r.codes[0]:
                bad.append(BadFile(f"{cells_csv}:{n}", f"Cell_class {cls!r} contradicts the label of {r.path} ({r.codes[0]})"))
                continue
            grouped.append(ImageRecord(r.path, r.codes, f"image {image}", r.sha256, r.size))
        records = grouped
    else:
        log.info("%s: no cells.csv, so the validation split is carved from training/ by cell, not by field image", root)
    resolve_bad_files(root, bad, on_bad_file)
    if not records:
        raise DatasetError(root, bad or [BadFile(str(root), "no usable cells")])
    kept = {r.path for r in records}
    grouping = (f"field image of cells.csv ({len({r.group for r in records})} fields)" if cells_csv.is_file()
                else "none: no cells.csv, so validation is carved from training/ by cell")
    return ContestData(
        sorted(records, key=lambda r: r.path), bad, {k: v for k, v in masks.items() if k in kept}, grouping=grouping,
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
    return _read_contest(root, tree, "icpr2012", csv_path, group_column, on_bad_file, check_images, need_masks)


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
        data.grouping = "none: cells are not grouped, so a split by cell puts cells of one specimen in several splits"
        log.warning("i3a2014: %s", data.grouping)
    else:
        data.records, data.grouping = group_i3a_specimens(
            data.records, data.masks, "steps" if grouping == "auto" else grouping, group_min_size)
    log.info("i3a2014 groups: %s", data.grouping)
    return data


def apply_mask(image: np.ndarray, mask: np.ndarray, mode: str = "apply") -> np.ndarray:
    """Combine a cell image (``H×W×3 uint8``) with its mask (any image; non-zero = cell).

    ``apply``: pixels outside the mask set to 0; ``channel``: red and green carry the cell, blue the
    mask (255 inside); ``none``: the image unchanged.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    if mode == "none":
        return image
    m = (mask if mask.ndim == 2 else mask.max(axis=2)) > 0
    if m.shape != image.shape[:2]:
        raise ValueError(f"mask of shape {m.shape} does not fit its image of shape {image.shape[:2]}")
    if mode == "apply":
        return image * m[:, :, None].astype(image.dtype)
    out = image.copy()
    out[:, :, 2] = m.astype(np.uint8) * 255
    return out


def masked_loader(masks: dict[str, str], mode: str):
    """A ``record (or path) → H×W×3 uint8`` loader that applies each image's mask (see :func:`apply_mask`)."""

    def load(record: ImageRecord | str) -> np.ndarray:
        path = record.path if isinstance(record, ImageRecord) else str(record)
        image = load_image(path)
        mask_path = masks.get(path)
        if mask_path is None or mode == "none":
            return image
        try:
            return apply_mask(image, load_image(mask_path), mode)
        except ValueError as e:
            raise ValueError(f"{path} with mask {mask_path}: {e}") from None

    return load


# ---------------------------------------------------------------------------------------------- specimen groups
#: How I3A cells are grouped when the CSV names no specimen (``data.grouping``).
GROUPINGS = ("auto", "steps", "blocks", "none")


def _numeric_id(path: str) -> int | None:
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def _runs_to_min_size(runs: list[list[int]], level: list[float], min_size: int) -> list[list[int]]:
    """Merge adjacent runs (lists of positions) until none has fewer than ``min_size`` cells.

    Two small runs side by side are joined before a small run joins a big one (so groups stay near
    ``min_size`` instead of snowballing), and among those the weakest step goes first: the pair whose
    median log-intensities are closest (a weak step is the likeliest to lie inside one specimen)."""
    runs = [list(r) for r in runs if r]
    med = [float(np.median([level[i] for i in r])) for r in runs]
    while len(runs) > 1:
        pairs = [k for k in range(len(runs) - 1) if min(len(runs[k]), len(runs[k + 1])) < min_size]
        if not pairs:
            break
        k = min(pairs, key=lambda k: (max(len(runs[k]), len(runs[k + 1])) >= min_size, abs(med[k] - med[k + 1]), k))
        runs[k] = runs[k] + runs.pop(k + 1)
        med.pop(k + 1)
        med[k] = float(np.median([level[i] for i in runs[k]]))
    return runs


def consecutive_id_groups(
    ids: list[int],
    values: list[float] | None,
    min_size: int = 250,
    window: int = 20,
    step: float = 0.12,
) -> list[int]:
    """Group index of each cell of *one class*, cells given in ID order (see :func:`group_i3a_specimens`).

    A new run starts where the ID sequence has a gap (a missing block: another specimen) and, with
    ``values`` (per-cell median intensity), where the median log-intensity of the ``window`` cells
    before and after a position differs by more than ``step`` (``0.12`` ≈ a 13 % step) (the strongest
    such step within ``window`` cells). Without ``values`` a run is cut into blocks of
    ``min_size`` consecutive IDs. Runs are then merged until each has at least ``min_size`` cells
    (a class smaller than ``min_size`` is one group).

    >>> consecutive_id_groups(list(range(1, 9)) + list(range(20, 24)), [10.0] * 4 + [30.0] * 8, min_size=3, window=2)
    [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    """
    n = len(ids)
    if n == 0:
        return []
    if values is not None and len(values) != n:
        raise ValueError(f"{len(values)} intensities for {n} IDs")
    cuts = {i for i in range(1, n) if ids[i] != ids[i - 1] + 1}
    level = [0.0] * n if values is None else [float(np.log1p(max(v, 0.0))) for v in values]
    if values is not None:
        x = np.asarray(level)
        score, sharp = np.zeros(n), np.zeros(n)
        need = min(window, max(3, window // 4))  # cells on each side before a step is believed
        for i in range(1, n):
            lo, hi = x[max(0, i - window):i], x[i:i + window]
            if min(len(lo), len(hi)) >= need:
                score[i] = abs(float(np.median(lo)) - float(np.median(hi)))  # robust: is there a step?
                sharp[i] = abs(float(lo.mean()) - float(hi.mean()))  # peaks exactly at the step: where?
        taken: list[int] = []  # strongest steps first, at most one per window of cells
        for i in sorted(np.flatnonzero(score > step), key=lambda i: (-score[i], -sharp[i], i)):
            lo, hi = max(1, i - window // 2), min(n, i + window // 2 + 1)
            i = lo + int(np.argmax(sharp[lo:hi]))
            if all(abs(i - j) >= window for j in taken):
                taken.append(i)
        cuts.update(taken)
    bounds = [0, *sorted(cuts), n]
    runs = [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if values is None:  # fixed blocks of min_size consecutive IDs within each gap-free run
        blocks = []
        for r in runs:
            k = max(1, len(r) // min_size)
            blocks += [list(b) for b in np.array_split(r, k)]
        runs = blocks
    runs = _runs_to_min_size(runs, level, min_size)
    out = [0] * n
    for g, r in enumerate(sorted(runs, key=min)):
        for i in r:
            out[i] = g
    return out


def _cell_median(image_path: str, mask_path: str | None) -> float:
    img = load_image(image_path).max(axis=2)
    if mask_path is not None:
        m = load_image(mask_path).max(axis=2) > 0
        if m.shape == img.shape and m.any():
            return float(np.median(img[m]))
    return float(np.median(img))


def group_i3a_specimens(
    records: list[ImageRecord],
    masks: dict[str, str] | None = None,
    method: str = "steps",
    min_size: int = 250,
) -> tuple[list[ImageRecord], str]:
    """Specimen groups for I3A cells whose CSV has no specimen column: ``(records, how)``.

    Within each class, cells are ordered by their numeric ID (the contest numbers cells specimen by
    specimen) and cut into runs of consecutive IDs (:func:`consecutive_id_groups`): ``steps`` cuts at
    ID gaps and at steps of the per-cell median intensity inside the mask; ``blocks`` at ID gaps and
    every ``min_size`` IDs. Runs are merged until each has at least ``min_size`` cells, but never
    below a fifth of its class (so a small class such as Golgi keeps several groups and reaches every
    split): blocks that small could cut a specimen in two, and a cut specimen leaks across splits.
    Groups are named ``<label>#<k>`` (``AC-1#0``, …).
    """
    if method not in ("steps", "blocks"):
        raise ValueError(f"grouping method must be 'steps' or 'blocks', got {method!r}")
    no_id = [r.path for r in records if _numeric_id(r.path) is None]
    if no_id:
        raise ValueError(f"I3A grouping by consecutive IDs needs numeric file names; not numeric: {no_id[:3]}")
    by_label: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_label.setdefault(r.codes[0], []).append(r)
    masks = masks or {}
    new: dict[str, str] = {}
    sizes: list[int] = []
    for label, recs in by_label.items():
        recs = sorted(recs, key=lambda r: _numeric_id(r.path))
        ids = [_numeric_id(r.path) for r in recs]
        values = None
        if method == "steps":
            with ThreadPoolExecutor(4) as pool:
                values = list(pool.map(lambda r: _cell_median(r.path, masks.get(r.path)), recs))
        floor = max(1, min(min_size, len(recs) // 5))
        groups = consecutive_id_groups(ids, values, min_size=floor)
        for r, g in zip(recs, groups, strict=True):
            new[r.path] = f"{label}#{g}"
        sizes += list(np.bincount(groups))
    out = [replace(r, group=new[r.path]) for r in records]
    how = (f"no specimen column: {len(sizes)} groups of consecutive IDs per class "
           f"({'cut at ID gaps and median-intensity steps' if method == 'steps' else 'ID gaps and fixed blocks'}, "
           f"merged to >= min({min_size}, class/5) cells; sizes {min(sizes)}-{max(sizes)}, median {int(np.median(sizes))})")
    return out, how
