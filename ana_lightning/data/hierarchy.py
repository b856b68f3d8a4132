"""Targets at any level of the ICAP tree: the datamodule behind the hierarchical (paper) pipeline.

Every record carries one tree label: an AC code (a leaf) or, for contest data whose class names stop
higher up, a level-1 / level-2 node (``nucleolar``, ``cytoplasmic``). :func:`resolve_label` gives the
label's node at a level when the label determines it (``AC-5`` → ``speckled`` → ``nuclear``;
``nucleolar`` → ``nuclear`` at level 1 but nothing at level 3), so one datamodule serves:

- ``level=1`` / ``2`` / ``3``: a softmax target over the nodes of that level present in the data;
- ``parent=<node>``: only the subtree of a level-2 (or level-1) node, e.g. the level-3 model of a group;
- ``level=all``: a ``(N, 3)`` target (level-1, level-2, leaf index; ``-1`` where the label stops
  higher) for the multi-head model;
- ``level=contest`` (contest readers): the contest's own classes as a flat target, in its own names and
  order (ICPR 2012: homogeneous, fine_speckled, coarse_speckled, nucleolar, centromere, cytoplasmatic),
  each mapped to its ICAP node (:meth:`HEp2HierarchyDataModule.class_nodes`) for reports and the tree.

The split is always made over *all* records before ``level``/``parent`` select from it, so the level-1,
level-2 and every level-3 model of one dataset and seed share one split: no image that a level-3 model
trained on is in the level-1 model's test set.

``root=null`` uses the built-in synthetic fields (rendered once, like ``data=synthetic``); ``root`` is a
folder of ``<AC code>/<images>`` (``reader=folder``), or a contest layout (``reader=icpr2012`` /
``i3a2014``, see :mod:`.contest`).
"""

from __future__ import annotations

import csv
import inspect
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..taxonomy import LabelError, Taxonomy
from .contest_labels import CONTESTS, _norm, contest_class_of, contest_classes
from .datamodules import RecordDataModule, RecordDataset, SyntheticDataModule
from .images import BadFile, decode_map
from .masks import MASK_MODES, check_crop_fraction, masked_loader
from .readers import Reader, build_reader
from .records import DatasetError, ImageRecord
from .splits import SPLITS, STYLIZED_MANIFEST, LeakageError, read_stylized_set
from .transforms import build_transform

__all__ = [
    "LEVELS",
    "CLASSES_TABLE",
    "read_contest_classes",
    "leaves_of",
    "resolve_label",
    "label_path",
    "TreeLabelParser",
    "LoaderRecordDataset",
    "HEp2HierarchyDataModule",
]

log = logging.getLogger(__name__)

LEVELS = (1, 2, 3)
#: A contest-level run's table of its classes and their ICAP tree nodes (written by ``write_reports``).
CLASSES_TABLE = "classes.csv"


def read_classes_table(run_dir: str | Path) -> list[dict[str, str]]:
    """A contest-level run's ``classes.csv`` rows (``class``, ``tree_label``, its level-1 and level-2 nodes,
    AC code); empty when the run has none (an AC-code target)."""
    table = Path(run_dir) / CLASSES_TABLE
    if not table.is_file():
        return []
    with open(table, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("class")]


def read_contest_classes(run_dir: str | Path) -> dict[str, str]:
    """A contest-level run's ``classes.csv`` as ``{tree label: contest class}`` (e.g. ``speckled`` ->
    ``Speckled``); empty when the run has none (an AC-code target)."""
    return {r["tree_label"]: r["class"] for r in read_classes_table(run_dir) if r.get("tree_label")}


# The tree helpers live in the taxonomy (the one place that knows the tree); these names stay
# importable from here for older imports.
def leaves_of(tree: Taxonomy, label: str) -> tuple[str, ...]:
    """The AC codes under a tree label (:meth:`Taxonomy.leaves`)."""
    return tree.leaves(label)


