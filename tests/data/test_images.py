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
