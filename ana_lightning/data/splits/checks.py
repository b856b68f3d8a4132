"""Checks of one split against itself: no image bytes and no group in two splits.

:func:`check_no_leakage` refuses a split where the same file hash or the same group (patient,
slide, specimen) is in two splits; :func:`shared_with_train` counts what a layout's official split
(or a hand-made manifest) shares with training, for the ``test/shared_groups_with_train`` flag.
Checks against *other* runs and extra training sets are in :mod:`.leakage`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..records import ImageRecord

__all__ = ["LeakageError", "check_no_leakage", "shared_with_train"]


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
