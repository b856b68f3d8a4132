"""Checks of one split against itself: no image bytes and no group in two splits.

:func:`check_no_leakage` refuses a split where the same file hash or the same group (patient,
slide, specimen) is in two splits; :func:`shared_with_train` counts what a layout's official split
(or a hand-made manifest) shares with training, for the ``test/shared_groups_with_train`` flag.
Checks against *other* runs and extra training sets are in :mod:`.leakage`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..images import BadFile
from ..records import DatasetError, ImageRecord

__all__ = [
    "LeakageError",
    "check_no_leakage",
    "shared_with_train",
    "warn_shared_with_train",
    "check_split_sizes",
]

log = logging.getLogger(__name__)


class LeakageError(ValueError):
    """The same image bytes or the same group appear in two splits."""


def shared_with_train(splits: dict[str, Sequence[ImageRecord]], split: str = "test") -> dict[str, int]:
    """How much of ``split`` shares a group or identical bytes with the training split:
    ``{"groups": shared groups, "images": images of split in them, "identical": byte-identical images}``."""
    train = splits.get("train", [])
    groups = {r.group for r in train if r.group}
    hashes = {r.sha256 for r in train if r.sha256}
    other = splits.get(split, [])
    shared = {r.group for r in other if r.group in groups}
    return {
        "groups": len(shared),
        "images": sum(r.group in shared for r in other),
        "identical": sum(bool(r.sha256) and r.sha256 in hashes for r in other),
    }


def check_no_leakage(splits: dict[str, Sequence[ImageRecord]]) -> None:
    """Raise :class:`LeakageError` if a file hash or a group occurs in more than one split."""
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for s, recs in splits.items():
        for r in recs:
            for key in (("sha256", r.sha256), ("group", r.group)):
                if not key[1]:
                    continue
                other = seen.setdefault(key, s)
                if other != s:
                    problems.append(f"{key[0]} {key[1][:16]} is in both {other} and {s} ({r.path})")
    if problems:
        raise LeakageError("split leakage:\n  " + "\n  ".join(problems[:20]))


def warn_shared_with_train(splits: dict[str, Sequence[ImageRecord]], given_by: str) -> dict[str, int]:
    """:func:`shared_with_train` of the test split, with a WARNING when any test image shares a group
    or identical bytes with training (only a layout's official split or a hand-made manifest can do
    that; ``given_by`` names which)."""
    overlap = shared_with_train(splits, "test")
    if overlap["images"] or overlap["identical"]:
        log.warning(
            "THE TEST SPLIT SHARES %d GROUP(S) (%d test image(s)) AND %d IDENTICAL IMAGE(S) WITH THE TRAINING "
            "SPLIT (as %s gives them): test figures are optimistic for unseen %s; metrics.json flags this as "
            "test/shared_groups_with_train",
            overlap["groups"],
            overlap["images"],
            overlap["identical"],
            given_by,
            "groups (specimens, fields, patients)",
        )
    return overlap


def check_split_sizes(
    records: Sequence[ImageRecord],
    splits: dict[str, Sequence[ImageRecord]],
    fractions: Sequence[float],
    root: str | Path,
) -> None:
    """Stop when one group (patient, folder, specimen) holds most images and a split is left empty
    (e.g. ``data.group_level=auto`` taking the export's top folder as the only patient): a grouped
    split cannot divide a group. Warn when a split is empty for another reason (too few images or
    groups per class), or when one group holds most images."""
    splits_order = ("train", "val", "test")
    groups = Counter(r.group for r in records if r.group)
    top = groups.most_common(1)[0] if groups else None
    where = (
        (
            f" One group, {top[0]!r}, holds {top[1]} of the {len(records)} images, and a group is never split: "
            "check the grouping (data.group_level, or the group column of your labels CSV), e.g. "
            "data.group_level=none to split image by image if the images are independent."
        )
        if top and top[1] > 0.5 * len(records)
        else ""
    )
    sizes = ", ".join(f"{s} {len(splits[s])}" for s in splits_order)
    empty = [s for s, f in zip(splits_order, fractions, strict=True) if f > 0 and not splits[s]]
    if empty:
        msg = (
            f"the {' and '.join(empty)} split(s) are empty ({sizes}, data.split_fractions={list(fractions)})."
        )
        if where:
            raise DatasetError(root, [BadFile(str(root), msg + where)])
        log.warning(
            "%s Too few images, groups or distinct files (copies share a split) per class to fill them.", msg
        )
    elif where:
        log.warning("split %s.%s", sizes, where)
