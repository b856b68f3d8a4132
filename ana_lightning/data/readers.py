"""Dataset layouts → records: one reader class per layout, chosen by ``data.reader``.

A reader turns a dataset folder into :class:`~.records.ImageRecord` s and, for cell layouts, each
cell's mask, how the cells were grouped and the layout's own split (a :class:`~.contest.ContestData`).
``data.reader`` is either

- a registered name (:data:`READERS`: ``folder``, ``icpr2012``, ``i3a2014``), built with the keys of
  the ``data`` config that its constructor takes (``csv``, ``group_column``, ``grouping``,
  ``group_min_size``, ``group_level``), exactly as before readers were classes; or
- a config with ``_target_`` naming any :class:`Reader` class, whose other keys are its constructor
  arguments (Hydra builds it with ``hydra.utils.instantiate``)::

      data:
        reader:
          _target_: ana_lightning.data.readers.I3A2014Reader
          grouping: blocks
          group_min_size: 100

A new layout is one class with a ``read`` method; give it a ``name`` and add it to :data:`READERS`
to select it as ``data.reader=<name>``.

>>> build_reader("i3a2014", csv=None, grouping="blocks", mask="apply").config()["grouping"]
'blocks'
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..taxonomy import Taxonomy
from .contest import GROUPINGS, ContestData, read_i3a2014, read_icpr2012
from .records import folder_grouping, parse_group_level, read_single_label_folder

__all__ = [
    "Reader",
    "FolderReader",
    "ICPR2012Reader",
    "I3A2014Reader",
    "READERS",
    "build_reader",
    "reader_class",
]


class Reader:
    """A dataset layout. Subclasses set ``name`` (the ``data.reader`` name, if registered), ``contest``
    (the contest whose class names the labels are, for ``data.level=contest``; None when the labels are
    tree labels) and implement :meth:`read`; constructor arguments are the layout's settings."""

    name: ClassVar[str] = ""
    contest: ClassVar[str | None] = None

    def read(self, root: Path, tree: Taxonomy, on_bad_file: str = "error", masks: bool = True) -> ContestData:
        """Records under ``root`` (labels checked against ``tree``); ``masks``: the datamodule uses
        cell masks (``data.mask`` is not ``none``), so a layout with masks must find one per cell."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """``{"_target_": <this class>, <constructor argument>: <value>, …}``: what rebuilds this reader
        (kept in the run's data settings, so ``ana-eval`` reads the data the same way)."""
        cls = type(self)
        args = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **{a: getattr(self, a) for a in args}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "_target_")
        return f"{type(self).__name__}({args})"


class FolderReader(Reader):
    """``<root>/<AC code>/<images>`` (:func:`~.records.read_single_label_folder`).

    Args:
        group_level: the split group of an image in a sub-folder of its class folder (``data.group_level``):
            ``auto`` (that sub-folder's name: a patient, slide or field), a folder depth or ``none``.
    """

    name = "folder"

    def __init__(self, group_level: str | int | None = "auto"):
        self.group_level = parse_group_level(group_level)

    def read(self, root: Path, tree: Taxonomy, on_bad_file: str = "error", masks: bool = True) -> ContestData:
        records, bad = read_single_label_folder(
            root, tree, on_bad_file=on_bad_file, group_level=self.group_level
        )
        return ContestData(records, bad, {}, grouping=folder_grouping(records, self.group_level))


class ICPR2012Reader(Reader):
    """ICPR 2012 (MIVIA) cells (:func:`~.contest.read_icpr2012`): the contest layout, or cell crops
    with an ``ID;pattern`` CSV.

    Args:
        csv: the label CSV (default: the one CSV found under the root).
        group_column: the CSV column naming the field (default: detected by name).
    """

    name = "icpr2012"
    contest = "icpr2012"

    def __init__(self, csv: str | None = None, group_column: str | None = None):
        self.csv, self.group_column = csv, group_column

    def read(self, root: Path, tree: Taxonomy, on_bad_file: str = "error", masks: bool = True) -> ContestData:
        return read_icpr2012(
            root,
            tree,
            csv_path=self.csv,
            group_column=self.group_column,
            on_bad_file=on_bad_file,
            need_masks="auto" if masks else False,
        )


