"""Robust image reading: the only module that opens image files.

Every image becomes an ``H×W×3`` ``uint8`` RGB array, whatever it was on disk:

- 8-bit RGB / grey / palette / RGBA (alpha dropped) JPEG, PNG, BMP, TIFF;
- 16-bit (and 32-bit integer) grey or RGB, scaled by the *type's* full range (``/257`` for 16 bit),
  never by the image's own maximum, so a faint negative stays faint;
- truncated or unreadable files raise :class:`BadImageError` naming the path and the reason.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "BadFile",
    "is_image_path",
    "load_image",
    "decode_image",
    "read_and_hash",
    "sha256_file",
    "format_bad_files",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
# Files that file managers and microscopes leave behind; never images, never errors.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})

# A truncated file must fail loudly, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Fluorescence fields are at most a few tens of megapixels; anything far larger is a decompression bomb.
MAX_PIXELS = 200_000_000


class BadImageError(ValueError):
    """An image file that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class BadFile:
    """A file or folder rejected while reading a dataset."""

    path: str
    reason: str


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_file_entry(path: str | Path) -> bool:
    """A file, or a symlink that does not lead to a folder — dangling or looping ones included, so
    they are reported like any unreadable file instead of vanishing from a listing."""
    p = Path(path)
    return p.is_file() or (p.is_symlink() and not p.is_dir())


def is_ignored(path: str | Path) -> bool:
    name = Path(path).name
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _to_uint8_rgb(arr: np.ndarray, path: str | Path) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif arr.dtype in (np.int32, np.uint32, np.int16):
        # PIL's mode "I" holds 16-bit data in int32 ("I;16" TIFFs often arrive this way).
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(np.iinfo(arr.dtype).max)
        arr = (np.clip(arr.astype(np.float64), 0, None) / top * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = (np.clip(arr / top, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise BadImageError(path, f"unsupported pixel type {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] >= 4:  # RGBA / CMYK-like: keep the colour channels
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadImageError(path, f"unsupported image shape {arr.shape}")
    return np.ascontiguousarray(arr)


def decode_image(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes into ``H×W×3 uint8``; raises :class:`BadImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImageError(
                        path, f"{img.width}×{img.height} pixels exceeds the limit of {MAX_PIXELS:,}"
                    )
                img.load()
                if img.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
                arr = np.asarray(img)
    except BadImageError:
        raise
    except Image.DecompressionBombWarning as e:
        raise BadImageError(path, f"too many pixels (decompression-bomb limit): {e}") from None
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"too many pixels (decompression-bomb limit): {e}") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not an image file (or an unsupported format)") from None
    except OSError as e:
        msg = str(e)
        reason = "truncated image file" if "truncated" in msg.lower() else f"unreadable image: {msg}"
        raise BadImageError(path, reason) from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise BadImageError(path, f"corrupt image: {e}") from None
    if arr.size == 0:
        raise BadImageError(path, "image has no pixels")
    return _to_uint8_rgb(arr, path)


def read_and_hash(path: str | Path) -> tuple[np.ndarray, str]:
    """Read a file once: return the decoded image and the sha256 of its bytes."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    return decode_image(data, path), hashlib.sha256(data).hexdigest()


def load_image(path: str | Path) -> np.ndarray:
    """Read one image file as ``H×W×3 uint8`` RGB (see the module docstring)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    return decode_image(data, path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def format_bad_files(bad: Iterable[BadFile], limit: int = 50) -> str:
    bad = list(bad)
    lines = [f"  - {b.path}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  … and {len(bad) - limit} more")
    return "\n".join(lines)
