"""Multi-label records: hospital folders and CSV label lists (read by :mod:`.hospital`'s datamodules).

A *hospital folder* is an export where the folder names carry the labels::

    <hospital_root>/patient012/AC-1 + AC-4/img_001.png
    <hospital_root>/AC-4 1:160/slide3/img_002.png        (strict=false: the titer is ignored)
    <hospital_root>/ac-29_ac-3/img_003.png

Grammar (parsed by the taxonomy, the only place that reads class names): AC codes separated by
spaces, commas, ``+``, ``&``, ``_`` or ``;``. An image's label comes from the *nearest* ancestor
folder (below the root) whose name holds at least one AC code of the tree; the other folders (a
patient, a slide, a date) are allowed and may serve as the split group. A token of a label folder
that is not an AC code (a titer ``1:160``, a word, a bare number) is an error listing every
offending folder, or with ``strict=False`` is ignored with a logged warning. A bare number is never
read as a class: ``patient12`` is a group, not AC-12.

A CSV (``path,labels[,group]``) is the alternative input; ``labels`` follows the same grammar.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..taxonomy import Taxonomy
from .images import BadFile, is_ignored, is_image_path, not_an_image, walk_folders
from .records import (
    DatasetError,
    ImageRecord,
    parse_group_level,
    read_csv_rows,
    resolve_bad_files,
    scan_images,
)

__all__ = ["read_hospital_folder", "read_labels_csv"]

log = logging.getLogger(__name__)

_STRICT_HINT = (
    "Rename these folders so that they hold AC codes only (e.g. 'AC-1 + AC-4'), or set data.strict=false "
    "to ignore the tokens that are not AC codes (a titer such as 1:160, a word)."
)


_LOOKS_LIKE_CODE = re.compile(r"(?i)ac[-_ ]?\d+")


def _warn_ignored(ignored: dict[str, tuple[str, ...]]) -> None:
    if not ignored:
        return
    items = sorted(ignored.items())
    shown = "; ".join(f"{name!r}: {', '.join(map(repr, toks))}" for name, toks in items[:10])
    more = f" (and {len(items) - 10} more)" if len(items) > 10 else ""
    log.warning(
        "strict=false: ignoring tokens that are not AC codes in %d label(s): %s%s", len(items), shown, more
    )


def read_hospital_folder(
    root: str | Path,
    taxonomy: Taxonomy,
    strict: bool = True,
    group_level: str | int | None = "auto",
    on_bad_file: str = "error",
    check_images: bool = True,
    progress: Callable | None = None,
) -> tuple[list[ImageRecord], list[BadFile]]:
    """Read a hospital folder into multi-label records (see the module docstring for the grammar).

    Args:
        root: the export folder; files directly in it that are not images (a README, a CSV) are ignored.
        taxonomy: the class tree the codes must belong to.
        strict: a label folder with a token that is not an AC code is an error (``False``: ignore it).
        group_level: which folder is the split group: ``"auto"`` (the outermost folder below the
            root that names no AC code, e.g. ``patient012``), a depth (0 = the folders directly below
            the root), or ``None``. The group is that folder's *name*, so ``AC-1/patient12`` and
            ``AC-4/patient12`` are one group.
        on_bad_file: ``error`` lists every unusable file (not an image, truncated, no label folder);
            ``skip`` leaves them out and returns them.

    >>> # read_hospital_folder("exports/", Taxonomy.load())  → ([ImageRecord(path, ('AC-1', 'AC-4'), 'patient012', sha)], [])
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"hospital folder {root} does not exist (set data.hospital_root=<folder of labelled sub-folders>)"
        )
    level = parse_group_level(group_level)
    bad: list[BadFile] = []
    label_problems: dict[str, BadFile] = {}
    ignored: dict[str, tuple[str, ...]] = {}
    resolved: dict[tuple[str, ...], tuple[tuple[str, ...], str | None] | None] = {}
    unlabelled: dict[tuple[str, ...], list[Path]] = {}

    def resolve(parts: tuple[str, ...]) -> tuple[tuple[str, ...], str | None] | None:
        """(codes, group) of a folder (its path parts below root), or None when nothing names a code."""
        if parts in resolved:
            return resolved[parts]
        label_at, codes = None, ()
        for i in range(len(parts) - 1, -1, -1):
            found, other = taxonomy.split_codes(parts[i])
            if found:
                label_at, codes = i, found
                if other:
                    folder = str(root.joinpath(*parts[: i + 1]))
                    if strict:
                        label_problems[folder] = BadFile(
                            folder,
                            f"folder name {parts[i]!r}: {', '.join(map(repr, other))} is not an AC code",
                        )
                    else:
                        ignored[parts[i]] = other
                break
        if label_at is None:
            resolved[parts] = None
            return None
        group = None
        if level == "auto":
            group = next((p for p in parts if not taxonomy.split_codes(p)[0]), None)
        elif isinstance(level, int) and level < len(parts) and level != label_at:
            group = parts[level]
        resolved[parts] = (codes, group)
        return resolved[parts]

    candidates: list[tuple[Path, tuple[str, ...], str | None]] = []
    label_dirs: list[tuple[str, ...]] = []  # folders named by AC codes, to name the empty ones
    for dirpath, _, filenames in walk_folders(root):  # symlinked folders leading outside too, each once
        here = Path(dirpath)
        parts = here.relative_to(root).parts
        if parts and taxonomy.split_codes(parts[-1])[0]:
            label_dirs.append(parts)
        for name in sorted(filenames):
            p = here / name
            if is_ignored(p):
                continue
            if not is_image_path(p):
                if parts:  # notes and CSVs next to the label folders are fine; inside them they are not
                    bad.append(BadFile(str(p), not_an_image(p)))
                continue
            if not parts:
                bad.append(BadFile(str(p), "image directly in the dataset folder: no label folder above it"))
                continue
            res = resolve(parts)
            if res is None:
                unlabelled.setdefault(parts, []).append(p)
                continue
            candidates.append((p, res[0], res[1]))
    rel = [q.relative_to(root).parts for q, _, _ in candidates]
    holding = {r[:k] for r in rel for k in range(1, len(r))}  # every folder above an image
    bad += [  # as the single-label reader reports an empty class folder
        BadFile(str(root.joinpath(*parts)), "empty label folder (no images)")
        for parts in label_dirs
        if parts not in holding
    ]
    for parts, files in unlabelled.items():  # one line per folder, not per image
        outside = [
            t for part in parts for t in taxonomy.split_codes(part)[1] if _LOOKS_LIKE_CODE.fullmatch(t)
        ]
        folder = str(root.joinpath(*parts))
        if outside:
            bad.append(
                BadFile(
                    folder,
                    f"{', '.join(dict.fromkeys(outside))} is not a code of the ICAP tree "
                    f"({taxonomy.codes[0]} … {taxonomy.codes[-1]}): {len(files)} image(s) here have no label",
                )
            )
        else:
            bad.append(
                BadFile(
                    folder,
                    f"no folder between {root} and its {len(files)} image(s) names an AC code of the tree",
                )
            )
    if label_problems:
        raise DatasetError(root, list(label_problems.values()) + bad, _STRICT_HINT)
    return _finish(
        root,
        candidates,
        bad,
        ignored,
        check_images,
        progress,
        on_bad_file,
        "no usable images (expected <root>/[<patient>/]<AC codes>/<images>)",
    )


