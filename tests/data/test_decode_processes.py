"""Decoding passes in worker processes (``decode_map``): the same results as threads, in order, with the
errors and settings of the calling process."""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pytest
from PIL import Image

from ana_lightning.data import images
from ana_lightning.data.images import BadImageError, decode_map, load_image

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="worker processes are forked (Linux)"
)


@pytest.fixture
def processes(monkeypatch):
    """Every pass in 2 worker processes, however few its items."""
    monkeypatch.setenv("ANA_IO_PROCESSES", "2")
    monkeypatch.setattr(images, "PROCESS_MIN_ITEMS", 1)


def _pid(x):
    return os.getpid(), x * x


def test_decode_map_runs_a_closure_in_worker_processes_in_order(processes):
    offset = 7  # a closure: the function never pickles, the workers inherit it
    ticks = []
    out = list(decode_map(lambda x: (_pid(x), x + offset), range(200), progress=lambda: ticks.append(1)))
    assert [r[1] for r in out] == [x + 7 for x in range(200)]
    assert [r[0][1] for r in out] == [x * x for x in range(200)]
    pids = {r[0][0] for r in out}
    assert os.getpid() not in pids and len(pids) == 2
    assert len(ticks) == 200
    assert not images._FORKED  # the pass's function is let go


def test_decode_map_stays_in_threads_when_few_items_or_processes_off(monkeypatch):
    monkeypatch.setenv("ANA_IO_PROCESSES", "4")
    assert {r[0] for r in decode_map(_pid, range(20))} == {os.getpid()}  # under PROCESS_MIN_ITEMS
    monkeypatch.setenv("ANA_IO_PROCESSES", "1")
    monkeypatch.setattr(images, "PROCESS_MIN_ITEMS", 1)
    assert {r[0] for r in decode_map(_pid, range(20))} == {os.getpid()}
    for bad in ("0", "two"):
        monkeypatch.setenv("ANA_IO_PROCESSES", bad)
        with pytest.raises(ValueError, match=rf"ANA_IO_PROCESSES='{bad}'"):
            images.decode_processes()


def test_decode_processes_default_is_the_cpus_at_most_eight(monkeypatch):
    monkeypatch.delenv("ANA_IO_PROCESSES", raising=False)
    monkeypatch.setattr(images.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert images.decode_processes() == 8
    monkeypatch.setattr(images.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert images.decode_processes() == 2
    monkeypatch.setattr(images.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert images.decode_processes() == 1


def test_a_bad_file_in_a_worker_is_raised_here_naming_it(processes, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[:20])
    with pytest.raises(BadImageError) as e:
        list(decode_map(load_image, [str(good)] * 5 + [str(bad)]))
    assert e.value.path == str(bad) and e.value.reason.startswith(("truncated", "corrupt", "unreadable"))


def test_a_worker_that_dies_leaves_the_pass_to_threads(processes, caplog):
    parent = os.getpid()

    def dies_in_a_worker(x):
        if os.getpid() != parent:
            os._exit(1)  # as the kernel's OOM killer would end it
        return x + 1

    assert list(decode_map(dies_in_a_worker, range(50))) == [x + 1 for x in range(50)]
    assert "decoding worker process died" in caplog.text


def test_the_bit_depth_set_here_is_the_workers_too(processes, tmp_path):
    p = tmp_path / "12bit.png"
    Image.fromarray(np.full((8, 8), 4095, np.uint16)).save(p)
    try:
        images.set_bit_depth(12)
        (a,) = list(decode_map(load_image, [str(p)]))
    finally:
        images.set_bit_depth(None)
    assert a.max() == 255  # 4095 is the top of a 12-bit camera, not 4095/65535 of the 16-bit range


def test_an_i3a_setup_in_processes_is_the_one_in_threads(tmp_path, monkeypatch):
    """Scan, cell medians (the automatic groups), near-duplicate hashes and the cached cells: processes
    against one thread, each from an empty cache."""
    from contest_fixtures import i3a_contest_datamodule, write_specimens

    root = write_specimens(
        tmp_path / "i3a",
        [("Homogeneous", 12, 20), ("Homogeneous", 12, 70), ("Golgi", 12, 40), ("Golgi", 12, 90)]
        + [("Speckled", 12, 30), ("Speckled", 12, 80)],
    )
    runs = {}
    for how in ("threads", "processes"):
        monkeypatch.setenv("ANA_CACHE_DIR", str(tmp_path / f"cache_{how}"))
        if how == "threads":
            monkeypatch.setenv("ANA_IO_PROCESSES", "1")
            monkeypatch.setenv("ANA_IO_THREADS", "1")
        else:
            monkeypatch.setenv("ANA_IO_PROCESSES", "2")
            monkeypatch.setattr(images, "PROCESS_MIN_ITEMS", 1)
        dm = i3a_contest_datamodule(root, crop_fraction=0.7, cache_images=True)
        dm.setup("fit")
        splits = {s: sorted((r.path, r.group) for r in dm.splits[s]) for s in ("train", "val", "test")}
        cells = {s: [dm.dataset(s).load(i) for i in range(len(dm.splits[s]))] for s in ("train", "test")}
        runs[how] = (splits, cells)
    assert runs["threads"][0] == runs["processes"][0]
    for s in ("train", "test"):
        a, b = runs["threads"][1][s], runs["processes"][1][s]
        assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_scan_in_processes_lists_the_same_bad_files(tmp_path, processes):
    from ana_lightning.data.records import scan_images

    paths = []
    for i in range(30):
        p = tmp_path / f"{i:02d}.png"
        Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(p)
        paths.append(p)
    paths[4].write_bytes(b"")
    paths[9].write_text("not an image")
    mask = tmp_path / "m.png"
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(mask)
    good, bad = scan_images([*paths, mask], masks=[str(mask)], cache=False)
    assert [b.path for b in bad] == [str(paths[4]), str(paths[9]), str(mask)]
    assert "empty mask" in bad[2].reason and "empty file" in bad[0].reason
    assert list(good) == [str(p) for i, p in enumerate(paths) if i not in (4, 9)]
    assert good[str(paths[0])][0] == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert good[str(paths[0])][1] == (6, 6)
