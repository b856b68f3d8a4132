"""Perceptual near-duplicates: the same picture with other bytes (re-encoded, flipped, rotated) lands
in one split, is listed in near_duplicates.csv, and the same image under two labels is reported."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from scipy.ndimage import gaussian_filter

from ana_lightning.data.datamodules import SingleLabelDataModule
from ana_lightning.data.records import ImageRecord
from ana_lightning.data.splits import near_duplicate_sets


def _cell(rng: np.random.Generator, h: int = 40, w: int = 52) -> np.ndarray:
    """A distinct smooth texture per call (non-square, so a 90° turn changes the shape)."""
    img = gaussian_filter(rng.normal(0, 1, (h, w)), 2.0)
    img = (img - img.min()) / (img.max() - img.min()) * 180 + 20
    return np.repeat(img.astype(np.uint8)[..., None], 3, -1)


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, list[Path]]]:
    """AC-1 and AC-2, 12 distinct images each, plus copies of AC-1/img_000 that a byte hash misses:
    re-encoded PNG (same pixels, other bytes), BMP, left-right flip, 90° and 270° turns; and a
    re-encoded copy of AC-1/img_001 filed under AC-2 (same image, two labels)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c in ("AC-1", "AC-2"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(_cell(rng)).save(root / c / f"img_{i:03d}.png")
    src = np.asarray(Image.open(root / "AC-1" / "img_000.png"))
    meta = PngImagePlugin.PngInfo()
    meta.add_text("Software", "re-exported")
    copies = {
        "reencoded": root / "AC-1" / "copy_reencoded.png",
        "bmp": root / "AC-1" / "copy.bmp",
        "flip": root / "AC-1" / "copy_flip.png",
        "rot90": root / "AC-1" / "copy_rot90.png",
        "rot270": root / "AC-1" / "copy_rot270.png",
    }
    Image.fromarray(src).save(copies["reencoded"], pnginfo=meta, compress_level=1)
    Image.fromarray(src).save(copies["bmp"])
    Image.fromarray(np.fliplr(src).copy()).save(copies["flip"])
    Image.fromarray(np.rot90(src, 1).copy()).save(copies["rot90"])
    Image.fromarray(np.rot90(src, 3).copy()).save(copies["rot270"])
    other = np.asarray(Image.open(root / "AC-1" / "img_001.png"))
    Image.fromarray(other).save(root / "AC-2" / "mislabelled_copy.png", pnginfo=meta)
    for p in copies.values():  # really other bytes than the original
        assert p.read_bytes() != (root / "AC-1" / "img_000.png").read_bytes()
    return root, {
        "img_000": [root / "AC-1" / "img_000.png", *copies.values()],
        "img_001": [root / "AC-1" / "img_001.png", root / "AC-2" / "mislabelled_copy.png"],
    }


def _dm(root: Path, seed: int, near: bool = True) -> SingleLabelDataModule:
    dm = SingleLabelDataModule(
        root=str(root),
        image_size=32,
        cache_images=False,
        seed=seed,
        near_duplicates=near,
        split_fractions=(0.5, 0.25, 0.25),
    )
    dm.setup()
    return dm


def test_copies_found_with_their_transforms(folder):
    root, sets = folder
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    records, _ = read_single_label_folder(root, Taxonomy.load())
    found = near_duplicate_sets(records)
    as_paths = sorted(sorted(Path(r.path).name for r in d.records) for d in found)
    assert as_paths == [
        sorted(p.name for p in sets["img_000"]),
        sorted(p.name for p in sets["img_001"]),
    ]  # and nothing else: the 24 distinct textures are not merged
    first = next(d for d in found if len(d.records) == 6)
    how = {Path(r.path).name: t for r, t in zip(first.records, first.transforms, strict=True)}
    assert how["copy_reencoded.png"] == how["copy.bmp"] == "identity"
    assert how["copy_flip.png"].startswith("flip_lr") and how["copy_rot90.png"] in ("rot90", "rot270")
    assert [d.conflicting for d in found] == [False, True] or [d.conflicting for d in found] == [True, False]


@pytest.mark.parametrize("seed", range(6))
def test_copies_land_in_one_split(folder, seed):
    root, sets = folder
    dm = _dm(root, seed)
    split_of = {r.path: s for s, recs in dm.splits.items() for r in recs}
    for paths in sets.values():
        assert len({split_of[str(p)] for p in paths}) == 1, {p.name: split_of[str(p)] for p in paths}


def test_without_grouping_the_copies_would_leak(folder):
    """The test above can fail: split by bytes only, some seed separates the copies."""
    root, sets = folder
    leaked = False
    for seed in range(6):
        dm = _dm(root, seed, near=False)
        split_of = {r.path: s for s, recs in dm.splits.items() for r in recs}
        leaked |= len({split_of[str(p)] for p in sets["img_000"]}) > 1
    assert leaked


def test_report_and_two_label_warning(folder, tmp_path, caplog):
    root, sets = folder
    with caplog.at_level(logging.WARNING):
        dm = _dm(root, 0)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "same image carries different labels" in warning
    assert "img_001.png (AC-1)" in warning and "mislabelled_copy.png (AC-2)" in warning
    out = tmp_path / "run"
    out.mkdir()
    dm.write_reports(out)
    rows = list(csv.DictReader(open(out / "near_duplicates.csv")))
    assert len(rows) == 8
    assert {r["path"] for r in rows if r["conflicting_labels"] == "yes"} == {str(p) for p in sets["img_001"]}
    assert {r["label"] for r in rows if r["conflicting_labels"] == "yes"} == {"AC-1", "AC-2"}
    assert all(r["split"] for r in rows)


def test_unreadable_files_are_skipped_not_fatal(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    good = tmp_path / "good.png"
    Image.fromarray(_cell(np.random.default_rng(1))).save(good)
    assert near_duplicate_sets([ImageRecord(str(bad), ("AC-1",)), ImageRecord(str(good), ("AC-1",))]) == []


def test_hashes_of_flips_and_turns_equal_imagehash():
    """The 7 derived hashes equal imagehash.phash of the flipped/rotated thumbnail, bit for bit."""
    import imagehash
    from scipy.fftpack import dct

    from ana_lightning.data.splits import _dihedral, _dihedral_dct

    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 255, (32, 32)).astype(np.uint8)
        block = dct(dct(x, axis=0), axis=1)[:8, :8]
        derived = [b > np.median(b) for b in _dihedral_dct(block)]
        library = [imagehash.phash(Image.fromarray(np.ascontiguousarray(v))).hash for v in _dihedral(x)]
        for a, b in zip(derived, library, strict=True):
            np.testing.assert_array_equal(a, b)


def test_hashes_are_cached_on_disk_by_content(folder, tmp_path, monkeypatch):
    import ana_lightning.data.images as images
    from ana_lightning.data import splits
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    root, _ = folder
    records, _ = read_single_label_folder(root, Taxonomy.load())
    splits._hash_cache.clear()
    first = near_duplicate_sets(records, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "near_duplicate_hashes.npz").is_file()
    splits._hash_cache.clear()  # a new process: only the file remains

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(images, "load_image", no_decoding)
    again = near_duplicate_sets(records, cache_dir=tmp_path / "cache")
    assert [[r.path for r in d.records] for d in again] == [[r.path for r in d.records] for d in first]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked (Linux)")
def test_hashing_in_worker_processes_finds_the_same_sets_and_keeps_the_hashes_here(folder, monkeypatch):
    import ana_lightning.data.images as images
    from ana_lightning.data import splits
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    root, _ = folder
    records, _ = read_single_label_folder(root, Taxonomy.load())
    splits._hash_cache.clear()
    monkeypatch.setenv("ANA_IO_PROCESSES", "1")
    threads = near_duplicate_sets(records)
    splits._hash_cache.clear()
    monkeypatch.setenv("ANA_IO_PROCESSES", "2")
    monkeypatch.setattr(images, "PROCESS_MIN_ITEMS", 1)
    forked = near_duplicate_sets(records)
    assert forked == threads and len(forked) == 2
    assert len(splits._hash_cache) == len(
        {r.sha256 for r in records}
    )  # the workers' hashes, kept in this process
