"""Class-preserving stylized training sets (``ana-stylize``): plan and write them.

The plan (which same-class content/style pairs, seeded) and the writer (atomic PNGs, ``manifest.csv``,
``stylize_params.json``, resumable). The set is read back, checked against a run's split, by
:func:`ana_lightning.data.splits.read_stylized_set` (re-exported here). The NST itself (VGG-19
features, the batched optimiser, :class:`StyleTransfer`) is :mod:`ana_lightning.nst`, re-exported
here; the job is :func:`ana_lightning.jobs.stylize.stylize_job` (``stylize_job`` is still importable
from here, lazily).

Gatys et al. (2016): here both the content and the style image are training images of the **same
class**, so the result keeps the label: the cells and layout of one field, re-painted with the
staining texture of another field of the same pattern.

- **No leakage, by construction**: only records of the training split are sources (the stylize job
  reads the run's split manifest, or splits with the same ``split_records`` and seed); the output
  manifest records, for every image, its content and style path and sha256, the parameters and the
  seed; :func:`read_stylized_set` (used by ``data.extra_train``) refuses a set whose sources are in
  val or test, or not in the data at all.
- **Resumable and safe**: each image is written to a hidden temporary file and renamed; re-running
  skips finished outputs; Ctrl-C leaves no half-written image and a manifest of what is done.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.images import bit_depth, first_few, load_image, sha256_file
from .data.records import ImageRecord
from .data.splits import STYLIZED_MANIFEST, read_stylized_set
from .nst import (
    VGG19_LAYERS,
    VGG19_WEIGHTS_FILE,
    StyleTransfer,
    VGGFeatures,
    WeightsNotFoundError,
    default_weights_path,
)

__all__ = [
    "VGG19_LAYERS",
    "VGG19_WEIGHTS_FILE",
    "WeightsNotFoundError",
    "default_weights_path",
    "VGGFeatures",
    "StyleTransfer",
    "StyleJob",
    "plan_jobs",
    "stylize",
    "read_stylized_set",
    "MANIFEST",
]

log = logging.getLogger(__name__)

#: The manifest of a stylized set, inside its output folder.
MANIFEST = STYLIZED_MANIFEST  # the set's manifest.csv (named in data.splits, which reads it back)
#: Generation parameters of a stylized set, inside its output folder (a re-run must match them).
PARAMS_FILE = "stylize_params.json"


# ---------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class StyleJob:
    """One output image: the ``index``-th restyling of ``content`` with the texture of ``style``."""

    content: ImageRecord
    style: ImageRecord
    index: int
    seed: int
    relpath: str  # path of the output image inside the output folder


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def _safe_stem(path: str, limit: int = 40) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(path).stem)
    return stem[:limit] or "img"


def label_folder(codes: Sequence[str]) -> str:
    """Folder name of a label: ``AC-4``, or ``AC-1+AC-4`` for a multi-label record."""
    return "+".join(codes)


def plan_jobs(
    records: Sequence[ImageRecord], n_per_image: int, seed: int = 0
) -> tuple[list[StyleJob], list[str]]:
    """Pair every record (content) with up to ``n_per_image`` different records of the same label (style).

    The plan depends only on the records and the seed, and the first ``k`` styles of a content image
    are the same for any ``n_per_image >= k`` (so a larger re-run extends a set). Byte-identical copies
    count once (never their own style, never two contents). Returns the jobs and warnings (labels or images with too few partners).
    """
    if n_per_image < 1:
        raise ValueError(f"n_per_image must be at least 1, got {n_per_image!r}")
    by_label: dict[tuple[str, ...], list[ImageRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.path):
        by_label[tuple(r.codes)].append(r)
    jobs: list[StyleJob] = []
    warnings: list[str] = []
    short = 0

    def key(r: ImageRecord) -> str:  # identity of an image: its bytes, else where it is
        return r.sha256 or str(Path(r.path).resolve())

    for codes, recs in by_label.items():
        first: dict[str, ImageRecord] = {}
        for r in recs:  # byte-identical copies count once (the first path)
            first.setdefault(key(r), r)
        unique = list(first.values())
        if len(unique) < 2:
            warnings.append(
                f"{label_folder(codes)}: only one training image ({recs[0].path}), no style partner: skipped"
            )
            continue
        for c in unique:
            partners = [s for s in unique if key(s) != key(c)]
            rng = np.random.default_rng([seed, _stable_int(key(c)) % (2**63)])
            order = [partners[i] for i in rng.permutation(len(partners))]
            if len(order) < n_per_image:
                short += 1
            for k, s in enumerate(order[:n_per_image]):
                job_seed = _stable_int(seed, key(c), k) % (2**31)
                tag = hashlib.sha1(f"{key(c)}\x1f{key(s)}\x1f{k}".encode()).hexdigest()[:8]
                rel = f"{label_folder(codes)}/{_safe_stem(c.path)}__{k:02d}_{tag}.png"
                jobs.append(StyleJob(c, s, k, job_seed, rel))
    if short:
        warnings.append(
            f"{short} content image(s) have fewer than n_per_image={n_per_image} same-class partners: "
            "they get one image per partner (the same pair would give the same image)"
        )
    return jobs, warnings


# ---------------------------------------------------------------------------------------------- writing
def _write_png_atomic(path: Path, image: np.ndarray) -> str:
    """Write ``image`` (``H×W×3 uint8``) as PNG through a hidden temporary file + rename; returns its sha256."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: readers ignore it
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: never leave a partial file behind
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _verified_output(path: Path, row: dict[str, Any] | None) -> dict[str, Any] | None:
    """``row`` (``{}`` when the manifest has none) if ``path`` is a finished output: its sha256 is the
    manifest's, or — without a manifest row — it decodes completely; None when it must be made again
    (a truncated or corrupt PNG, e.g. copied in part or written by another tool)."""
    from .data.images import BadImageError, load_image

    if row and row.get("sha256"):
        return row if sha256_file(path) == row["sha256"] else None
    try:
        load_image(path)
    except BadImageError:
        return None
    return row or {}


