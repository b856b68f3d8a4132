import numpy as np
import pytest
from PIL import Image

from ana_lightning.data.images import BadImageError, load_image, read_and_hash


def test_formats(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)
    assert np.array_equal(load_image(tmp_path / "a.bmp"), rgb)
    assert load_image(tmp_path / "a.jpg").shape == (20, 30, 3)
    grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.tif")
    g = load_image(tmp_path / "g.tif")
    assert g.shape == (20, 30, 3) and np.array_equal(g[..., 0], grey) and np.array_equal(g[..., 2], grey)
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "r.png")
    assert np.array_equal(load_image(tmp_path / "r.png"), rgb)


def test_16bit_scaled_by_type_range(tmp_path):
    a = np.zeros((10, 12), np.uint16)
    a[0, 0], a[1, 1], a[2, 2] = 65535, 257 * 100, 257 * 10
    Image.fromarray(a).save(tmp_path / "x16.tif")
    img = load_image(tmp_path / "x16.tif")
    assert img.dtype == np.uint8 and img.shape == (10, 12, 3)
    assert img[0, 0, 0] == 255 and img[1, 1, 1] == 100 and img[2, 2, 2] == 10
    # A faint 16-bit image stays faint (no per-image stretching).
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "faint.tif")
    assert load_image(tmp_path / "faint.tif").max() <= 5


def test_bad_files_name_the_path(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name, reason in [("trunc.jpg", "truncated"), ("text.png", "not an image"), ("empty.png", "empty")]:
        with pytest.raises(BadImageError) as e:
            load_image(tmp_path / name)
        assert name in str(e.value) and reason in e.value.reason
    img, digest = read_and_hash(tmp_path / "ok.jpg")
    assert len(digest) == 64 and img.shape == (64, 64, 3)


def test_decode_threads_is_two_at_most_unless_the_variable_says_otherwise(monkeypatch):
    from ana_lightning.data import images

    monkeypatch.delenv("ANA_IO_THREADS", raising=False)
    # 2 threads at most by default (the per-file work holds the GIL: more were slower), 1 on one CPU
    monkeypatch.setattr(images.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert images.decode_threads() == 2
    monkeypatch.setattr(images.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert images.decode_threads() == 1
    monkeypatch.setenv("ANA_IO_THREADS", "3")
    assert images.decode_threads() == 3
    for bad in ("0", "four", "-2"):
        monkeypatch.setenv("ANA_IO_THREADS", bad)
        with pytest.raises(ValueError, match=rf"ANA_IO_THREADS='{bad}'"):
            images.decode_threads()


def test_the_cached_cells_are_the_same_whatever_the_number_of_decode_threads(tmp_path, monkeypatch):
    import torch

    from ana_lightning.data.datamodules import RecordDataset
    from ana_lightning.data.records import ImageRecord
    from ana_lightning.data.transforms import build_transform

    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        p = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(p)
        records.append(ImageRecord(path=str(p), codes=("AC-1",)))
    tf = build_transform(16, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    cached = {}
    for n in ("1", "5"):
        monkeypatch.setenv("ANA_IO_THREADS", n)
        ds = RecordDataset(records, torch.zeros(len(records), dtype=torch.long), tf, cache=True)
        cached[n] = [ds.load(i) for i in range(len(ds))]
    assert all(np.array_equal(a, b) for a, b in zip(cached["1"], cached["5"], strict=True))
    assert [c.shape for c in cached["1"]] == [(16, 16, 3)] * 12
