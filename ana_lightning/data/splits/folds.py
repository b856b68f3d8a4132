"""Cross-validation folds: made once per sweep, saved as ``folds_manifest.csv``, reused exactly.

:func:`fold_records` makes k disjoint folds with equal fractions (grouped and stratified like
:func:`~.grouping.split_records`), :func:`sweep_folds` saves them once per sweep (under a file lock,
so parallel jobs agree) and :func:`cv_split` tests on one fold and carves the validation split from
the other folds.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..records import ImageRecord
from .checks import check_no_leakage
from .grouping import _assign_units, _units, split_records

log = logging.getLogger(__name__)

__all__ = [
    "FOLDS_MANIFEST",
    "FoldsManifestError",
    "fold_records",
    "cv_split",
    "sweep_folds",
    "load_folds_manifest",
    "check_fold_settings",
    "fold_split",
]

FOLDS_MANIFEST = "folds_manifest.csv"
_FOLD_COLUMNS = ["repeat", "fold", "path", "label", "sha256", "group", "seed"]


class FoldsManifestError(ValueError):
    """A folds manifest that does not fit the data or the fold settings of this job."""


def fold_records(
    records: Sequence[ImageRecord],
    folds: int,
    seed: int | Sequence[int] = 0,
    together: Sequence[Sequence[str]] = (),
    order: str = "random",
) -> list[list[ImageRecord]]:
    """``folds`` disjoint folds covering ``records``: stratified (multi-label aware) and grouped by the
    same rules as :func:`split_records` (a group, byte-identical files and each set of paths in
    ``together`` — the near-duplicates — stay in one fold).

    >>> recs = [ImageRecord(f"{c}_{i}.png", (c,), sha256=f"{c}{i}") for c in ("AC-1", "AC-2") for i in range(10)]
    >>> [len(f) for f in fold_records(recs, 5)]
    [4, 4, 4, 4, 4]
    """
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"data.folds must be at least 2, got {folds}")
    records = sorted(records, key=lambda r: r.path)
    units = _units(records, together)
    if len(units) < folds:
        raise ValueError(
            f"data.folds={folds} needs at least {folds} independent groups of images, but the {len(records)} images "
            f"form {len(units)} (images of one group or byte-identical files stay together): use fewer folds"
        )
    rng = np.random.default_rng(seed)
    units = [units[i] for i in rng.permutation(len(units))]
    out: list[list[ImageRecord]] = [[] for _ in range(folds)]
    for u, k in zip(units, _assign_units(records, units, [1.0 / folds] * folds, rng, order), strict=True):
        out[k].extend(records[i] for i in u)
    for f in out:
        f.sort(key=lambda r: r.path)
    empty = [i for i, f in enumerate(out) if not f]
    if empty:
        raise ValueError(
            f"data.folds={folds}: fold(s) {empty} came out empty ({len(units)} groups); use fewer folds"
        )
    check_no_leakage({f"fold {i}": f for i, f in enumerate(out)})
    return out


def cv_split(
    records: Sequence[ImageRecord],
    fold_of: dict[str, int],
    fold: int,
    val_fraction: float,
    seed: int | Sequence[int] = 0,
    together: Sequence[Sequence[str]] = (),
    order: str = "random",
) -> dict[str, list[ImageRecord]]:
    """Train / val / test of one cross-validation job: ``test`` is fold ``fold`` (``fold_of`` maps a
    record's path to its fold); ``val`` is carved from the other folds only (stratified, grouped),
    ``val_fraction`` of them; the rest is ``train``."""
    missing = [r.path for r in records if r.path not in fold_of]
    if missing:
        raise FoldsManifestError(f"{len(missing)} image(s) have no fold, e.g. {missing[0]}")
    test = sorted((r for r in records if fold_of[r.path] == fold), key=lambda r: r.path)
    rest = [r for r in records if fold_of[r.path] != fold]
    if not test:
        raise FoldsManifestError(f"fold {fold} holds no image")
    inner = split_records(
        rest, (1.0 - val_fraction, val_fraction, 0.0), seed=seed, together=together, order=order
    )  # no test
    out = {"train": inner["train"], "val": inner["val"], "test": test}
    check_no_leakage(out)
    return out


def _rel(path: str, root: str | Path | None) -> str:
    p = Path(path)
    if root is not None:
        try:
            p = p.resolve().relative_to(Path(root).resolve())
        except ValueError:
            pass
    return p.as_posix()


def load_folds_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``folds_manifest.csv`` (``repeat,fold,path,label,sha256,group,seed``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folds manifest {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(_FOLD_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise FoldsManifestError(f"folds manifest {path} lacks column(s) {sorted(missing)}")
        return list(reader)


def sweep_folds(
    records: Sequence[ImageRecord],
    path: str | Path | None,
    folds: int,
    repeats: int = 1,
    seed: int = 0,
    root: str | Path | None = None,
    together: Sequence[Sequence[str]] = (),
    order: str = "random",
) -> list[dict[str, int]]:
    """The fold of every record (by path), per repeat, made once per sweep.

    The first job of a sweep makes the folds of every repeat (repeat ``i`` with fold seed
    ``[seed, i]``) and writes them to ``path`` under a file lock; every later job reads that file
    and uses it exactly. A manifest that lists other images, other contents (sha256), other labels,
    or other fold settings is refused with the differences named. ``path=None`` keeps them in memory.
    Folds made with ``order="size"`` (``data.split_order``) carry an ``order`` column, checked the same way;
    a manifest without one was made in the random order or before round 19, and is not checked for it.
    """
    rel = {_rel(r.path, root): r for r in records}
    if len(rel) != len(records):
        raise FoldsManifestError("two images map to the same relative path; cannot write a folds manifest")
    if path is None:
        return [_fold_map(records, folds, [seed, i], together, order) for i in range(repeats)]
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            rows = []
            for i in range(repeats):
                for k, fold in enumerate(fold_records(records, folds, [seed, i], together, order)):
                    rows += [
                        [i, k, _rel(r.path, root), ";".join(r.codes), r.sha256, r.group or "", seed]
                        + ([order] if order != "random" else [])
                        for r in fold
                    ]
            # Unique temporary name, atomic rename: even where the lock does not hold (some network file
            # systems), two jobs could only write the same deterministic content, never a mixed file.
            tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(_FOLD_COLUMNS + (["order"] if order != "random" else []))
                w.writerows(rows)
            tmp.replace(path)
        rows = load_folds_manifest(path)
    return _check_folds_manifest(rows, rel, path, folds, repeats, seed, order)


def _fold_map(
    records: Sequence[ImageRecord],
    folds: int,
    seed: Sequence[int],
    together: Sequence[Sequence[str]] = (),
    order: str = "random",
) -> dict[str, int]:
    return {
        r.path: k for k, fold in enumerate(fold_records(records, folds, seed, together, order)) for r in fold
    }


def _check_folds_manifest(
    rows: list[dict[str, str]],
    rel: dict[str, ImageRecord],
    path: Path,
    folds: int,
    repeats: int,
    seed: int,
    order: str = "random",
) -> list[dict[str, int]]:
    problems: list[str] = []
    got_orders = {r.get("order") or "random" for r in rows} if rows and "order" in rows[0] else {order}
    if got_orders != {order}:
        problems.append(
            f"its folds were made in the order {sorted(got_orders)}; this job asks for data.split_order={order}"
        )
    got_folds = {int(r["fold"]) for r in rows}
    got_repeats = {int(r["repeat"]) for r in rows}
    got_seeds = {r["seed"] for r in rows}
    if got_folds != set(range(folds)) or got_repeats != set(range(repeats)) or got_seeds != {str(seed)}:
        problems.append(
            f"it holds folds {sorted(got_folds)}, repeats {sorted(got_repeats)}, seed {sorted(got_seeds)}; this job asks "
            f"for data.folds={folds}, data.repeats={repeats}, data.seed={seed}"
        )
    out: list[dict[str, int]] = [{} for _ in range(repeats)]
    for line, row in enumerate(rows, start=2):
        rep = int(row["repeat"])
        r = rel.get(row["path"])
        if r is None:
            problems.append(f"line {line}: {row['path']} is not in the dataset")
        elif row["sha256"] and r.sha256 and row["sha256"] != r.sha256:
            problems.append(f"line {line}: {row['path']} changed since the folds were made (sha256 differs)")
        elif row["label"] != ";".join(r.codes):
            problems.append(
                f"line {line}: {row['path']} is labelled {';'.join(r.codes)!r}, not {row['label']!r}"
            )
        elif rep < repeats:
            if r.path in out[rep]:
                problems.append(f"line {line}: {row['path']} is listed twice in repeat {rep}")
            out[rep][r.path] = int(row["fold"])
    for rep in range(min(repeats, max(got_repeats, default=-1) + 1)):
        new = [p for p, r in rel.items() if r.path not in out[rep]]
        if new:
            problems.append(f"repeat {rep}: {len(new)} image(s) of the dataset are not in it, e.g. {new[0]}")
    if problems:
        shown = "\n  ".join(problems[:20]) + (
            f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise FoldsManifestError(
            f"the folds manifest {path} does not fit this job (the dataset or the fold settings changed since the "
            f"sweep made it):\n  {shown}\nStart a new sweep (or pass data.folds_manifest=<a new file>) to make new folds."
        )
    return out


def check_fold_settings(
    folds: int | None, fold: int | None, repeats: int, repeat: int, split_manifest: str | None
) -> None:
    """Clear errors for ``data.folds`` / ``data.fold`` / ``data.repeats`` / ``data.repeat``."""
    if folds is None:
        if fold is not None:
            raise ValueError(
                f"data.fold={fold} needs data.folds=<k> (e.g. ana-train -m data.folds=5 'data.fold=range(5)')"
            )
        return
    if int(folds) < 2:
        raise ValueError(f"data.folds must be at least 2, got {folds}")
    if fold is None or not 0 <= int(fold) < int(folds):
        raise ValueError(
            f"data.folds={folds} needs data.fold in 0…{int(folds) - 1}, got {fold} "
            f"(a sweep over all folds: ana-train -m data.folds={folds} 'data.fold=range({folds})')"
        )
    if int(repeats) < 1 or not 0 <= int(repeat) < int(repeats):
        raise ValueError(
            f"data.repeat must be in 0…data.repeats-1 and data.repeats >= 1, got repeat={repeat}, repeats={repeats}"
        )
    if split_manifest:
        raise ValueError(
            f"data.folds={folds} makes its own splits: drop data.split_manifest={split_manifest}"
        )


def fold_split(
    records: Sequence[ImageRecord],
    folds: int,
    fold: int,
    fractions: Sequence[float],
    seed: int = 0,
    repeats: int = 1,
    repeat: int = 0,
    folds_manifest: str | Path | None = None,
    root: str | Path | None = None,
    together: Sequence[Sequence[str]] = (),
    order: str = "random",
) -> dict[str, list[ImageRecord]]:
    """Cross-validation job ``(repeat, fold)``: test on that fold of the sweep's folds manifest (made
    once per sweep by :func:`sweep_folds`, then reused exactly); validation carved from the other
    folds with the share ``val / (train + val)`` of ``fractions``, never from the test fold."""
    fold_of = sweep_folds(
        records, folds_manifest, folds, repeats, seed=seed, root=root, together=together, order=order
    )[repeat]
    val_fraction = fractions[1] / (fractions[0] + fractions[1]) if fractions[0] + fractions[1] > 0 else 0.0
    log.info(
        "cross-validation: fold %d of %d (repeat %d of %d), validation = %.0f%% of the other folds",
        fold,
        folds,
        repeat,
        repeats,
        100 * val_fraction,
    )
    return cv_split(
        records, fold_of, fold, val_fraction, seed=[seed, repeat, fold], together=together, order=order
    )