_COLUMNS = (
    "path",
    "label",
    "group",
    "sha256",
    "content",
    "style",
    "content_sha256",
    "style_sha256",
    "index",
    "seed",
    "image_size",
    "iterations",
    "optimizer",
    "lr",
    "init",
    "content_layers",
    "style_layers",
    "content_weight",
    "style_weight",
    "style_layer_weights",
    "tv_weight",
    "pooling",
    "weights",
    "final_loss",
    "bit_depth",  # data.bit_depth its content and style images were read at (empty: their own range)
)


def _write_manifest(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_manifest_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _to_unit_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    import cv2

    if image.shape[:2] != (size, size):  # as the datamodules resize (ImageTransform.resize)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0


class _ImageCache:
    """A small LRU of loaded, resized images (each content image is used ``n_per_image`` times)."""

    def __init__(self, size: int, capacity: int = 256):
        self.size, self.capacity = size, capacity
        self.items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, path: str) -> torch.Tensor:
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        t = _to_unit_tensor(load_image(path), self.size)
        self.items[path] = t
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return t


@dataclass
class StylizeSummary:
    """What :func:`stylize` did."""

    output: str
    planned: int
    already_done: int
    written: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else math.nan


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def _batches(items: Sequence[StyleJob], size: int) -> Iterator[list[StyleJob]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def stylize(
    records: Sequence[ImageRecord],
    output: str | Path,
    transfer: StyleTransfer,
    n_per_image: int = 4,
    image_size: int = 256,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> StylizeSummary:
    """Write a stylized, class-preserving set made from ``records`` (the *training* split) into ``output``.

    Layout: ``<output>/<label>/<content stem>__<k>_<tag>.png``, ``<output>/manifest.csv`` (one row per
    image: label, content/style path and sha256, parameters, seed, final loss) and
    ``<output>/stylize_params.json``. Finished images are skipped, so an interrupted run resumes where
    it stopped; an output folder made with other parameters, or holding files it did not write, is refused.
    """
    if batch_size < 1 or image_size < 16:
        raise ValueError(
            f"batch_size must be >= 1 and image_size >= 16, got {batch_size!r} and {image_size!r}"
        )
    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    params = {**transfer.params(), "image_size": int(image_size), "seed": int(seed)}
    params_file = out / PARAMS_FILE
    entries = sorted(p.name for p in out.iterdir())
    if entries and not params_file.is_file():  # not a stylized set: someone's files (their manifest.csv too)
        shown = first_few(entries, 3)
        raise ValueError(
            f"{out} holds files that ana-stylize did not write ({shown}): stylized images written there would mix "
            f"with them and {MANIFEST} would be replaced. Use a new or empty output folder."
        )
    if params_file.is_file():
        old = json.loads(params_file.read_text())
        diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds a stylized set made with other parameters ({lines}). Use a new output folder, "
                "or delete this one to start over."
            )
    else:
        params_file.write_text(json.dumps(params, indent=2) + "\n")
    for stale in out.rglob(".*.tmp"):  # left by a killed process (SIGKILL): never a finished image
        stale.unlink(missing_ok=True)

    jobs, warnings = plan_jobs(records, n_per_image, seed)
    for w in warnings:
        log.warning(w)
    manifest = out / MANIFEST
    previous = {row["path"]: row for row in _read_manifest_rows(manifest)}
    rows: dict[str, dict[str, Any]] = {}
    pending: list[StyleJob] = []
    redo = []
    for job in jobs:
        done = out / job.relpath
        if done.is_file() and (row := _verified_output(done, previous.get(job.relpath))) is not None:
            rows[job.relpath] = row or _row(job, params, sha256_file(done), math.nan)
        else:
            if done.exists() or done.is_symlink():
                redo.append(str(done))
                done.unlink()
            pending.append(job)
    if redo:
        log.warning(
            "%d existing output(s) are truncated, unreadable or differ from the manifest and are made again, "
            "e.g. %s",
            len(redo),
            redo[0],
        )
    orphans = [p for p in previous if p not in {j.relpath for j in jobs}]
    if orphans:
        log.warning(
            "%d image(s) of an earlier plan in %s are not part of this one and are left out of the manifest, e.g. %s",
            len(orphans),
            out,
            orphans[0],
        )
    done_before = len(rows)
    log.info(
        "stylize: %d image(s) planned, %d already done, %d to make (batch %d, %d iterations, %d px, %s, weights: %s)",
        len(jobs),
        done_before,
        len(pending),
        batch_size,
        transfer.iterations,
        image_size,
        transfer.device,
        transfer.weights_source,
    )
    cache = _ImageCache(int(image_size))
    start = time.perf_counter()
    written = 0
    try:
        with _progress(progress) as bar:
            task = bar.add_task("stylizing", total=len(jobs), completed=done_before, rate="") if bar else None
            sub = bar.add_task("  iterations", total=transfer.iterations, rate="") if bar else None
            for batch in _batches(pending, batch_size):
                content = torch.stack([cache(j.content.path) for j in batch])
                style = torch.stack([cache(j.style.path) for j in batch])
                if bar is not None:
                    bar.reset(sub, total=transfer.iterations)
                images, losses = transfer(
                    content,
                    style,
                    [j.seed for j in batch],
                    on_step=(lambda i: bar.update(sub, completed=i)) if bar is not None else None,
                )
                arrays = (images.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
                for job, arr, loss in zip(batch, arrays, losses, strict=True):
                    digest = _write_png_atomic(out / job.relpath, arr)
                    rows[job.relpath] = _row(job, params, digest, loss)
                    written += 1
                _write_manifest(manifest, [rows[j.relpath] for j in jobs if j.relpath in rows])
                if bar is not None:
                    elapsed = time.perf_counter() - start
                    bar.update(task, advance=len(batch), rate=f"{written / elapsed:.2f} img/s")
    finally:
        _write_manifest(manifest, [rows[j.relpath] for j in jobs if j.relpath in rows])
    seconds = time.perf_counter() - start
    log.info("stylize: wrote %d image(s) in %.1f s into %s (%d in total)", written, seconds, out, len(rows))
    return StylizeSummary(str(out), len(jobs), done_before, written, seconds, warnings)


def _row(job: StyleJob, params: dict[str, Any], digest: str, loss: float) -> dict[str, Any]:
    c, s = job.content, job.style
    row = {
        "path": job.relpath,
        "label": ";".join(c.codes),
        "group": c.group or "",
        "sha256": digest,
        "content": str(Path(c.path).resolve()),
        "style": str(Path(s.path).resolve()),
        "content_sha256": c.sha256,
        "style_sha256": s.sha256,
        "index": job.index,
        "seed": job.seed,
        "final_loss": "" if math.isnan(loss) else f"{loss:.6g}",
        "bit_depth": bit_depth() or "",
    }
    for k in _COLUMNS:
        if k not in row:
            v = params[k]
            row[k] = ";".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return row


# ---------------------------------------------------------------------------------------------- reading back
# read_stylized_set (data.extra_train) checks a stylized set against a run's split: it lives with
# the other leakage checks in ana_lightning.data.splits and is imported above under its old name.


def __getattr__(name: str) -> Any:
    """``stylize_job`` (the ``ana-stylize`` job) now lives in :mod:`ana_lightning.jobs.stylize`."""
    if name == "stylize_job":
        from .jobs.stylize import stylize_job

        return stylize_job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