class I3A2014Reader(Reader):
    """I3A / ICPR 2014 Task 1 cells with masks (:func:`~.contest.read_i3a2014`).

    Args:
        csv: the ``Image ID,Image class`` CSV (default: the one CSV found under the root).
        group_column: the CSV column naming the specimen (default: detected by name).
        grouping: cells without a specimen column: ``auto``/``steps``, ``blocks`` or ``none``.
        group_min_size: the fewest cells in such a group.
    """

    name = "i3a2014"
    contest = "i3a2014"

    def __init__(
        self,
        csv: str | None = None,
        group_column: str | None = None,
        grouping: str = "auto",
        group_min_size: int = 250,
    ):
        if grouping not in GROUPINGS:
            raise ValueError(f"data.grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.csv, self.group_column = csv, group_column
        self.grouping, self.group_min_size = grouping, int(group_min_size)

    def read(self, root: Path, tree: Taxonomy, on_bad_file: str = "error", masks: bool = True) -> ContestData:
        return read_i3a2014(
            root,
            tree,
            csv_path=self.csv,
            group_column=self.group_column,
            on_bad_file=on_bad_file,
            need_masks=masks,
            grouping=self.grouping,
            group_min_size=self.group_min_size,
        )


#: ``data.reader=<name>`` → the reader class it builds.
READERS: dict[str, type[Reader]] = {r.name: r for r in (FolderReader, ICPR2012Reader, I3A2014Reader)}


def build_reader(reader: str | Mapping[str, Any] | Reader, **settings: Any) -> Reader:
    """The reader ``data.reader`` names.

    A name of :data:`READERS` is built with those ``settings`` (the datamodule's own keys) that its
    constructor takes; a mapping with ``_target_`` is built by ``hydra.utils.instantiate`` (its keys
    are the constructor's arguments); a :class:`Reader` (what Hydra made of such a config) is used as is.
    """
    if isinstance(reader, Reader):
        return reader
    if isinstance(reader, Mapping) or hasattr(reader, "keys"):
        if "_target_" not in reader:
            raise ValueError(
                f"data.reader: a reader config needs _target_ (a Reader class), got {dict(reader)!r}"
            )
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        try:
            built = instantiate(reader)
        except InstantiationException as e:
            raise (e.__cause__ or e) from None  # the reader's own message (e.g. a bad grouping)
        if not isinstance(built, Reader):
            raise TypeError(
                f"data.reader._target_={reader['_target_']} is not a Reader class (got {type(built).__name__})"
            )
        return built
    cls = READERS.get(str(reader))
    if cls is None:
        raise ValueError(
            f"data.reader must be one of {tuple(READERS)} or a config with _target_, got {reader!r}"
        )
    takes = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in settings.items() if k in takes})


def reader_class(reader: Any) -> type[Reader] | None:
    """The :class:`Reader` class a ``data.reader`` setting names (a registered name, a config with
    ``_target_``, or a reader), without building it; ``None`` when it names none that can be imported
    here (a checkpoint from elsewhere).

    >>> reader_class({"_target_": "ana_lightning.data.readers.I3A2014Reader", "grouping": "blocks"}).contest
    'i3a2014'
    >>> reader_class("folder").contest is None
    True
    """
    if isinstance(reader, Reader):
        return type(reader)
    if isinstance(reader, Mapping) or hasattr(reader, "keys"):
        target = reader.get("_target_") if hasattr(reader, "get") else None
        if not target:
            return None
        try:
            from hydra.utils import get_class

            cls = get_class(str(target))
        except Exception:  # noqa: BLE001 - not importable here: the caller decides what that means
            return None
        return cls if isinstance(cls, type) and issubclass(cls, Reader) else None
    return READERS.get(str(reader)) if reader else None
