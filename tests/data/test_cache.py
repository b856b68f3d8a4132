"""The decode-once memory-mapped image cache: same pixels, decoded once, shared, rebuilt when stale."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ana_lightning.data import datamodules
from ana_lightning.data.cache import ImageCache
from ana_lightning.data.datamodules import SingleLabelDataModule
from ana_lightning.data.images import BadImageError, load_image
from ana_lightning.data.transforms import build_transform

from conftest import write_class_images


def _images(tmp_path: Path, n: int = 6) -> list[str]:
    """Images of different sizes and formats (the cache resizes them all to one size)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 40 + 7 * i, 50 + 3 * i
        p = tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


class _CountingLoader:
    def __init__(self, log: Path | None = None):
        self.calls = 0
        self.log = log

    def __call__(self, path: str) -> np.ndarray:
        self.calls += 1
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(path + "\n")
        return load_image(path)


def test_cache_holds_the_resized_decoded_images(tmp_path):
    paths = _images(tmp_path)
    tf = build_transform(32)
    cache = ImageCache.build(paths, 32, tf.resize, cache_dir=tmp_path / "cache")
    assert cache.path.suffix == ".npy" and len(cache) == len(paths)
    for i, p in enumerate(paths):
        img = cache[i]
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert np.array_equal(img, tf.resize(load_image(p)))
    img = cache[0]
    img[:] = 0  # a private copy: augmentations may write into it without touching the cache
    assert cache[0].any()


def test_decoded_once_then_reused_and_rebuilt_when_stale(tmp_path):
    paths = _images(tmp_path)
    tf = build_transform(24)
    loader = _CountingLoader()
    first = ImageCache.build(paths, 24, tf.resize, cache_dir=tmp_path / "c", loader=loader)
    assert loader.calls == len(paths)
    again = ImageCache.build(paths, 24, tf.resize, cache_dir=tmp_path / "c", loader=loader)
    assert loader.calls == len(paths) and again.path == first.path  # nothing decoded the second time
    # Another size, or changed content (another digest), is another cache.
    other = ImageCache.build(paths, 16, build_transform(16).resize, cache_dir=tmp_path / "c", loader=loader)
    assert other.path != first.path and loader.calls == 2 * len(paths)
    changed = ImageCache.build(
        paths, 24, tf.resize, digests=["x"] * len(paths), cache_dir=tmp_path / "c", loader=loader
    )
    assert changed.path != first.path
    # A damaged cache file is rebuilt, not read.
    first.path.write_bytes(b"not an array")
    calls = loader.calls
    rebuilt = ImageCache.build(paths, 24, tf.resize, cache_dir=tmp_path / "c", loader=loader)
    assert loader.calls == calls + len(paths) and np.array_equal(rebuilt[2], tf.resize(load_image(paths[2])))


def test_bad_image_names_the_file_and_leaves_no_cache(tmp_path):
    paths = _images(tmp_path, 4)
    data = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(BadImageError, match=Path(paths[1]).name):
        ImageCache.build(paths, 16, build_transform(16).resize, cache_dir=tmp_path / "c", threads=1)
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix in (".npy", ".tmp")]


def _build_in_process(paths, cache_dir, log, queue):
    cache = ImageCache.build(
        paths, 20, build_transform(20).resize, cache_dir=cache_dir, loader=_CountingLoader(log)
    )
    queue.put((str(cache.path), int(cache.array.astype(np.int64).sum())))


def test_processes_building_at_once_decode_once(tmp_path):
    """DDP ranks on a node start together: one decodes, the others wait and map the same file."""
    paths = _images(tmp_path, 8)
    log = tmp_path / "decoded.txt"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(paths, tmp_path / "c", log, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == len(paths)  # decoded once in all
    assert len(set(results)) == 1  # same file, same pixels


def test_datamodule_mmap_cache_with_workers(tmp_path, monkeypatch):
    root = write_class_images(tmp_path / "d", {"AC-1": 6, "AC-2": 6})
    dm = SingleLabelDataModule(
        root=str(root),
        image_size=32,
        batch_size=4,
        cache_images="mmap",
        image_cache_dir=str(tmp_path / "cache"),
        num_workers=2,
    )
    dm.setup()
    ds = dm.dataset("val")
    assert isinstance(ds._cache, ImageCache)
    assert len(pickle.dumps(ds._cache)) < 5_000  # workers get a handle, not the pixels

    def no_decode(path):
        raise AssertionError(f"{path} decoded again after caching")

    monkeypatch.setattr(datamodules, "load_image", no_decode)  # what RecordDataset would call without a cache
    with_workers = [b["image"] for b in dm.val_dataloader()]
    dm.hparams.num_workers = 0
    in_process = [b["image"] for b in dm.val_dataloader()]
    assert torch.equal(torch.cat(with_workers), torch.cat(in_process))
    memory = SingleLabelDataModule(root=str(root), image_size=32, batch_size=4, cache_images=True)
    memory.setup()
    monkeypatch.undo()
    assert torch.equal(torch.cat([b["image"] for b in memory.val_dataloader()]), torch.cat(in_process))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked (Linux)")
def test_a_cache_built_in_worker_processes_is_the_one_built_in_threads(tmp_path, monkeypatch):
    import ana_lightning.data.images as images

    paths = _images(tmp_path)
    tf = build_transform(32)
    monkeypatch.setenv("ANA_IO_PROCESSES", "1")
    threads = ImageCache.build(paths, 32, tf.resize, cache_dir=tmp_path / "threads")
    monkeypatch.setenv("ANA_IO_PROCESSES", "2")
    monkeypatch.setattr(images, "PROCESS_MIN_ITEMS", 1)
    forked = ImageCache.build(paths, 32, tf.resize, cache_dir=tmp_path / "forked")
    assert np.array_equal(np.asarray(forked.array), np.asarray(threads.array))
