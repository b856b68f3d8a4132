"""Decode-once image cache: every image decoded and resized once into one memory-mapped uint8 file.

HEp-2 datasets are small (hundreds to tens of thousands of fields), so after one decode the whole
split fits in a ``N × S × S × 3`` uint8 array. It is a ``.npy`` file opened with ``mmap_mode="r"``:
DataLoader workers and the DDP ranks of a node read the same pages of the OS page cache, so the
images sit in memory once per node, and no JPEG/TIFF is decoded again for the rest of the run (nor
by later runs over the same files at the same size).

The file name is a digest of the files (path + sha256), the size, the resize method and the bit depth
(``data.bit_depth``, ``data.channels``), so a changed image or size gives a new cache and a stale one is never read.
The first process to take the file lock decodes (:func:`~.images.decode_map`: worker processes or threads) into a
temporary file and renames it into place; the others wait on the lock and open the finished file.

>>> cache = ImageCache.build(paths, image_size=224, resize=transform.resize, digests=shas)  # doctest: +SKIP
>>> cache[0].shape  # doctest: +SKIP
(224, 224, 3)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from filelock import FileLock

from .images import decode_map, load_image, read_settings

__all__ = ["ImageCache", "default_cache_dir", "save_npz_atomic"]

log = logging.getLogger(__name__)

_VERSION = "v1"


def default_cache_dir() -> Path:
    """``$ANA_CACHE_DIR``, else ``<tmp>/ana-lightning-cache`` (node-local; under SLURM ``$TMPDIR`` is
    usually the job's local scratch, shared by the job's ranks on that node)."""
    env = os.environ.get("ANA_CACHE_DIR")
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "ana-lightning-cache"


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` into a temporary file beside ``path``, renamed into place: runs or ranks writing at once
    leave one whole file, never a torn one. Creates the folder; an ``OSError`` is the caller's to handle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _file_identity(path: str, digest: str | None) -> str:
    if digest:
        return f"{path}|{digest}"
    st = Path(path).stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


class ImageCache:
    """Read-only view of a built cache; ``cache[i]`` is image ``i`` as a writable ``H×W×3`` uint8 array.

    Picklable without its data: each DataLoader worker / spawned process re-opens the memory map.
    """

    def __init__(self, path: str | Path, n: int, image_size: int):
        self.path = Path(path)
        self.n, self.image_size = int(n), int(image_size)
        self._array: np.ndarray | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        paths: Sequence[str],
        image_size: int,
        resize: Callable[[np.ndarray], np.ndarray],
        digests: Sequence[str | None] | None = None,
        cache_dir: str | Path | None = None,
        resize_name: str = "area",
        threads: int | None = None,
        loader: Callable[[str], np.ndarray] | None = None,
    ) -> ImageCache:
        """The cache of ``paths`` at ``image_size``, decoded now unless an identical one exists.

        ``resize`` maps a decoded ``H×W×3`` uint8 image to ``image_size × image_size × 3``;
        ``resize_name`` names it in the cache key (change it when the resize method changes);
        ``loader`` decodes a file (default :func:`~ana_lightning.data.images.load_image`).
        A file that cannot be read raises :class:`~ana_lightning.data.images.BadImageError` naming it.
        """
        paths = [str(p) for p in paths]
        if not paths:
            raise ValueError("ImageCache.build: no images to cache")
        digests = list(digests) if digests is not None else [None] * len(paths)
        if len(digests) != len(paths):
            raise ValueError(f"ImageCache.build: {len(paths)} paths but {len(digests)} digests")
        # the bit depth 16-bit files are read at (data.bit_depth) and a multi-channel TIFF's channel order
        # (data.channels) change their pixels: part of the key
        h = hashlib.sha256(f"{_VERSION}|{image_size}|{resize_name}|{read_settings()}".encode())
        for p, d in zip(paths, digests, strict=True):
            h.update(_file_identity(p, d).encode())
            h.update(b"\n")
        key = h.hexdigest()[:24]
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"{key}_{len(paths)}x{image_size}.npy"
        cache = cls(final, len(paths), image_size)
        if cache._valid():
            log.debug("image cache hit: %s", final)
            return cache
        with FileLock(str(final) + ".lock"):
            if cache._valid():  # another rank or worker built it while we waited
                return cache
            cache._write(paths, resize, loader or load_image, threads)
        return cache

    def _valid(self) -> bool:
        if not self.path.is_file():
            return False
        try:
            arr = np.load(self.path, mmap_mode="r")
        except (ValueError, OSError) as e:
            log.warning("image cache %s is unreadable (%s); rebuilding it", self.path, e)
            return False
        return arr.shape == (self.n, self.image_size, self.image_size, 3) and arr.dtype == np.uint8

    def _write(self, paths: list[str], resize, loader, threads: int | None) -> None:
        shape = (len(paths), self.image_size, self.image_size, 3)
        log.info(
            "decoding %d images once into the cache %s (%.1f MB)", len(paths), self.path, np.prod(shape) / 1e6
        )
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for i, img in enumerate(decode_map(lambda p: resize(loader(p)), paths, threads=threads)):
                if img.shape != shape[1:] or img.dtype != np.uint8:
                    raise ValueError(
                        f"{paths[i]}: resize gave {img.shape} {img.dtype}, expected {shape[1:]} uint8"
                    )
                out[i] = img
            out.flush()
            del out
            os.replace(tmp, self.path)  # atomic: readers see a complete file or none
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.path.with_suffix(".json").write_text(
            json.dumps({"image_size": self.image_size, "paths": paths}, indent=0)
        )

    # ------------------------------------------------------------------ reading
    @property
    def array(self) -> np.ndarray:
        """The whole cache, memory-mapped read-only (opened on first use in each process)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return np.array(self.array[i])  # a private copy: augmentations may write into it

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # never pickle the mapped data; re-open in the new process
        return state
