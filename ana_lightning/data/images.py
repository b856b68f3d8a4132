"""Robust image reading: the only module that opens image files.

Every image becomes an ``H×W×3`` ``uint8`` RGB array, whatever it was on disk:

- 8-bit RGB / grey / palette / RGBA (alpha dropped) JPEG, PNG, BMP, TIFF;
- 16-bit (and 32-bit integer) grey or RGB, scaled by the 16-bit range (``/257``),
  or by the camera's range when the bit depth is set (:func:`set_bit_depth`: ``data.bit_depth``,
  ``ana-predict bit_depth=``; 12 reads 0–4095 as 0–255), never by the image's own maximum, so a faint
  negative stays faint; a 32-bit integer or floating-point file with values beyond 65535 is refused;
- an animation (a GIF or PNG of several frames) is refused, as a stack of TIFF pages is: one field per file;
- a TIFF of several channels (a multi-page, OME- or ImageJ-TIFF, as microscopes and Fiji save them) as the
  RGB composite the models read, FITC in green and DAPI in blue: which channel is which comes from the file's
  channel names, or from :func:`set_channels` (``data.channels``, ``ana-predict channels=``);
- truncated or unreadable files raise :class:`BadImageError` naming the path and the reason.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

log = logging.getLogger(__name__)

__all__ = [
    "decode_map",
    "decode_processes",
    "decode_threads",
    "exposure_problem",
    "saturated_share",
    "warn_overexposed",
    "walk_files",
    "walk_folders",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "BadFile",
    "is_image_path",
    "load_image",
    "decode_image",
    "read_and_hash",
    "sha256_file",
    "format_bad_files",
    "set_bit_depth",
    "bit_depth",
    "check_bit_depth",
    "set_channels",
    "channels",
    "check_channels",
    "read_settings",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
# Files that file managers and microscopes leave behind; never images, never errors.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "__macosx"})

# A truncated file must fail loudly, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Fluorescence fields are at most a few tens of megapixels; anything far larger is a decompression bomb.
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # one limit and one message (PIL's own default, 89 M, would refuse first)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a SLURM task or taskset: the CPUs it may use, not the node's
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _env_count(name: str) -> int | None:
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={env!r}: expected a whole number, at least 1")
    return n


def decode_threads() -> int:
    """How many threads decode a pass too small for processes (:func:`decode_map`), or any pass where
    processes are off or cannot be forked. ``$ANA_IO_THREADS`` when set, else 2 (1 on a single CPU).

    More threads did not help on the 2-core machine. A cold setup of the 10,809 I3A cells took 31.5 s with
    1 thread, 32.2 s with 2, 38.4 s with 4 (the earlier fixed count) and 41.6 s with 6
    (``experiments/benchmarks/decode_threads.py``). A cell's decode is about a tenth of a millisecond; the
    numpy work around it on arrays that small holds the GIL, so threads mostly take turns. On a file
    system with high latency, set the variable to try more threads."""
    n = _env_count("ANA_IO_THREADS")
    return n if n is not None else min(2, _cpus())


# Below this many items a pass stays in threads: forking workers costs more than it saves.
PROCESS_MIN_ITEMS = 512
_MAX_PROCESSES = 8


def decode_processes() -> int:
    """How many worker processes :func:`decode_map` forks for a large pass: ``$ANA_IO_PROCESSES`` when set
    (1 turns processes off), else the CPUs this process may use, at most 8. Always 1 where a process cannot
    be forked (macOS, Windows: threads only) and inside a daemonic process (a DataLoader worker)."""
    if not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        return 1
    n = _env_count("ANA_IO_PROCESSES")
    return n if n is not None else min(_MAX_PROCESSES, _cpus())


# The functions of the passes now running in processes, by token: the workers are forked after a pass
# registers its function, so they call it from their copy of this dict and only items and results
# travel between processes (the function need not pickle: a closure over the run's masks is fine).
_FORKED: dict[int, Callable[[Any], Any]] = {}
_FORKED_LOCK = threading.Lock()
_TOKENS = itertools.count()


def _call_forked(token: int, chunk: list) -> list:
    fn = _FORKED[token]
    return [fn(x) for x in chunk]


def decode_map(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    threads: int | None = None,
    progress: Callable[[], Any] | None = None,
    min_items: int | None = None,
) -> Iterator[Any]:
    """``fn(item)`` for each item, in order, yielded as they come: the decoding passes of a run's setup
    (the bad-file scan, cell medians, near-duplicate hashes, cached images).

    With at least ``min_items`` items (default :data:`PROCESS_MIN_ITEMS`) and :func:`decode_processes`
    above 1, the items go in chunks to that many forked worker processes: the numpy and PIL work around
    decoding a small cell holds the GIL, so threads cannot use a many-core node (round 26: 80 s of a 117 s
    GPU run were decoding in threads). Else ``threads`` threads (default :func:`decode_threads`). ``fn`` runs in the workers: it must not change
    state it shares with the caller (write into the caller's dicts), but return what the caller keeps; its
    items and results must pickle. ``progress()`` is called once per item. An exception in ``fn`` is
    raised here as it was raised there; a worker that dies (killed for memory) is logged and the pass is
    done again in threads.
    """
    items = list(items)
    procs = min(decode_processes(), max(1, len(items)))
    if procs > 1 and len(items) >= (PROCESS_MIN_ITEMS if min_items is None else min_items):
        token = next(_TOKENS)
        size = max(1, min(64, len(items) // (8 * procs)))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        done = 0
        with _FORKED_LOCK:
            _FORKED[token] = fn
        try:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(procs, mp_context=ctx) as pool:
                futures = [pool.submit(_call_forked, token, c) for c in chunks]  # workers fork here
                try:
                    for f in futures:
                        for r in f.result():
                            done += 1
                            if progress is not None:
                                progress()
                            yield r
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
            return
        except BrokenProcessPool as e:
            log.warning(
                "a decoding worker process died (%s); decoding the remaining %d of %d items in threads "
                "(ANA_IO_PROCESSES=1 skips the processes)",
                e,
                len(items) - done,
                len(items),
            )
            items = items[done:]
        finally:
            with _FORKED_LOCK:
                _FORKED.pop(token, None)
    with ThreadPoolExecutor(max(1, threads or decode_threads())) as pool:
        for r in pool.map(fn, items):
            if progress is not None:
                progress()
            yield r


class BadImageError(ValueError):
    """An image file that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # raised in a decoding worker process (decode_map): rebuilt here with both parts
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class BadFile:
    """A file or folder rejected while reading a dataset."""

    path: str
    reason: str


def first_few(items: Sequence[Any], n: int, sep: str = ", ") -> str:
    """The first ``n`` of ``items`` joined by ``sep``, then how many more, for messages that name files:

    >>> first_few(["a.png", "b.png", "c.png", "d.png"], 2)
    'a.png, b.png and 2 more'
    """
    return sep.join(str(i) for i in items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


#: Microscope makers' own file formats: Bio-Formats (Fiji) reads them, this package does not.
MICROSCOPE_FORMATS = {
    ".czi": "Zeiss CZI",
    ".zvi": "Zeiss ZVI",
    ".lsm": "Zeiss LSM",
    ".nd2": "Nikon ND2",
    ".lif": "Leica LIF",
    ".lof": "Leica LOF",
    ".oib": "Olympus OIB",
    ".oir": "Olympus OIR",
    ".vsi": "Olympus VSI",
    ".ims": "Imaris",
    ".dv": "DeltaVision",
}
#: How to turn them into files that are read, channel names kept.
EXPORT_HINT = (
    "export them as TIFF, e.g. in Fiji with Bio-Formats (File > Save As > OME-TIFF keeps the channel names, "
    "by which DAPI and FITC are then read)"
)


def not_an_image(path: str | Path) -> str:
    """Why a file that is not an image is not read: its extension, and for a microscope's own format what it is
    and how to export it."""
    suffix = Path(path).suffix.lower()
    if suffix in MICROSCOPE_FORMATS:
        return f"a {MICROSCOPE_FORMATS[suffix]} microscope file, not read here: {EXPORT_HINT.replace('them', 'it')}"
    return f"not an image file (extension {Path(path).suffix or 'none'!r})"


def is_file_entry(path: str | Path) -> bool:
    """A file, or a symlink that does not lead to a folder — dangling or looping ones included, so
    they are reported like any unreadable file instead of vanishing from a listing."""
    p = Path(path)
    return p.is_file() or (p.is_symlink() and not p.is_dir())


def is_ignored(path: str | Path) -> bool:
    name = Path(path).name
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (both real paths)."""
    return os.path.commonpath([path, folder]) == folder


def read_before(dirpath: str | Path, seen: set[str], dataset: str | Path) -> bool:
    """For a walk of the folder ``dataset`` that follows symlinked folders (``os.walk(followlinks=True)``):
    True, with a warning naming it, when the symlinked folder ``dirpath`` is not to be entered:

    - it leads inside ``dataset`` (that folder is read under its own path and label, never again under the
      link's), or to a folder above ``dataset`` (a loop);
    - it leads to a folder already read (``seen``: real paths, updated here), e.g. a second link to one
      folder outside the dataset.

    A folder that is not a link is always read, the walk's root included; a link leading outside the
    dataset is read once, as if its folder were there."""
    real = os.path.realpath(dirpath)
    if os.path.islink(dirpath):
        top = os.path.realpath(dataset)
        why = (
            "leads inside the dataset, where that folder is read under its own path"
            if is_within(real, top)
            else "leads to a folder above the dataset (a loop)"
            if is_within(top, real)
            else "leads to a folder already read through another link"
            if real in seen
            else ""
        )
        if why:
            log.warning("%s: a symlinked folder that %s (%s): not read here", dirpath, why, real)
            return True
    elif real in seen:
        return True
    seen.add(real)
    return False


def walk_folders(root: str | Path, dataset: str | Path | None = None, seen: set[str] | None = None):
    """``os.walk(root)`` as the dataset readers walk: ``(dirpath, dirnames, filenames)`` with symlinked
    folders followed when they lead outside the dataset, each such folder once (:func:`read_before`), and
    hidden and system folders (``.thumbs``, ``__MACOSX``) not entered; ``dirnames`` sorted (a caller may
    prune it further). ``dataset`` is the whole dataset's folder (default ``root``); ``seen`` is shared by
    the walks of one dataset (a reader walking class folder by class folder)."""
    seen = set() if seen is None else seen
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if dirpath != str(root) and read_before(dirpath, seen, dataset or root):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        yield dirpath, dirnames, filenames


def walk_files(
    root: str | Path, dataset: str | Path | None = None, seen: set[str] | None = None
) -> list[Path]:
    """Every file entry under the folder ``root``, recursively and sorted: files, and symlinks that do not
    lead to a folder (dangling or looping ones too, to be reported as unreadable rather than vanish).

    Symlinked folders are followed when they lead outside the dataset (a lab's export often links its
    slides in), each such folder once (:func:`read_before`); ``dataset`` is the whole dataset's folder
    (default ``root``), and ``seen`` is shared by the walks of one dataset (a reader walking class folder by
    class folder). Hidden and system folders (``.thumbs``, ``__MACOSX``) are not entered; hidden files are
    returned for the caller to leave out (:func:`is_ignored`). The walk is :func:`walk_folders`'."""
    out = [Path(d) / name for d, _, names in walk_folders(root, dataset, seen) for name in names]
    return sorted(p for p in out if is_file_entry(p))


#: Above this share of saturated pixels a field is called overexposed (the 155 ICAP reference fields: at most 0.12 %).
SATURATED_SHARE = 0.05


def saturated_share(image: np.ndarray) -> float:
    """The share of an ``H×W×3 uint8`` image's pixels that are saturated (255 in their brightest channel)."""
    image = np.asarray(image)
    if not image.size:
        return 0.0
    clipped = image[..., 0] >= 255  # channel by channel: 15x faster than a max over the last axis
    for c in range(1, image.shape[-1]):
        clipped |= image[..., c] >= 255
    return np.count_nonzero(clipped) / clipped.size


def exposure_problem(image: np.ndarray, max_share: float = SATURATED_SHARE) -> str:
    """``""``, or why an ``H×W×3 uint8`` image is a poor acquisition to read a pattern from: overexposed,
    when more than ``max_share`` of its pixels are saturated (:func:`saturated_share`), so the texture that
    tells the patterns apart is clipped. The image is still read; the caller shows the note."""
    share = saturated_share(image)
    if share > max_share:
        return (
            f"overexposed: {share:.0%} of its pixels are saturated, so the pattern's texture is clipped and the "
            "verdict may be unreliable (acquire it with a shorter exposure or lower gain)"
        )
    return ""


def warn_overexposed(shares: Iterable[tuple[str, float]], unit: str = "image") -> None:
    """One warning naming the images (``unit``: what they are, image or field) read although overexposed:
    those of ``(path, saturated_share)`` over :data:`SATURATED_SHARE`, as ``path (37% saturated)``."""
    listed = [f"{path} ({share:.0%} saturated)" for path, share in shares if share > SATURATED_SHARE]
    if listed:
        log.warning(
            "%d %s(s) overexposed (over %.0f %% of their pixels saturated: the pattern's texture is clipped, so "
            "their verdicts may be unreliable): %s",
            len(listed),
            unit,
            100 * SATURATED_SHARE,
            first_few(listed, 5, "; "),
        )


#: Where the bit depth set by :func:`set_bit_depth` lives: an environment variable, so DataLoader workers and
#: processes started by spawn (DDP, macOS) read images as the process that set it does.
BIT_DEPTH_ENV = "ANA_BIT_DEPTH"


def check_bit_depth(value, key: str = "bit_depth") -> int | None:
    """``value`` as a camera bit depth: null, or an integer from 9 to 16; anything else is an error naming ``key``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    try:
        depth = int(value)
        ok = depth == float(value) and 9 <= depth <= 16
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{key}={value!r}: the camera's bit depth for images stored with more than 8 bits per pixel is "
            "an integer from 9 to 16 (12 for a 12-bit camera saved as 16-bit TIFF), or null for the file's "
            "own range (16-bit files read as a share of 65535); 8-bit files are read as they are either way"
        )
    return depth


def set_bit_depth(value) -> int | None:
    """Read every image with more than 8 bits per pixel as ``value``-bit camera data from now on, in this
    process and the processes it starts: ``12`` maps 0–4095 to 0–255 (a 12-bit camera saved as 16-bit
    TIFF), a pixel above 4095 is an error naming the file; ``None`` (the default) reads the file's own range
    (``/257`` for 16 bit). 8-bit files are unaffected. Returns the depth set."""
    depth = check_bit_depth(value)
    if depth is None:
        os.environ.pop(BIT_DEPTH_ENV, None)
    else:
        os.environ[BIT_DEPTH_ENV] = str(depth)
    return depth


def bit_depth() -> int | None:
    """The bit depth set by :func:`set_bit_depth` (``None``: the file's own range)."""
    return check_bit_depth(os.environ.get(BIT_DEPTH_ENV), BIT_DEPTH_ENV)


#: Where the channel order set by :func:`set_channels` lives (an environment variable, as the bit depth).
CHANNELS_ENV = "ANA_CHANNELS"
#: What a channel of a multi-channel TIFF is, by the names microscopes and Fiji give them (lower case, letters and
#: digits only): the pattern's stain (FITC, read as the green channel) or the nuclear counterstain (DAPI, blue).
CHANNEL_NAMES = {
    "fitc": (
        "fitc",
        "gfp",
        "egfp",
        "green",
        "488",
        "af488",
        "a488",
        "alexa488",
        "alexafluor488",
        "dylight488",
    ),
    "dapi": (
        "dapi",
        "hoechst",
        "hoechst33342",
        "hoechst33258",
        "blue",
        "405",
        "nuclei",
        "nucleus",
        "counterstain",
    ),
    "skip": ("skip", "none", "other", "ignore"),
}
_ROLE_OF = {name: role for role, names in CHANNEL_NAMES.items() for name in names}


def _channel_role(name: str) -> str | None:
    """``fitc``, ``dapi`` or ``skip`` for a channel's name (``FITC-IgG``, ``DAPI 1``, ``Alexa Fluor 488`` …);
    None when the name says neither."""
    norm = "".join(ch for ch in str(name).lower() if ch.isalnum())
    if norm in _ROLE_OF:
        return _ROLE_OF[norm]
    for role in ("fitc", "dapi"):
        if any(norm.startswith(n) for n in CHANNEL_NAMES[role] if len(n) > 3):
            return role
    return None


def check_channels(value, key: str = "channels") -> tuple[str, ...] | None:
    """``value`` as the roles of a multi-channel TIFF's channels in file order (``[fitc,dapi]``, or
    ``"fitc,dapi"``): each ``fitc``, ``dapi`` or ``skip`` (or a name meaning one, e.g. ``GFP``, ``Hoechst``),
    one ``fitc`` and at most one ``dapi``; null reads the channels by the names the file gives them. Anything
    else is an error naming ``key``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "auto")):
        return None
    items = (
        [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    )
    roles = tuple(_channel_role(v) for v in items)
    if None in roles or roles.count("fitc") != 1 or roles.count("dapi") > 1:
        raise ValueError(
            f"{key}={value!r}: the channels of a multi-channel TIFF in file order, each fitc (the pattern's "
            "stain, e.g. FITC or GFP), dapi (the nuclear counterstain, e.g. DAPI or Hoechst) or skip: exactly one "
            f"fitc and at most one dapi, e.g. {key}=[fitc,dapi] or {key}=[dapi,skip,fitc]; null reads the names "
            "the file gives its channels"
        )
    return roles


def set_channels(value) -> tuple[str, ...] | None:
    """Read every multi-channel TIFF from now on with its channels in the order ``value`` says
    (:func:`check_channels`), in this process and the processes it starts; None: by the channel names the
    file carries. Other files are unaffected. Returns the roles set."""
    roles = check_channels(value)
    if roles is None:
        os.environ.pop(CHANNELS_ENV, None)
    else:
        os.environ[CHANNELS_ENV] = ",".join(roles)
    return roles


def channels() -> tuple[str, ...] | None:
    """The channel order set by :func:`set_channels` (None: the file's own channel names)."""
    return check_channels(os.environ.get(CHANNELS_ENV), CHANNELS_ENV)


def read_settings() -> str:
    """How files are read now, for the keys of caches of decoded pixels: the bit depth (``""`` when unset),
    then ``|channels=…`` when a channel order is set (nothing when not, so older keys stay valid)."""
    roles = channels()
    return str(bit_depth() or "") + (f"|channels={','.join(roles)}" if roles else "")


def _counts_top(top: float, path: str | Path) -> float:
    """The value that becomes 255 for a camera's integer (or floating-point counts) data whose brightest
    pixel is ``top``: the set bit depth's, else 65535 (with the once-per-process low-bit-depth warning)."""
    depth = bit_depth()
    if depth is None:
        _warn_low_bit_depth(int(top), path)
        return 65535.0
    full = float(2**depth - 1)
    if top > full:
        raise BadImageError(
            path,
            f"a pixel value of {top:g} is above the {depth}-bit range (0–{full:g}) that bit_depth={depth} reads: "
            "set bit_depth (data.bit_depth in training) to the camera's bit depth, or null for the file's own range",
        )
    return full


_LOW_BIT_DEPTH_WARNED = False


def _warn_low_bit_depth(top: int, path: str | Path) -> None:
    """Once per process: a 16-bit image that uses only a 12-bit (or smaller) range is read, like every
    16-bit image, as a share of 65535, so it arrives dim and with few grey levels. It is not rescaled
    per image (that would make dim fields, negatives among them, as bright as positive ones)."""
    global _LOW_BIT_DEPTH_WARNED
    if 0 < top < 4096 and not _LOW_BIT_DEPTH_WARNED:
        _LOW_BIT_DEPTH_WARNED = True
        log.warning(
            "%s: a 16-bit (or floating-point counts) image whose brightest pixel is %d of 65535 (12-bit camera "
            "data?) is read at under 1/16 of the 8-bit range, with %d grey levels; if the camera's images are all "
            "like it, set its bit depth (data.bit_depth=12 to train or evaluate, bit_depth=12 for ana-predict "
            "and ana-app) to read 0-4095 as the full range (shown once)",
            path,
            top,
            int(top / 257 + 0.5) + 1,
        )


def _to_uint8_rgb(arr: np.ndarray, path: str | Path, camera: bool = True) -> np.ndarray:
    if not arr.dtype.isnative:  # big-endian 16-bit TIFF (ImageJ / Fiji's default)
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not camera and arr.dtype != np.uint8:
        # a mask: any non-zero value marks the cell. Scaled like a camera's counts, a 16-bit 0/1 mask or a
        # label image (1…N, as segmentation tools save them) would read as 0 everywhere: no cell at all
        arr = (arr != 0).astype(np.uint8) * 255
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        top = _counts_top(int(arr.max(initial=0)), path)  # 65535: x * 255 / 65535 = x / 257
        arr = (arr.astype(np.float32) * (255.0 / top) + 0.5).astype(np.uint8)
    elif arr.dtype in (np.int32, np.uint32, np.int16):
        # PIL's mode "I" holds 16-bit data in int32 ("I;16" TIFFs often arrive this way).
        hi = int(arr.max(initial=0))
        if hi > 65535 and not bit_depth():
            # read as a share of 2**31 or 2**32 such a field would be black: refused, as floats above 65535 are
            raise BadImageError(
                path,
                f"{arr.dtype.itemsize * 8}-bit integer image with values up to {hi}: not an 8-bit or 16-bit "
                "range; export it as an 8- or 16-bit image",
            )
        top = _counts_top(hi, path)
        arr = (np.clip(arr.astype(np.float64), 0, None) / top * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype in (np.float16, np.float32, np.float64):
        if not np.isfinite(arr).all():
            raise BadImageError(path, "floating-point image with NaN or infinite values")
        hi = float(arr.max(initial=0))
        if hi > 65535.0:
            raise BadImageError(
                path,
                f"floating-point image with values up to {hi:g}: not a 0–1, 8-bit or 16-bit range; "
                "export it as an 8- or 16-bit image",
            )
        # 0–1 (normalised), else raw counts read as 16-bit integers are (never per image: one scale)
        top = 1.0 if hi <= 1.0 else _counts_top(hi, path)
        arr = (np.clip(arr.astype(np.float64) / top, 0, 1) * 255.0 + 0.5).astype(np.uint8)
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


def _full_pages(img: Image.Image) -> int:
    """A TIFF's full-resolution pages: a reduced-resolution page (a preview or pyramid level: NewSubfileType
    bit 0, or another size) does not count. Leaves ``img`` on its first page."""
    n = getattr(img, "n_frames", 1)
    if n <= 1:
        return 1
    size, full = img.size, 0
    for i in range(n):
        img.seek(i)
        full += not (int(img.tag_v2.get(254, 0)) & 1) and img.size == size
    img.seek(0)
    return full


def _sixteen_bit_colour(data: bytes, img: Image.Image) -> bool:
    """A PNG or TIFF of 16 bits per colour channel, which PIL hands over as 8-bit RGB (the high byte only)."""
    if img.format == "PNG":  # IHDR: bit depth at byte 24, colour type at 25 (2 RGB, 6 RGBA)
        return len(data) > 25 and data[24] == 16 and data[25] in (2, 6)
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)
        return isinstance(bits, tuple) and len(bits) >= 3 and all(int(b) == 16 for b in bits)
    return False


def _decode_sixteen_bit_colour(data: bytes, path: str | Path) -> np.ndarray:
    """A 16-bit colour PNG / TIFF as ``H×W×C uint16`` RGB(A), decoded by OpenCV (PIL keeps 8 bits of it)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BadImageError(
            path,
            "a 16-bit colour image that could not be decoded at 16 bits: save it as 16-bit grey (the FITC "
            "channel) or as 8-bit RGB",
        )
    return arr[..., [2, 1, 0, 3][: arr.shape[2]]]  # OpenCV's BGR(A) → RGB(A)


def _tiff_channel_names(tf) -> list[str]:
    """The names a TIFF gives its channels: OME-XML's ``Channel Name`` (else ``Fluor``) of its first image, or
    ImageJ's slice labels; ``[]`` when it names none."""
    if tf.is_ome:
        import xml.etree.ElementTree as ET

        pixels = next((e for e in ET.fromstring(tf.ome_metadata).iter() if e.tag.endswith("Pixels")), None)
        found = [
            c.get("Name") or c.get("Fluor") or ""
            for c in (pixels if pixels is not None else [])
            if c.tag.endswith("Channel")
        ]
    elif tf.is_imagej:
        found = [str(n) for n in (tf.imagej_metadata or {}).get("Labels") or []]
    else:
        found = []
    return found if all(found) else []


def _plane_size(series) -> tuple[int, ...]:
    """A tifffile series' height and width."""
    return tuple(n for a, n in zip(series.axes, series.shape, strict=True) if a in "YX")


def _tiff_channels(data: bytes, path: str | Path, camera: bool, reason: str) -> np.ndarray:
    """A TIFF that holds its channels as pages or as extra samples (a microscope's or Fiji's DAPI + FITC), as an
    ``H×W×3`` composite of the file's own pixel type: FITC in green, DAPI in blue, red empty, as the models
    read fields. Which channel is which: :func:`channels` when set, else the file's channel names. A file
    that cannot be read so raises :class:`BadImageError` with ``reason`` (what PIL found); a stack
    of focal planes or time points, or several images in one file, is refused with what to save instead."""
    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise BadImageError(path, reason)
    import tifffile

    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a damaged file is reported below, once, by its path
    try:
        with warnings.catch_warnings(), tifffile.TiffFile(io.BytesIO(data)) as tf:
            warnings.simplefilter("ignore")
            first = tf.series[0]
            alike = 1 + sum(_plane_size(s) == _plane_size(first) for s in tf.series[1:])
            if alike > 1:
                raise BadImageError(
                    path,
                    f"a TIFF of {alike} images (positions or series); one image is read per file, "
                    "so save each as a file of its own",
                )
            if math.prod(_plane_size(first)) > MAX_PIXELS:
                raise BadImageError(
                    path,
                    f"{'×'.join(map(str, _plane_size(first)[::-1]))} pixels exceeds the limit of {MAX_PIXELS:,}",
                )
            arr, axes, names = first.asarray(), first.axes, _tiff_channel_names(tf)
    except BadImageError:
        raise
    except Exception:  # noqa: BLE001 - anything tifffile cannot read is the file's fault: say what PIL found
        raise BadImageError(path, reason) from None
    finally:
        quiet.setLevel(level)
    keep = [i for i, (a, n) in enumerate(zip(axes, arr.shape, strict=True)) if n > 1 or a in "YX"]
    arr, axes = arr.reshape([arr.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    extra = [a for a in axes if a not in "YX"]
    planes = [(a, arr.shape[axes.index(a)]) for a in extra if a in "ZT"]
    if planes:
        what = {"Z": "focal planes (a z-stack)", "T": "time points"}[planes[0][0]]
        raise BadImageError(
            path,
            f"a TIFF of {planes[0][1]} {what}; one plane is read per file, so save one plane, or a "
            "maximum-intensity projection, per field",
        )
    if len(extra) != 1 or axes.replace(extra[0], "") != "YX":
        raise BadImageError(
            path, f"a TIFF of dimensions {axes}: not an image of channels" if extra else reason
        )
    arr = np.moveaxis(arr, axes.index(extra[0]), -1)
    n = arr.shape[-1]
    if not camera:
        raise BadImageError(path, f"a mask of {n} channels or pages; save the mask as one grey image")
    roles, given = channels(), ""
    if roles is not None and len(roles) != n:
        given = f"channels={','.join(roles)} names {len(roles)}"
    elif roles is not None and names:
        # an order set for all files (or the model's, channels=auto) never overrules what a file's names say
        said = [_channel_role(name) for name in names]
        if any(r in ("fitc", "dapi") and r != want for r, want in zip(said, roles, strict=True)):
            given = f"channels={','.join(roles)} says otherwise (channels=null reads a file by its own names)"
    elif roles is None and names:
        roles = tuple(_channel_role(name) or "skip" for name in names)
        if roles.count("fitc") != 1 or roles.count("dapi") > 1:
            given = (
                "no channel name says which one is the pattern's stain (FITC)"
                if roles.count("fitc") == 0
                else "its names leave it ambiguous"
            )
    if roles is None or given:
        named = f" named {', '.join(names)}" if names else " with no channel names"
        raise BadImageError(
            path,
            f"a TIFF of {n} channels{named}"
            + (f"; {given}" if given else "")
            + ": say which is which, in file "
            "order, with channels=[…] (ana-predict, ana-app; data.channels=[…] to train or evaluate), each fitc "
            "(the pattern's stain), dapi (the nuclear counterstain) or skip, e.g. channels=[fitc,dapi]; or save "
            "the field as one RGB image, FITC in green and DAPI in blue",
        )
    out = np.zeros(arr.shape[:2] + (3,), arr.dtype)
    out[..., 1] = arr[..., roles.index("fitc")]
    if "dapi" in roles:
        out[..., 2] = arr[..., roles.index("dapi")]
    return out


def decode_image(data: bytes, path: str | Path = "<bytes>", camera: bool = True) -> np.ndarray:
    """Decode encoded image bytes into ``H×W×3 uint8``; raises :class:`BadImageError`. ``camera`` false: a
    mask, whose non-zero values mark the cell whatever bit depth is set (:func:`set_bit_depth`; see
    :func:`load_image`)."""
    try:
        with warnings.catch_warnings():
            # the check below names the limit; PIL's own error (at twice it) is still caught
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImageError(
                        path, f"{img.width}×{img.height} pixels exceeds the limit of {MAX_PIXELS:,}"
                    )
                if img.format != "TIFF" and getattr(img, "is_animated", False) and img.format != "MPO":
                    # a GIF / PNG / WebP animation (an MPO is a camera JPEG with its preview: its first picture)
                    raise BadImageError(
                        path,
                        f"an animation of {img.n_frames} frames: one field per file; save the frame to read "
                        "as a PNG or TIFF of its own",
                    )
                frames = _full_pages(img) if img.format == "TIFF" else 1
                if frames > 1:  # channels as pages (DAPI + FITC), or a stack
                    arr = _tiff_channels(data, path, camera, f"a TIFF of {frames} pages")
                elif _sixteen_bit_colour(data, img):
                    arr = _decode_sixteen_bit_colour(data, path)
                else:
                    img.load()
                    if img.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                        img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
                    arr = np.asarray(img)
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"too many pixels (decompression-bomb limit): {e}") from None
    except Image.UnidentifiedImageError:
        arr = _tiff_channels(data, path, camera, "not an image file (or an unsupported format)")
    except OSError as e:
        msg = str(e)
        reason = "truncated image file" if "truncated" in msg.lower() else f"unreadable image: {msg}"
        arr = _tiff_channels(data, path, camera, reason)
    except (SyntaxError, ValueError, EOFError) as e:
        arr = _tiff_channels(data, path, camera, f"corrupt image: {e}")
    if arr.size == 0:
        raise BadImageError(path, "image has no pixels")
    return _to_uint8_rgb(arr, path, camera)


def read_and_hash(path: str | Path, camera: bool = True) -> tuple[np.ndarray, str]:
    """Read a file once: return the decoded image and the sha256 of its bytes (``camera=False`` for a
    mask, as in :func:`load_image`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    return decode_image(data, path, camera), hashlib.sha256(data).hexdigest()


def load_image(path: str | Path, camera: bool = True) -> np.ndarray:
    """Read one image file as ``H×W×3 uint8`` RGB (see the module docstring). ``camera=False`` for a mask:
    8-bit as it is, any other type with every non-zero value as 255 (a 16-bit 0/1 mask or label image
    included), whatever bit depth is set."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    return decode_image(data, path, camera)


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
