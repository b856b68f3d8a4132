"""Image records and the readers that make them.

Every dataset layout is read into the same thing: a list of :class:`ImageRecord` — path, the AC
codes it shows, an optional group (patient / slide / specimen) and the sha256 of its bytes. Splits,
targets, datasets and reports all work on records, so a new layout is one reader.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..taxonomy import LabelError, Taxonomy
from .images import (
    BadFile,
    BadImageError,
    decode_map,
    format_bad_files,
    is_ignored,
    is_image_path,
    is_within,
    not_an_image,
    read_and_hash,
    walk_files,
)

__all__ = [
    "ImageRecord",
    "DatasetError",
    "read_csv_rows",
    "read_single_label_folder",
    "parse_group_level",
    "folder_group",
    "folder_grouping",
    "scan_images",
    "read_table_text",
    "resolve_bad_files",
]


def read_table_text(path: str | Path, what: str = "CSV", errors: str = "strict") -> str:
    """The text of a user's table file: UTF-8, with or without the byte-order mark that Excel's 'CSV
    UTF-8' writes, or UTF-16 with its byte-order mark (Excel's 'Unicode Text'). Another encoding is a
    ValueError naming the file (``what`` says which), unless ``errors="replace"``."""
    data = Path(path).read_bytes()
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as 'CSV UTF-8'"
        ) from None


def read_csv_rows(path: str | Path, what: str = "CSV") -> list[list[str]]:
    """Every row of a user's CSV file (header first), read as :func:`read_table_text` says."""
    return list(csv.reader(io.StringIO(read_table_text(path, what), newline="")))


@dataclass(frozen=True)
class ImageRecord:
    """One image: where it is, what it shows, who it belongs to, and its content hash."""

    path: str
    codes: tuple[str, ...]
    group: str | None = None
    sha256: str = ""
    size: tuple[int, int] | None = field(default=None, compare=False)  # (height, width) when known

    @property
    def label(self) -> str:
        """The single code of a single-label record (error if it has several)."""
        if len(self.codes) != 1:
            raise ValueError(f"{self.path} has {len(self.codes)} labels {self.codes}, expected one")
        return self.codes[0]


class DatasetError(ValueError):
    """A dataset folder with bad entries; ``bad`` lists every offending path and why."""

    def __init__(self, root: str | Path, bad: Sequence[BadFile], hint: str = ""):
        self.root, self.bad = str(root), list(bad)
        msg = f"{len(self.bad)} problem(s) in dataset {root}:\n{format_bad_files(self.bad)}"
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


#: A file changed this recently may change again within the file system's clock tick without its size or
#: times moving: its scan is not kept (git's "racily clean" rule).
_SCAN_RACY_S = 2.0
_SCAN_VERSION = "scan-v1"


