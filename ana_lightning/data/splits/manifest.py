"""The split manifest: save, load, match against freshly read records, and find a training run's.

A manifest is a CSV ``path,label,split,sha256,group`` written into every run folder as
``split_manifest.csv``; a later run reuses it with ``data.split_manifest=<file>``, and ``ana-eval``
finds the training run's own beside the checkpoint (:func:`training_split_manifest`).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..images import BadFile
from ..records import DatasetError, ImageRecord
from .checks import check_no_leakage
from .grouping import SPLITS

__all__ = [
    "SPLIT_MANIFEST",
    "save_manifest",
    "load_manifest",
    "match_manifest",
    "run_manifest",
    "training_split_manifest",
    "training_hashes",
]

log = logging.getLogger(__name__)

#: File name of the split manifest in a run folder.
SPLIT_MANIFEST = "split_manifest.csv"


class LabelParser(Protocol):
    """Anything that reads a manifest label into a canonical one (a :class:`~ana_lightning.taxonomy.Taxonomy`)."""

    def parse_code(self, text: str) -> str: ...


def save_manifest(
    splits: dict[str, Iterable[ImageRecord]], path: str | Path, root: str | Path | None = None
) -> Path:
    """Write ``path,label,split,sha256,group``; labels of multi-label records are joined by ``;``.

    Paths are written relative to ``root`` when given (so a manifest survives moving the dataset).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sha256", "group"])
        for s in SPLITS:
            for r in splits.get(s, []):
                p = Path(r.path)
                if root is not None:
                    try:
                        p = p.resolve().relative_to(Path(root).resolve())
                    except ValueError:
                        pass
                w.writerow([p.as_posix(), ";".join(r.codes), s, r.sha256, r.group or ""])
    tmp.replace(path)
    return path


def load_manifest(
    path: str | Path, root: str | Path | None = None, taxonomy: LabelParser | None = None, check: bool = True
) -> dict[str, list[ImageRecord]]:
    """Read a split manifest back into records per split (relative paths resolved against ``root``).
    ``check=False``: groups shared across splits are allowed (a layout's official split)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split manifest {path} does not exist")
    out: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"split manifest {path} lacks column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            if row["split"] not in out:
                raise ValueError(f"split manifest {path}, line {line}: unknown split {row['split']!r}")
            p = Path(row["path"])
            if not p.is_absolute() and root is not None:
                p = Path(root) / p
            codes = tuple(c for c in row["label"].split(";") if c)
            if taxonomy is not None:
                codes = tuple(taxonomy.parse_code(c) for c in codes)
            out[row["split"]].append(
                ImageRecord(str(p), codes, row.get("group") or None, row.get("sha256") or "")
            )
    if check:
        check_no_leakage(out)
    return out


def match_manifest(
    records: Sequence[ImageRecord],
    manifest: str | Path,
    root: str | Path,
    labels: LabelParser | None = None,
    official: bool = False,
    by_content: bool = False,
) -> dict[str, list[ImageRecord]]:
    """The split a manifest gives the freshly read ``records`` (``data.split_manifest=<file>``).

    Rows are matched to records by resolved path (relative manifest paths against ``root``). A row
    whose file is not in the data, whose content changed (sha256 differs) or whose label differs is
    a :class:`DatasetError` listing every such row; records the manifest does not list are left out
    with a warning. ``official=True``: groups shared across splits are allowed (a layout's own split).

    ``by_content=True`` (multi-label data): a row whose path is not found matches the records with
    its sha256 instead, and rows that match nothing are ignored (the other source of a mixed run), so
    the manifest of a ``data=mixed`` run selects the hospital test images of ``data=hospital``; a
    manifest that matches nothing at all is an error, and the result is checked for leakage again.
    """
    planned = load_manifest(manifest, root=root, taxonomy=labels, check=not official)
    by_path = {str(Path(r.path).resolve()): r for r in records}
    by_sha: dict[str, list[ImageRecord]] = defaultdict(list)
    labels_of_sha: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    if by_content:
        for r in records:
            if r.sha256:
                by_sha[r.sha256].append(r)
        for recs in planned.values():
            for p in recs:
                labels_of_sha[p.sha256].add(p.codes)
    out: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    problems: list[BadFile] = []
    used: set[str] = set()
    for s, recs in planned.items():
        for p in recs:
            r = by_path.get(str(Path(p.path).resolve()))
            if r is not None and p.sha256 and r.sha256 and p.sha256 != r.sha256:
                problems.append(
                    BadFile(p.path, f"content changed since {manifest} was written (sha256 differs)")
                )
                continue
            if not by_content:
                if r is None:
                    problems.append(BadFile(p.path, f"listed in {manifest} but not in the dataset"))
                elif p.codes != r.codes:
                    problems.append(BadFile(p.path, f"label {r.codes} differs from {p.codes} in {manifest}"))
                else:
                    out[s].append(r)
                    used.add(r.path)
                continue
            # Rows of other sources (the single-label half of a mixed run) match nothing here.
            for cand in [r] if r is not None else by_sha.get(p.sha256, []) if p.sha256 else []:
                if cand.path in used:
                    continue
                if cand.codes not in (labels_of_sha.get(cand.sha256) or {p.codes}):
                    problems.append(
                        BadFile(cand.path, f"label {cand.codes} differs from {p.codes} in {manifest}")
                    )
                    continue
                out[s].append(cand)
                used.add(cand.path)
    if problems:
        raise DatasetError(root, problems, "The split manifest does not match the data.")
    if by_content and not used:
        raise DatasetError(
            root,
            [BadFile(str(manifest), "none of this dataset's images is in the manifest")],
            "The split manifest does not match the data.",
        )
    extra = [r.path for r in records if r.path not in used]
    if extra:
        log.warning("%d image(s) are not in %s and are left out, e.g. %s", len(extra), manifest, extra[0])
    if by_content:
        check_no_leakage(out)
    return out


def run_manifest(ckpt_path: str | Path) -> Path:
    """Where the run that wrote a checkpoint keeps its split manifest (``<run>/checkpoints/x.ckpt`` →
    ``<run>/split_manifest.csv``); the file may not exist (a checkpoint copied elsewhere)."""
    return Path(ckpt_path).resolve().parent.parent / SPLIT_MANIFEST


def training_split_manifest(ckpt_path: str | Path | None, split: str, given: Any = None) -> Path | None:
    """The training run's split manifest that an evaluation of ``split`` uses, or None.

    None when a manifest is ``given`` (``data.split_manifest``) or ``split`` is ``all``; the file
    beside the checkpoint when it exists; otherwise ``split=auto`` gets None (all images are
    evaluated) and ``test`` / ``val`` / ``train`` a :class:`FileNotFoundError` saying what to pass.
    """
    if split not in ("auto", "test", "val", "train") or given:
        return None
    guess = run_manifest(ckpt_path) if ckpt_path is not None else None
    if guess is not None and guess.is_file():
        log.info("using the training run's split manifest %s", guess)
        return guess
    if split != "auto":
        raise FileNotFoundError(
            f"split={split} needs the training run's split manifest: none at {guess}; pass data.split_manifest=<file> or split=all"
        )
    return None


def training_hashes(manifest: str | Path) -> set[str] | None:
    """The sha256 of every training image of a split manifest; None when the file does not exist."""
    manifest = Path(manifest)
    if not manifest.is_file():
        return None
    with open(manifest, newline="") as f:
        return {
            row["sha256"] for row in csv.DictReader(f) if row.get("split") == "train" and row.get("sha256")
        }
