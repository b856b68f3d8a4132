"""scan_images keeps what it found for unchanged files, so a second run over a folder does not decode it
again; a changed, a just-written or a bad file is always read again."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from ana_lightning.data import images as images_mod
from ana_lightning.data import records
from ana_lightning.data.records import scan_images


@pytest.fixture
def counted(monkeypatch):
    """The files scan_images decodes, in a list."""
    reads: list[str] = []
    real = records.read_and_hash

    def counting(p, camera=True):
        reads.append(p.name)
        return real(p, camera=camera)

    monkeypatch.setattr(records, "read_and_hash", counting)
    return reads


def _png(path, value: int, size: int = 16):
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def test_a_second_scan_reads_no_unchanged_file_and_rereads_a_changed_one(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(records, "_SCAN_RACY_S", 0.0)  # files written here are seconds old at most
    cache = tmp_path / "cache"
    files = [_png(tmp_path / f"{i}.png", 10 * i + 5) for i in range(4)]
    first, bad = scan_images(files, cache_dir=cache)
    assert sorted(counted) == ["0.png", "1.png", "2.png", "3.png"] and not bad
    counted.clear()
    again, _ = scan_images(files, cache_dir=cache)
    assert again == first and counted == []  # nothing decoded: the same digests and sizes
    time.sleep(0.05)  # past the file system's clock tick
    _png(files[1], 99)  # the same size, other pixels: its change time moves
    changed, _ = scan_images(files, cache_dir=cache)
    assert counted == ["1.png"] and changed[str(files[1])][0] != first[str(files[1])][0]
    counted.clear()
    without, _ = scan_images(files, cache=False, cache_dir=cache)
    assert without == changed and len(counted) == 4


def test_a_file_written_just_now_or_bad_is_never_kept(tmp_path, counted):
    cache = tmp_path / "cache"
    good = _png(tmp_path / "good.png", 50)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:40])  # truncated
    for _ in range(2):
        found, bad = scan_images([good, broken], cache_dir=cache)
        assert list(found) == [str(good)] and [b.path for b in bad] == [str(broken)]
    # written under two seconds before the scan: its times may not move at the next write, so it is read again
    assert counted == ["good.png", "broken.png"] * 2


def test_the_scan_cache_keys_on_how_files_are_read_and_on_masks(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(records, "_SCAN_RACY_S", 0.0)
    cache = tmp_path / "cache"
    img = tmp_path / "cell.png"
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(img)
    scan_images([img], cache_dir=cache)
    monkeypatch.setenv(images_mod.BIT_DEPTH_ENV, "12")
    found, _ = scan_images([img], cache_dir=cache)  # another bit depth: read again, not taken from the cache
    assert counted == ["cell.png", "cell.png"] and str(img) in found
    monkeypatch.setenv(images_mod.BIT_DEPTH_ENV, "10")  # 10-bit: 4000 is above its range, so the file is bad
    _, bad = scan_images([img], cache_dir=cache)
    assert len(counted) == 3 and "above the 10-bit range" in bad[0].reason
    monkeypatch.delenv(images_mod.BIT_DEPTH_ENV)
    empty = _png(tmp_path / "empty_mask.png", 0)
    scan_images([empty], cache_dir=cache)  # as an image: good (a black field)
    _, bad = scan_images([empty], masks=[str(empty)], cache_dir=cache)  # as a mask: empty, bad
    assert [b.reason for b in bad] == ["an empty mask (every pixel 0): it marks no cell"]


def test_a_cache_folder_that_cannot_be_written_only_costs_time(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(records, "_SCAN_RACY_S", 0.0)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would be")
    files = [_png(tmp_path / "a.png", 20)]
    for _ in range(2):
        found, bad = scan_images(files, cache_dir=blocker)
        assert str(files[0]) in found and not bad
    assert counted == ["a.png", "a.png"]
    damaged = tmp_path / "cache"
    scan_images(files, cache_dir=damaged)
    for f in (damaged / "scans").glob("*.json"):
        f.write_text("{not json")
    found, _ = scan_images(files, cache_dir=damaged)
    assert str(files[0]) in found and counted == ["a.png"] * 4
