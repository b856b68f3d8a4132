"""Leakage checks against other runs and extra training sets.

- :func:`check_unseen`: ``ana-eval`` refuses to score images that a checkpoint (any ensemble member
  or pipeline level) trained on, read from the ``split_manifest.csv`` of its run folder.
- :func:`seen_in_training`: how many evaluated images were in the model's training split (the
  ``test/images_in_training_split`` flag of metrics.json).
- :func:`read_stylized_set`: the extra training images of ``data.extra_train`` (made by
  ``ana-stylize``) are refused when any content or style image is in this run's val or test split.

Checks of one split against itself are in :mod:`.checks`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..images import BadFile
from ..records import DatasetError, ImageRecord, resolve_bad_files, scan_images
from .checks import LeakageError
from .manifest import LabelParser, run_manifest, training_hashes

__all__ = ["STYLIZED_MANIFEST", "check_unseen", "seen_in_training", "read_stylized_set"]

log = logging.getLogger(__name__)

#: File name of a stylized set's manifest (in the set's folder, written by ``ana-stylize``).
STYLIZED_MANIFEST = "manifest.csv"


def check_unseen(
    checkpoints: Sequence[str | Path],
    records: Sequence[ImageRecord],
    split: str,
    near_duplicates: Sequence[Any] = (),
) -> None:
    """Refuse to evaluate images that any of ``checkpoints`` trained on.

    Each checkpoint's training split is read from the ``split_manifest.csv`` of its run folder and
    compared by content (sha256, and the near-duplicate sets of the evaluated data), so an ensemble
    member or pipeline level trained with another seed or split cannot score its own training
    images. ``split=all`` / ``split=train`` asked for them: a warning instead of an error.
    """
    picture = {
        r.sha256: f"near-duplicate set {k}"
        for k, d in enumerate(near_duplicates)
        for r in d.records
        if r.sha256
    }
    # one entry per evaluated image (byte-identical copies too), keyed by its picture: a near-duplicate set or sha256
    evaluated = [(picture.get(r.sha256, r.sha256), r.path) for r in records if r.sha256]
    problems, unchecked = [], []
    for c in dict.fromkeys(str(c) for c in checkpoints):
        manifest = run_manifest(c)
        hashes = training_hashes(manifest)
        if hashes is None:
            unchecked.append(c)
            continue
        trained = {picture.get(h, h) for h in hashes}
        seen = sorted(path for p, path in evaluated if p in trained)
        if seen:
            problems.append(
                f"{c} trained on {len(seen)} of the {len(records)} evaluated images (e.g. {seen[:3]}; "
                f"its split: {manifest})"
            )
    if unchecked:
        log.warning(
            "no split manifest beside %s: cannot check that the evaluated images were not in its training "
            "split",
            ", ".join(unchecked),
        )
    if not problems:
        return
    msg = "evaluated images overlap a checkpoint's training split:\n  " + "\n  ".join(problems)
    if split in ("all", "train"):
        log.warning("%s\nsplit=%s: scored anyway, but these numbers are not held-out results", msg, split)
        return
    raise LeakageError(
        msg + "\nEvaluate on images none of them trained on (e.g. ensemble members trained on the same "
        "split: same data.seed and data.split_fractions, or data.split_manifest=<one run's manifest>)."
    )


def seen_in_training(records: Sequence[ImageRecord], manifest: str | Path) -> int | None:
    """How many of the evaluated ``records`` the model was trained on (same bytes as an image of the
    training split in the run's ``split_manifest.csv``); a WARNING when any. None without a manifest."""
    trained = training_hashes(manifest)
    if trained is None:
        return None
    seen = sum(1 for r in records if r.sha256 and r.sha256 in trained)
    if seen:
        log.warning(
            "%d OF THE %d EVALUATED IMAGES WERE IN THE MODEL'S TRAINING SPLIT (%s): these figures are not "
            "held-out; metrics.json flags it as test/images_in_training_split",
            seen,
            len(records),
            manifest,
        )
    return seen


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_stylized_set(
    folder: str | Path,
    splits: dict[str, Sequence[ImageRecord]],
    taxonomy: LabelParser | None = None,
    all_records: Sequence[ImageRecord] | None = None,
    on_bad_file: str = "error",
) -> list[ImageRecord]:
    """Records of a stylized set, checked against the current split (``data.extra_train``).

    Refuses (:class:`~ana_lightning.data.splits.LeakageError`) a set any of whose content or style
    images is in the val or test split, and (:class:`DatasetError`) one whose sources are not in the
    training data at all, whose label differs from its content image's, or whose files are missing
    or changed. Sources are matched by sha256 (so a moved dataset still matches), else by path.
    """
    folder = Path(folder).expanduser()
    manifest = folder / STYLIZED_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"data.extra_train={folder}: no {STYLIZED_MANIFEST} there (make the set with ana-stylize output={folder})"
        )
    rows = _read_rows(manifest)
    needed = {"path", "label", "content", "style"}
    if rows and not needed <= set(rows[0]):
        raise ValueError(
            f"{manifest} lacks column(s) {sorted(needed - set(rows[0]))}: not a stylized-set manifest"
        )
    from ..images import bit_depth

    now = str(bit_depth() or "")
    made = sorted(
        {str(r.get("bit_depth") or "") for r in rows if "bit_depth" in r}
    )  # sets before round 17: none
    if any(m != now for m in made):
        raise DatasetError(
            folder,
            [
                BadFile(
                    str(manifest),
                    f"made from images read at data.bit_depth={' and '.join(m or 'null' for m in made)}, but this "
                    f"run reads at data.bit_depth={now or 'null'}: make the set again with the run's data.bit_depth",
                )
            ],
            "The stylized set does not match this run's data.",
        )
    split_of: dict[tuple[str, str], tuple[str, ImageRecord]] = {}
    for s, recs in splits.items():
        for r in recs:
            split_of[("path", str(Path(r.path).resolve()))] = (s, r)
            if r.sha256:
                split_of.setdefault(("sha", r.sha256), (s, r))
    for r in all_records or []:  # read, but in no split (e.g. left out of a split manifest)
        split_of.setdefault(("path", str(Path(r.path).resolve())), ("none", r))
        if r.sha256:
            split_of.setdefault(("sha", r.sha256), ("none", r))

    leaks: list[str] = []
    problems: list[BadFile] = []
    out: list[ImageRecord] = []
    for line, row in enumerate(rows, start=2):
        img = folder / row["path"]
        codes = tuple(c for c in row["label"].split(";") if c)
        if taxonomy is not None:
            try:
                codes = tuple(taxonomy.parse_code(c) for c in codes)
            except ValueError as e:
                problems.append(BadFile(str(img), f"{manifest} line {line}: {e}"))
                continue
        ok = True
        for role in ("content", "style"):
            sha = row.get(f"{role}_sha256") or ""
            hit = split_of.get(("sha", sha)) if sha else None
            hit = hit or split_of.get(("path", str(Path(row[role]).resolve())))
            if hit is None:
                problems.append(BadFile(str(img), f"its {role} image {row[role]} is not in the data"))
                ok = False
            elif hit[0] in ("val", "test"):
                leaks.append(f"{img}: its {role} image {hit[1].path} is in the {hit[0]} split")
                ok = False
            elif hit[0] != "train":
                problems.append(
                    BadFile(str(img), f"its {role} image {hit[1].path} is in no split of this run")
                )
                ok = False
            elif tuple(hit[1].codes) != codes:
                problems.append(
                    BadFile(str(img), f"label {codes} differs from its {role} image's {tuple(hit[1].codes)}")
                )
                ok = False
        if ok:
            out.append(ImageRecord(str(img), codes, row.get("group") or None, row.get("sha256") or ""))
    if leaks:
        raise LeakageError(
            f"data.extra_train={folder} was made from images that this run holds out for validation/testing "
            f"({len(leaks)} image(s)):\n  "
            + "\n  ".join(leaks[:20])
            + "\nMake the stylized set from this run's training split: ana-stylize split_manifest=<run>/split_manifest.csv"
        )
    if problems:
        raise DatasetError(folder, problems, "The stylized set does not match this run's data.")
    good, bad = scan_images([Path(r.path) for r in out])
    changed = [
        BadFile(r.path, "content changed since the manifest was written (sha256 differs)")
        for r in out
        if r.path in good and r.sha256 and good[r.path][0] != r.sha256
    ]
    bad = list(bad) + changed
    resolve_bad_files(folder, bad, on_bad_file)
    skip = {b.path for b in bad}
    return [r for r in out if r.path not in skip]
