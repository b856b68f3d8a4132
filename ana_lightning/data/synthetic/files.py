"""File plumbing of the dataset writers: per-image seeds, PNG/JPEG encoding, atomic writes, CSV files
and an optional progress bar."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["image_rng", "encode", "encode_png", "atomic_write", "write_csv", "check_fmt"]


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one image: ``SeedSequence([seed, stream, index])``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(index)]))


def encode(img: np.ndarray, fmt: str) -> bytes:
    """PNG or JPEG (quality 95) bytes of an RGB uint8 image."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"could not encode image as {fmt}")
    return buf.tobytes()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write(path, buf.getvalue().encode("utf-8"))


def check_fmt(fmt: str) -> str:
    """``png`` or ``jpg`` (``jpeg`` and a leading dot accepted); anything else is a ValueError."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in ("png", "jpg"):
        raise ValueError("fmt must be 'png' or 'jpg'")
    return fmt


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB (``H×W×3``) or grey (``H×W``) uint8 image."""
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("could not encode a cell as PNG")
    return buf.tobytes()