def resolve_label(tree: Taxonomy, label: str, level: int) -> str | None:
    """The node of ``label`` at ``level``, or None (:meth:`Taxonomy.resolve`).

    >>> tree = Taxonomy.load()
    >>> resolve_label(tree, "AC-5", 2), resolve_label(tree, "nucleolar", 1), resolve_label(tree, "nucleolar", 3)
    ('speckled', 'nuclear', None)
    """
    return tree.resolve(label, level)


def label_path(tree: Taxonomy, label: str) -> tuple[str | None, str | None, str | None]:
    """``(level-1 node, level-2 node, leaf)`` of a label (:meth:`Taxonomy.label_path`)."""
    return tree.label_path(label)


class TreeLabelParser:
    """Reads manifest labels that may be AC codes or tree nodes (:meth:`Taxonomy.parse_label`)."""

    def __init__(self, tree: Taxonomy):
        self.tree = tree

    def parse_code(self, label: str) -> str:
        return self.tree.parse_label(label)


class LoaderRecordDataset(RecordDataset):
    """A :class:`RecordDataset` whose images come from ``loader(record)`` (e.g. a cell with its mask)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        targets: torch.Tensor,
        transform: Callable[[np.ndarray], Any],
        loader: Callable[[ImageRecord], np.ndarray],
        cache: bool = False,
    ):
        self.loader = loader
        super().__init__(records, targets, transform, cache=False)
        if cache and self.records:
            self._cache = list(decode_map(lambda r: transform.resize(loader(r)), self.records))

    def load(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else self.loader(self.records[i])


class HEp2HierarchyDataModule(RecordDataModule):
    """Level-1, level-2 or leaf targets of the ICAP tree, optionally within one subtree.

    Args (beyond :class:`RecordDataModule`):
        root: the dataset folder; ``null`` = the built-in synthetic fields (rendered into ``cache_dir``).
        level: ``1``, ``2``, ``3`` (leaf codes), ``all`` (the three levels at once, for the multi-head model)
            or ``contest`` (a contest reader's own class names, flat; ``classes.csv`` in the run folder
            ties each to its tree node).
        parent: a level-2 (or level-1) node: keep only its subtree (the level-3 models of the paper).
        reader: ``folder`` (``<root>/<AC code>/<images>``), ``icpr2012`` or ``i3a2014`` (contest layouts),
            built from this config's ``csv`` / ``group_column`` / ``grouping`` / ``group_min_size``; or any
            :class:`~.readers.Reader` given as a ``_target_`` config (see :mod:`.readers`).
        csv: the contest label CSV (default: the one CSV found under ``root``).
        mask: I3A masks: ``apply`` (zero outside the cell), ``channel`` (mask in the blue channel) or ``none``.
        crop_fraction: re-cut every cell that has a mask so the mask's bounding box spans this fraction
            of the (square) crop side before resizing (see :func:`~.masks.recrop`): one framing for
            cells of any dataset or cutter (I3A's own crops are ~0.70, tight boxes 1.0); null = the
            crops as given. ``ana-eval`` and ``ana-predict`` re-cut the same way.
        group_column: contest CSV column holding the field / specimen (default: detected by name).
        grouping: I3A cells without a specimen column: ``auto``/``steps`` (runs of consecutive IDs cut
            at intensity steps), ``blocks`` (blocks of consecutive IDs) or ``none`` (see
            :func:`~.contest.read_i3a2014`); the run folder's ``grouping.txt`` says which was used.
        group_min_size: the fewest cells in such a group (a class smaller than 5× this gets groups
            of a fifth of its cells).
        group_level: ``reader=folder``: the split group of an image in a sub-folder of its class folder
            (``auto``: that sub-folder's name, e.g. a patient, slide or field; a folder depth; ``none``).
        cache_dir, n_per_class, render_size, render_seed, dapi: the synthetic fields (``root=null``).
        classes: the classes of ``level`` to keep (AC codes at level 3, node names at levels 1 and 2).
        synthetic_train: synthetic cells added to the **training split only** (never validation or
            test), e.g. ``{n_per_class: 400}``; null = none. Keys: ``n_per_class``, ``cells_per_field``
            (cells cut from one rendered field, i.e. one synthetic specimen), ``intermediate_fraction``,
            ``color``, ``render_seed``, ``class_set`` (see
            :func:`~ana_lightning.data.synthetic.writers.generate_cell_dataset`) and ``cache_dir``
            (rendered once there and reused). Read with the ``i3a2014`` reader; cells whose class is
            not a class of this run are left out.
    """

    def __init__(
        self,
        root: str | None = None,
        level: int | str = 3,
        parent: str | None = None,
        reader: str | Mapping[str, Any] | Reader = "folder",
        csv: str | None = None,
        mask: str = "apply",
        crop_fraction: float | None = None,
        group_column: str | None = None,
        grouping: str = "auto",
        group_min_size: int = 250,
        group_level: str | int | None = "auto",
        cache_dir: str = "data/synthetic",
        n_per_class: int = 60,
        render_size: int = 256,
        render_seed: int = 0,
        dapi: bool = False,
        synthetic_train: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.synthetic_train = self._synthetic_settings(synthetic_train)
        self.level: int | str = level if level in ("all", "contest") else int(level)
        if self.level not in (*LEVELS, "all", "contest"):
            raise ValueError(f"data.level must be 1, 2, 3, all or contest, got {level!r}")
        # data.reader: a registered name (built with this config's csv / group_column / grouping /
        # group_min_size) or a Reader built from a _target_ config (see .readers).
        self.layout_reader = build_reader(
            reader,
            csv=csv,
            group_column=group_column,
            grouping=grouping,
            group_min_size=group_min_size,
            group_level=group_level,
        )
        if not isinstance(reader, str):  # kept as its config, so a checkpoint's data settings rebuild it
            self.hparams["reader"] = self.layout_reader.config()
        reader = self.layout_reader.name or type(self.layout_reader).__name__
        contest = self.layout_reader.contest
        if self.level == "contest" and contest is None:
            raise ValueError(
                f"data.level=contest (the contest's own classes) needs a contest reader "
                f"({', '.join(CONTESTS)}), got data.reader={reader!r}"
            )
        if self.level == "contest" and parent is not None:
            raise ValueError("data.level=contest takes no data.parent")
        # level=contest: the contest's class names (flat, its own order) → tree label, and back (one name per label)
        self.contest_classes: dict[str, str] = (
            contest_classes(self.tree, contest) if self.level == "contest" else {}
        )
        self._contest_of: dict[str, str] = (
            contest_class_of(self.tree, contest) if self.level == "contest" else {}
        )
        if mask not in MASK_MODES:
            raise ValueError(f"data.mask must be one of {MASK_MODES}, got {mask!r}")
        self.parent = parent
        if parent is not None:
            self._check_parent(parent)
        self.reader, self.csv, self.mask, self.group_column = reader, csv, mask, group_column
        self.crop_fraction = check_crop_fraction(crop_fraction)
        self.grouping_method, self.group_min_size = grouping, int(group_min_size)
        self.masks: dict[str, str] = {}
        self._class_names: list[str] | None = None
        self.level_names: dict[int, list[str]] = {}
        self.all_splits: dict[str, list[ImageRecord]] = {}
        self._synthetic: SyntheticDataModule | None = None
        if root:
            self._root = Path(root).expanduser()
        elif reader != "folder":
            raise ValueError(f"data.reader={reader} needs data.root=<the {reader} folder>")
        else:
            # Always the whole tree (classes/parent only select): every level, group and evaluation of
            # one setting then reads the same files, so their split manifests fit each other.
            self._synthetic = SyntheticDataModule(
                cache_dir=cache_dir,
                n_per_class=n_per_class,
                render_size=render_size,
                render_seed=render_seed,
                dapi=dapi,
                classes=None,
                tree=self.hparams.tree,
                image_size=self.hparams.image_size,
            )
            self._root = self._synthetic.root

    # -------------------------------------------------------------- checks
    @staticmethod
    def _synthetic_settings(given: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``data.synthetic_train`` checked (by :func:`~.synthetic.datamodule.rendered_cells_folder`, which
        takes the same keys) and completed with its defaults; None when off."""
        if not given:
            return None
        if not isinstance(given, Mapping):
            raise ValueError(
                f"data.synthetic_train must be a mapping such as {{n_per_class: 400}} or null, got {given!r}"
            )
        from .synthetic.datamodule import rendered_cells_folder

        known = [k for k in inspect.signature(rendered_cells_folder).parameters if k != "what"]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"data.synthetic_train: unknown key(s) {unknown} (known: {known})")
        out = {"n_per_class": 400, "cache_dir": "data/synthetic_cells"}
        out.update({k: v for k, v in given.items() if v is not None})
        rendered_cells_folder(**out, what="data.synthetic_train")  # checks the values now, not at render time
        return out

    def _synthetic_folder(self) -> Path:
        from .synthetic.datamodule import rendered_cells_folder

        return rendered_cells_folder(**self.synthetic_train)

    def _synthetic_train_records(self) -> list[ImageRecord]:
        """The synthetic training cells of ``data.synthetic_train`` (rendered by :meth:`prepare_data`)."""
        folder = self._synthetic_folder()
        data = build_reader("i3a2014").read(folder, self.tree, on_bad_file="error", masks=self.uses_masks)
        return self._training_only(
            data, "synthetic", f"data.synthetic_train ({folder})", "; set data.synthetic_train.class_set"
        )

    def _training_only(self, data, prefix: str, what: str, hint: str = "") -> list[ImageRecord]:
        """The records of ``data`` (a :class:`~.readers.Reader`'s read) that join the training split only: those of
        this run's classes, their masks kept, their groups named ``<prefix>:<group>`` apart from the run's own (so
        no report mistakes an added specimen for one of ``data.root``'s); none of them is an error naming ``what``."""
        self.masks.update(data.masks)
        kept = [
            replace(r, group=f"{prefix}:{r.group or Path(r.path).name}")
            for r in data.records
            if self._selected(r)
        ]
        if not kept:
            raise ValueError(
                f"{what}: none of its {len(data.records)} image(s) has a class of this run "
                f"({', '.join(self.class_names)}){hint}"
            )
        left = Counter(r.codes[0] for r in data.records) - Counter(r.codes[0] for r in kept)
        log.info(
            "%s: %d image(s) of %d group(s) added to the training split only%s",
            what,
            len(kept),
            len({r.group for r in kept}),
            f" ({sum(left.values())} of other classes left out: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(left.items()))
            + ")"
            if left
            else "",
        )
        return kept

    def _extra_train_records(self, folder: Path, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """``data.extra_train``: a stylized set (ana-stylize; refused when made from val/test images), or a folder
        in this run's own layout (e.g. cells cut from a lab's labelled fields), read with the run's reader and
        settings and added to the **training split only**; an image identical to one of the validation or test
        split is refused, images of classes this run does not have are left out (said in the log)."""
        if (folder / STYLIZED_MANIFEST).is_file():
            extra = read_stylized_set(
                folder, self.all_splits, self.tree, all_records=records, on_bad_file=self.hparams.on_bad_file
            )
            kept = [r for r in extra if self._selected(r)]
            log.info("extra_train: %d stylized image(s) added to the training split", len(kept))
            return kept
        if not folder.is_dir():
            raise FileNotFoundError(
                f"data.extra_train={folder}: no such folder (a folder of images in this run's layout, "
                f"data.reader={self.reader}, or a stylized set made with ana-stylize output=<folder>)"
            )
        if folder.resolve() == self.root.resolve():
            raise ValueError(f"data.extra_train={folder} is data.root itself: its images are already split")
        settings = {k: v for k, v in self.layout_reader.config().items() if k not in ("csv", "group_column")}
        data = build_reader(settings).read(
            folder, self.tree, on_bad_file=self.hparams.on_bad_file, masks=self.uses_masks
        )
        held = {r.sha256: (s, r) for s in ("val", "test") for r in self.all_splits.get(s, []) if r.sha256}
        leaks = [
            f"{r.path}: the same image as {held[r.sha256][1].path} ({held[r.sha256][0]} split)"
            for r in data.records
            if r.sha256 in held
        ]
        if leaks:
            raise LeakageError(
                f"data.extra_train={folder} holds {len(leaks)} image(s) that this run holds out for validation or "
                "testing:\n  " + "\n  ".join(leaks[:20])
            )
        return self._training_only(data, "extra", f"data.extra_train={folder}")

    def _check_parent(self, parent: str) -> None:
        try:
            leaves = self.tree.children(parent)
        except LabelError:
            raise ValueError(
                f"data.parent={parent!r} is not a level-1 or level-2 node of the tree "
                f"(level-2 nodes: {list(self.tree.nodes(2))})"
            ) from None
        target = 3 if self.level == "all" else self.level
        if len({self.tree.level_of(c, target) for c in leaves}) < 2:
            raise ValueError(
                f"data.parent={parent!r} has a single level-{target} class: nothing to classify below it"
            )

    def _canon(self, name: str) -> str:
        """A class name of this level, checked against the tree (or the contest's class list)."""
        if self.level == "contest":
            found = next((c for c in self.contest_classes if _norm(c) == _norm(name)), None)
            if found is None:
                raise LabelError(
                    f"{name!r} is not a {self.reader} class (classes: {list(self.contest_classes)})"
                )
            return found
        lv = 3 if self.level == "all" else self.level
        if lv == 3:
            if not self.tree.is_code(name):
                at = [k for k in (1, 2) if name in self.tree.nodes(k)]
                if at:  # e.g. ana-eval of a level-1 checkpoint without data.level=1
                    raise LabelError(
                        f"class {name!r} is a level-{at[-1]} node, not an AC code: set data.level={at[-1]}"
                    )
            return self.tree.parse_code(name)
        if name not in self.tree.nodes(lv):
            raise LabelError(
                f"{name!r} is not a level-{lv} node of the tree (nodes: {list(self.tree.nodes(lv))})"
            )
        return name

    # -------------------------------------------------------------- reading
    @property
    def root(self) -> Path:
        return self._root

    def manifest_label_parser(self) -> TreeLabelParser:
        return TreeLabelParser(self.tree)

    def prepare_data(self) -> None:
        if self._synthetic is not None:
            self._synthetic.prepare_data()
        if self.synthetic_train:
            from .synthetic.datamodule import render_cells_once

            render_cells_once(**self.synthetic_train)

    def read_records(self) -> tuple[list[ImageRecord], list[BadFile]]:
        data = self.layout_reader.read(
            self.root, self.tree, on_bad_file=self.hparams.on_bad_file, masks=self.uses_masks
        )
        self.masks = data.masks
        if self.uses_masks and not self.masks and data.records and self.layout_reader.contest:
            log.warning(
                "%s: no cell masks found, so data.mask=%s and data.crop_fraction=%s have no effect: the cells "
                "are used as cut (masks: <ID>_mask.png beside each cell)",
                self.root,
                self.mask,
                self.crop_fraction,
            )
        self.grouping = data.grouping
        self.official_split = data.official_split
        if self.official_split:
            log.info(
                "%s: the layout's own split is kept (%s); validation is carved from its training set",
                self.root,
                ", ".join(f"{k}: {v}" for k, v in sorted(Counter(self.official_split.values()).items())),
            )
        return data.records, data.bad

    # -------------------------------------------------------------- labels
    def resolve(self, record: ImageRecord, level: int | str) -> str | None:
        """The node of a record at ``level`` (None when its label stops higher up); at
        ``level="contest"`` its contest class name."""
        if len(record.codes) != 1:
            raise DatasetError(
                self.root,
                [
                    BadFile(
                        record.path,
                        f"{len(record.codes)} labels {record.codes}: the "
                        "hierarchy datamodule takes single-label images",
                    )
                ],
            )
        if level == "contest":
            return self._contest_of.get(record.codes[0])
        return self.tree.resolve(record.codes[0], level)

    def _selected(self, r: ImageRecord) -> bool:
        label = r.codes[0]
        if self.parent is not None and not set(self.tree.leaves(label)) <= set(
            self.tree.children(self.parent)
        ):
            return False
        if self.level == "all":
            return True
        if self.level == "contest":
            return label in self._contest_of and (
                not self.requested_classes or self._contest_of[label] in self._requested
            )
        node = self.resolve(r, self.level)
        if node is None:
            return False
        return not self.requested_classes or node in self._requested

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.prepare_data()
        records, self.bad_files = self.read_records()
        for r in records:
            self.resolve(r, 1)  # single-label check, naming the file
        self._requested = {self._canon(c) for c in self.requested_classes or []}
        self.find_near_duplicates(records)
        if self.hparams.split_manifest:
            self.all_splits = self._splits_from_manifest(records, self.hparams.split_manifest)
        else:
            self.all_splits = self.split(records)
            self.check_split_sizes(records, self.all_splits)
        self.splits = {s: [r for r in self.all_splits[s] if self._selected(r)] for s in SPLITS}
        self.check_split_overlap()
        kept = [r for s in SPLITS for r in self.splits[s]]
        if not kept:
            raise DatasetError(
                self.root,
                [
                    BadFile(
                        str(self.root),
                        f"no image has a level-{self.level} label"
                        f"{f' under {self.parent!r}' if self.parent else ''}",
                    )
                ],
            )
        dropped = Counter(r.codes[0] for r in records) - Counter(r.codes[0] for r in kept)
        if dropped:
            log.info(
                "level %s%s: %d image(s) left out (%s)",
                self.level,
                f", parent {self.parent!r}" if self.parent else "",
                sum(dropped.values()),
                ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())),
            )
        leaves = {c for r in kept for c in self.tree.leaves(r.codes[0])}
        self.taxonomy = self.tree.subset(leaves)
        for lv in LEVELS:
            present = {self.resolve(r, lv) for r in kept} - {None}
            self.level_names[lv] = [n for n in self.tree.nodes(lv) if n in present]
        if self.level == "all":
            self._class_names = self.level_names[3]
        elif self.level == "contest":
            present = {self.resolve(r, "contest") for r in kept}
            wanted = self._requested if self.requested_classes else present
            self._class_names = [c for c in self.contest_classes if c in wanted]
            log.info(
                "contest classes → tree: %s",
                ", ".join(f"{c} → {self.contest_classes[c]}" for c in self._class_names),
            )
        elif self.requested_classes:
            self._class_names = [n for n in self.tree.nodes(self.level) if n in self._requested]
        else:
            self._class_names = self.level_names[self.level]
        for s in SPLITS:
            log.info("%s: %d images", s, len(self.splits[s]))
            missing = (
                [
                    c
                    for c in self._class_names
                    if self.splits[s] and not any(self.resolve(r, self.level) == c for r in self.splits[s])
                ]
                if self.level not in ("all",)
                else []
            )
            # its MCA then averages over fewer classes (or counts the absent ones as 0); not said when every
            # split is read as one (ana-eval split=all), where the splits are not what is scored
            if missing and self.checks_splits:
                grouped = any(r.group for r in self.splits[s])
                log.warning(
                    "the %s split has no image of %s: too few %s per class for these split fractions (see "
                    "data.split_fractions%s)",
                    s,
                    ", ".join(missing),
                    "groups" if grouped else "images",
                    ", data.group_min_size" if grouped and str(self.reader) in CONTESTS else "",
                )
        if self.hparams.get("extra_train"):
            self.extra_train_records = self._extra_train_records(
                Path(self.hparams.extra_train).expanduser(), records
            )
        if self.synthetic_train:
            self.extra_train_records = [*self.extra_train_records, *self._synthetic_train_records()]

    def write_reports(self, out_dir: str | Path) -> None:
        super().write_reports(out_dir)
        if self.level == "contest" and self._class_names:  # each contest class and its place in the ICAP tree
            with open(Path(out_dir) / CLASSES_TABLE, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["class", "tree_label", "level1", "level2", "code"])
                for c in self._class_names:
                    w.writerow(
                        [
                            c,
                            self.contest_classes[c],
                            *(x or "" for x in self.tree.label_path(self.contest_classes[c])),
                        ]
                    )

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            raise RuntimeError("call datamodule.setup() first: the class list comes from the data")
        return list(self._class_names)

    def level_targets(self, records: Sequence[ImageRecord]) -> torch.Tensor:
        """``(N, 3)`` class indices at levels 1, 2 and 3 (``-1`` where the label stops higher)."""
        out = torch.full((len(records), 3), -1, dtype=torch.long)
        for i, r in enumerate(records):
            for j, lv in enumerate(LEVELS):
                node = self.resolve(r, lv)
                if node is not None and node in self.level_names[lv]:
                    out[i, j] = self.level_names[lv].index(node)
        return out

    def make_targets(self, records: Sequence[ImageRecord]) -> torch.Tensor:
        if self.level == "all":
            return self.level_targets(records)
        names = self.class_names
        if self.level == "contest":
            return torch.tensor(
                [names.index(self._contest_of[r.codes[0]]) for r in records], dtype=torch.long
            )
        return torch.tensor([names.index(self.resolve(r, self.level)) for r in records], dtype=torch.long)

    def class_nodes(self) -> dict[str, str]:
        """Each class → its tree label: the contest class's ICAP node at ``level=contest``, else itself."""
        if self.level == "contest":
            return {c: self.contest_classes[c] for c in self.class_names}
        return {c: c for c in self.class_names}

    def make_dataset(self, records: Sequence[ImageRecord], train: bool = False) -> RecordDataset:
        if not self.masks or not self.uses_masks:
            return super().make_dataset(records, train)
        tf = build_transform(
            self.hparams.image_size, self.train_augment if train else None, self.mean, self.std
        )
        return LoaderRecordDataset(
            records,
            self.make_targets(records),
            tf,
            masked_loader(self.masks, self.mask, self.crop_fraction),
            cache=self.hparams.cache_images,
        )

    @property
    def uses_masks(self) -> bool:
        """Whether the cells' masks are read: to combine with the cell (``mask``) or to re-cut it."""
        return self.mask != "none" or self.crop_fraction is not None

    def state_dict(self) -> dict[str, Any]:
        """The run's data settings (see the base class), and ``cell_masks``: whether its cells came
        with masks that were used. An ICPR 2012 folder has them only sometimes, so a checkpoint must
        say it for ``ana-predict`` to hand the model its cells as in training (fields.mode.training_scale)."""
        return {**super().state_dict(), "cell_masks": bool(self.masks) and self.uses_masks}

    def class_weights(self) -> list[float]:
        """Inverse-frequency weights of this level's classes, from the training images only (the
        training split and what ``extra_train`` / ``synthetic_train`` add to it)."""
        t = self.make_targets(self.splits["train"] + self.extra_train_records)
        t = t[:, 2] if t.ndim == 2 else t
        counts = Counter(int(i) for i in t if i >= 0)
        n, k = sum(counts.values()), self.num_classes
        return [n / (k * counts[i]) if counts[i] else 0.0 for i in range(k)]

    def model_kwargs(self, loss_weights: bool = True) -> dict[str, Any]:
        kw = super().model_kwargs(loss_weights)
        if self.level == "all":
            kw["level1_names"], kw["level2_names"] = list(self.level_names[1]), list(self.level_names[2])
        return kw