def _scan(
    candidates: Sequence[tuple[Path, tuple[str, ...], str | None]],
    bad: list[BadFile],
    check_images: bool,
    progress,
) -> list[ImageRecord]:
    if not check_images:
        return [ImageRecord(str(p), codes, group) for p, codes, group in candidates]
    good, bad_images = scan_images([p for p, _, _ in candidates], progress=progress)
    bad += bad_images
    return [
        ImageRecord(str(p), codes, group, good[str(p)][0], good[str(p)][1])
        for p, codes, group in candidates
        if str(p) in good
    ]


def read_labels_csv(
    csv_path: str | Path,
    taxonomy: Taxonomy,
    root: str | Path | None = None,
    strict: bool = True,
    on_bad_file: str = "error",
    check_images: bool = True,
    progress: Callable | None = None,
) -> tuple[list[ImageRecord], list[BadFile]]:
    """Read a ``path,labels[,group]`` CSV into multi-label records.

    ``labels`` follows the folder grammar (``AC-1;AC-4``, ``AC-1 + AC-4``; a ``label`` column is
    accepted too). Relative paths are resolved against ``root`` (default: the CSV's folder).
    Label problems (every offending line listed) follow ``strict``; missing or unreadable files
    follow ``on_bad_file``.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV {csv_path} does not exist")
    base = Path(root).expanduser() if root else csv_path.parent
    bad: list[BadFile] = []
    problems: list[BadFile] = []
    ignored: dict[str, tuple[str, ...]] = {}
    candidates: list[tuple[Path, tuple[str, ...], str | None]] = []
    seen: dict[str, int] = {}
    rows = read_csv_rows(csv_path, "labels CSV")
    fieldnames = [c.strip() for c in rows[0]] if rows else []
    cols = set(fieldnames)
    label_col = "labels" if "labels" in cols else "label" if "label" in cols else None
    if "path" not in cols or label_col is None:
        raise ValueError(
            f"labels CSV {csv_path} needs the columns path,labels[,group]; it has {sorted(cols)}"
        )
    for line, values in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in values):
            continue
        row = dict(zip(fieldnames, values, strict=False))
        where = f"{csv_path}, line {line}"
        raw = (row.get("path") or "").strip().replace("\\", "/")  # a path as Windows writes it
        if not raw:
            problems.append(BadFile(where, "empty path"))
            continue
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else base / p
        if str(p) in seen:
            problems.append(BadFile(where, f"{raw} is listed twice (first on line {seen[str(p)]})"))
            continue
        seen[str(p)] = line
        codes, other = taxonomy.split_codes(row.get(label_col) or "")
        if other and strict:
            problems.append(
                BadFile(
                    where,
                    f"labels {row.get(label_col)!r}: {', '.join(map(repr, other))} is not an AC code",
                )
            )
            continue
        if other:
            ignored[row.get(label_col) or ""] = other
        if not codes:
            problems.append(BadFile(where, f"labels {row.get(label_col)!r} name no AC code of the tree"))
            continue
        if not p.is_file():
            what = (
                "a folder" if p.is_dir() else "a broken or looping symlink" if p.is_symlink() else "missing"
            )
            bad.append(BadFile(str(p), f"listed on line {line} of {csv_path.name} but {what}"))
            continue
        candidates.append((p, codes, (row.get("group") or "").strip() or None))
    if problems:
        raise DatasetError(
            csv_path,
            problems + bad,
            _STRICT_HINT if any("not an AC code" in b.reason for b in problems) else "",
        )
    return _finish(
        csv_path, candidates, bad, ignored, check_images, progress, on_bad_file, "no usable images"
    )


def _finish(
    where,
    candidates,
    bad: list[BadFile],
    ignored,
    check_images: bool,
    progress,
    on_bad_file: str,
    empty_reason: str,
) -> tuple[list[ImageRecord], list[BadFile]]:
    """Shared tail of the folder and CSV readers: warn about ignored tokens, decode + hash the
    candidates, apply the bad-file policy, refuse an empty result, sort by path."""
    _warn_ignored(ignored)
    records = _scan(candidates, bad, check_images, progress)
    resolve_bad_files(where, bad, on_bad_file)
    if not records:
        raise DatasetError(where, bad or [BadFile(str(where), empty_reason)])
    records.sort(key=lambda r: r.path)
    return records, bad


def _read_hospital(
    hospital_root: Path | None,
    labels_csv: str | None,
    tree: Taxonomy,
    strict: bool,
    group_level,
    on_bad_file: str,
) -> tuple[list[ImageRecord], list[BadFile]]:
    if labels_csv:
        return read_labels_csv(labels_csv, tree, root=hospital_root, strict=strict, on_bad_file=on_bad_file)
    assert hospital_root is not None
    return read_hospital_folder(
        hospital_root, tree, strict=strict, group_level=group_level, on_bad_file=on_bad_file
    )