def _stat_key(st: os.stat_result) -> list[int]:
    """What says a file is unchanged: size, modification and change times (ns) and inode. Any write moves
    the change time, which no tool can set back."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class _ScanCache:
    """What :func:`scan_images` found for files that have not changed since: their sha256 and size, in one
    JSON file per list of paths under ``<cache dir>/scans/`` (keyed also on how files are read now:
    the bit depth and channel order, which decide whether a file is good). Only good files are kept, and
    only files last changed more than two seconds before the scan; a cache that cannot be read or written
    only makes the scan slower."""

    def __init__(self, paths: Sequence[str], masks: frozenset[str], cache_dir: str | Path | None):
        import hashlib
        import time

        from .cache import default_cache_dir
        from .images import read_settings

        h = hashlib.sha256(f"{_SCAN_VERSION}|{read_settings()}".encode())
        for p in sorted(paths):
            h.update(f"{p}|{int(p in masks)}\n".encode())
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.path = root / "scans" / f"{h.hexdigest()[:24]}.json"
        self.started = time.time_ns()
        self.entries: dict[str, list] = {}
        self.new: dict[str, list] = {}
        try:
            self.entries = json.loads(self.path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def get(self, path: str) -> tuple[str, tuple[int, int]] | None:
        entry = self.entries.get(path)
        if not entry:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if entry[:4] != _stat_key(st):
            return None
        self.new[path] = entry
        return entry[4], (int(entry[5]), int(entry[6]))

    def put(self, path: str, digest: str, shape: tuple[int, int]) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if max(st.st_mtime_ns, st.st_ctime_ns) < self.started - int(_SCAN_RACY_S * 1e9):
            self.new[path] = [*_stat_key(st), digest, int(shape[0]), int(shape[1])]

    def save(self) -> None:
        if self.new == self.entries:
            return
        from .synthetic.files import atomic_write

        try:
            atomic_write(self.path, json.dumps({"version": _SCAN_VERSION, "files": self.new}).encode())
        except OSError as e:  # a read-only or full cache folder: only slower next time
            logging.getLogger(__name__).debug("scan cache %s not written: %s", self.path, e)


def _scan_one(item: tuple[Path, bool]) -> tuple[str, tuple[str, tuple[int, int]] | None, BadFile | None]:
    """One file of :func:`scan_images` (``(path, is a mask)``): ``(path, (sha256, (h, w)) or None, bad or None)``."""
    file, is_mask = item
    path = str(file)
    try:
        img, digest = read_and_hash(file, camera=not is_mask)
    except BadImageError as e:
        return path, None, BadFile(path, e.reason)
    if is_mask and not img.any():
        return path, None, BadFile(path, "an empty mask (every pixel 0): it marks no cell")
    return path, (digest, tuple(img.shape[:2])), None


def scan_images(
    paths: Sequence[Path],
    workers: int | None = None,
    progress: Callable | None = None,
    masks: Collection[str] = (),
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, tuple[str, tuple[int, int]]], list[BadFile]]:
    """Decode every file once (catching truncated / unreadable ones) and hash its bytes.

    Returns ``{path: (sha256, (h, w))}`` for the good files and the list of bad ones. The paths in
    ``masks`` are cell masks (read as :func:`~.images.load_image` reads a mask: any non-zero pixel
    marks the cell): one that marks no pixel is a bad file. Many files are read in worker processes
    (:func:`~.images.decode_map`; ``workers``: the threads used for few). With ``cache`` a file found
    good before and unchanged since (size, times and inode) is not decoded again (:class:`_ScanCache`, in
    ``cache_dir``, default :func:`~.cache.default_cache_dir`): a run over a folder of large fields starts
    in seconds the second time. A bad file is always read again.
    """
    good: dict[str, tuple[str, tuple[int, int]]] = {}
    bad: list[BadFile] = []
    masks = frozenset(masks)
    known = _ScanCache([str(p) for p in paths], masks, cache_dir) if cache else None

    found = {str(p): known.get(str(p)) for p in paths} if known is not None else {}
    todo = [p for p in paths if found.get(str(p)) is None]
    if progress is not None:
        for _ in range(len(paths) - len(todo)):
            progress()
    results: dict[str, tuple] = {}
    items = [(p, str(p) in masks) for p in todo]
    for r in decode_map(_scan_one, items, threads=workers, progress=progress):
        results[r[0]] = r
        if known is not None and r[1] is not None:
            known.put(r[0], *r[1])
    for p in paths:  # in the order given
        path, ok, err = results.get(str(p)) or (str(p), found[str(p)], None)
        if err is not None:
            bad.append(err)
        else:
            good[path] = ok
    if known is not None:
        known.save()
    return good, bad


def resolve_bad_files(root: str | Path, bad: Sequence[BadFile], on_bad_file: str, hint: str = "") -> None:
    """Apply the bad-file policy: ``error`` raises listing every path; ``skip`` returns quietly."""
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if bad and on_bad_file == "error":
        raise DatasetError(
            root,
            bad,
            hint
            or "Fix or remove these files, or set data.on_bad_file=skip to skip them "
            "(they are then listed in bad_files.csv in the run folder).",
        )


def _class_folder_links(root: Path, class_dirs: list[Path]) -> dict[Path, str]:
    """The symlinked class folders whose images would be read under a second label, each with the reason:
    a link leading to (or into, or above) the folder of another class folder that is read, or to a folder
    above the dataset (a loop). ``class_dirs``: the class folders that are read (names that are class
    codes). A folder that is not a link is never one of them; where only links lead to the same images,
    none of them is read (which label is right is not known). A link to a folder of the dataset that is not
    read as a class (a hidden store, ``raw/…``) reads it as this class."""
    top = os.path.realpath(root)
    real = {d: os.path.realpath(d) for d in class_dirs}
    out: dict[Path, str] = {}
    for d in class_dirs:
        if not d.is_symlink():
            continue
        if is_within(top, real[d]):
            out[d] = f"a symlink to {real[d]}, a folder above the dataset (a loop)"
            continue
        same = [
            o.name
            for o in class_dirs
            if o != d and (is_within(real[d], real[o]) or is_within(real[o], real[d]))
        ]
        if same:
            out[d] = (
                f"a symlink to {real[d]}, the images of class folder(s) {', '.join(same)} too: one image "
                "is never read under two labels (link each folder of images once)"
            )
    return out


def parse_group_level(group_level: str | int | None) -> str | int | None:
    """``data.group_level`` as ``"auto"``, a folder depth (int) or None (``none``); a bad value is a ValueError."""
    if group_level is None or (isinstance(group_level, str) and group_level.lower() in ("none", "null", "")):
        return None
    if isinstance(group_level, str) and group_level.lower() == "auto":
        return "auto"
    try:
        level = int(group_level)
    except (TypeError, ValueError):
        raise ValueError(
            f"group_level must be 'auto', 'none' or a folder depth (0 = first level), got {group_level!r}"
        ) from None
    if level < 0:
        raise ValueError(f"group_level must be >= 0, got {level}")
    return level


def folder_group(path: str | Path, root: str | Path, group_level: str | int | None) -> str | None:
    """The split group of an image of ``<root>/<AC code>/…`` (``data.group_level``, folder depths counted from
    ``root`` as for hospital exports: 0 is the class folder): ``auto`` (= 1) the *name* of the first sub-folder
    below the class folder, so ``AC-1/patient12/…`` and ``AC-4/patient12/…`` are one group; None for ``none``
    or an image that sits higher.

    >>> folder_group("d/AC-1/patient12/slide2/a.png", "d", "auto"), folder_group("d/AC-1/a.png", "d", "auto")
    ('patient12', None)
    >>> folder_group("d/AC-1/patient12/slide2/a.png", "d", 2)
    'slide2'
    """
    if group_level is None or group_level == "none":
        return None
    depth = 1 if group_level == "auto" else int(group_level)
    parts = Path(path).relative_to(root).parts[:-1]
    return parts[depth] if len(parts) > depth else None


def folder_grouping(records: Sequence[ImageRecord], group_level: str | int | None) -> str:
    """How :func:`read_single_label_folder` grouped ``records``, said for the log and ``grouping.txt``."""
    group_level = parse_group_level(group_level)
    if group_level is None:
        return "none (data.group_level=none): image by image; byte-identical copies and near-duplicates kept together"
    groups = {r.group for r in records if r.group}
    alone = sum(1 for r in records if not r.group)
    where = (
        "the first sub-folder below each class folder"
        if group_level in ("auto", 1)
        else f"the folder at depth {group_level} below data.root (0 = the class folder)"
    )
    if not groups:
        return (
            f"none found: no image is inside {where}, so the split goes image by image (byte-identical copies and "
            "near-duplicates kept together). If several images come from one patient, slide or field, put them "
            "in a sub-folder of their class folder (AC-3/<patient>/...) to keep them in one split"
        )
    return f"the name of {where} ({len(groups)} groups; one name under two class folders is one group)" + (
        f"; {alone} image(s) outside such a folder stand alone" if alone else ""
    )


def read_single_label_folder(
    root: str | Path,
    taxonomy: Taxonomy,
    on_bad_file: str = "error",
    check_images: bool = True,
    progress: Callable | None = None,
    group_level: str | int | None = "auto",
) -> tuple[list[ImageRecord], list[BadFile]]:
    """Read ``<root>/<AC code>/<images>`` into records (natural class order, sorted paths). An image inside a
    sub-folder of its class folder (``AC-3/patient12/…``) gets that folder's name as its split group
    (``group_level``, see :func:`folder_group`), so a patient's, slide's or field's images share a split.

    Bad input — a sub-folder whose name is not an AC code of ``taxonomy``, an empty class folder, a
    file that is not an image, an unreadable or truncated image — raises :class:`DatasetError`
    listing every offending path, or with ``on_bad_file="skip"`` is left out and returned in the
    second list. Hidden files and ``Thumbs.db``-like files are ignored.
    """
    root = Path(root).expanduser()
    level = parse_group_level(group_level)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist (set data.root to a folder of <AC code>/<images>)"
        )
    bad: list[BadFile] = []
    candidates: list[tuple[Path, str, str | None]] = []
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not is_ignored(d)), key=lambda d: d.name)
    if not class_dirs:
        raise DatasetError(
            root, [BadFile(str(root), "no class sub-folders (expected <root>/<AC code>/<images>)")]
        )
    linked: set[str] = set()
    codes: dict[Path, str] = {}
    for d in class_dirs:
        try:
            codes[d] = taxonomy.parse_code(d.name)
        except LabelError as e:
            bad.append(BadFile(str(d), f"folder name is not a class code: {e}"))
    doubled = _class_folder_links(root, list(codes))
    for d, code in codes.items():
        if d in doubled:
            bad.append(BadFile(str(d), doubled[d]))
            continue
        real = os.path.realpath(d)
        if d.is_symlink() and any(is_within(real, s) for s in linked):
            # its folder was read already, through a link inside an earlier class folder
            bad.append(
                BadFile(
                    str(d),
                    f"a symlink to {real}, whose images were read already through a link inside another class "
                    "folder: one image is never read under two labels",
                )
            )
            continue
        # symlinked folders leading outside the dataset followed, each once over all classes
        files = [p for p in walk_files(d, dataset=root, seen=linked) if not is_ignored(p)]
        images = [p for p in files if is_image_path(p)]
        bad += [BadFile(str(p), not_an_image(p)) for p in files if not is_image_path(p)]
        if not images:
            bad.append(BadFile(str(d), "empty class folder (no images)"))
        candidates += [(p, code, folder_group(p, root, level)) for p in images]
    records: list[ImageRecord] = []
    if check_images:
        good, bad_images = scan_images([p for p, _, _ in candidates], progress=progress)
        bad += bad_images
        for p, code, group in candidates:
            if str(p) in good:
                digest, size = good[str(p)]
                records.append(ImageRecord(str(p), (code,), group, digest, size))
    else:
        records = [ImageRecord(str(p), (code,), group) for p, code, group in candidates]
    resolve_bad_files(root, bad, on_bad_file)
    if not records:
        raise DatasetError(root, bad or [BadFile(str(root), "no usable images")])
    records.sort(key=lambda r: (taxonomy.codes.index(r.codes[0]), r.path))
    return records, bad
