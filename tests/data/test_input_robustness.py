"""What a lab's own folders hold: microscope TIFF variants, symlinked folders, Excel CSVs, blank fields."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ana_lightning.data import images as images_mod
from ana_lightning.data.images import BadImageError, load_image, walk_files
from ana_lightning.taxonomy import Taxonomy


def _png(path, seed: int = 0, size: int = 24):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_a_32_bit_integer_image_beyond_16_bits_is_refused_not_read_black(tmp_path):
    """Counts above 65535 in a 32-bit integer file were read as a share of 2**31 (a black field, with no
    word); they are refused as floating-point ones are. A 32-bit file of 16-bit counts reads as 16-bit."""
    counts = np.linspace(0, 3000, 64).reshape(8, 8)
    Image.fromarray(counts.astype(np.int32), "I").save(tmp_path / "i32.tif")
    Image.fromarray(counts.astype(np.uint16)).save(tmp_path / "u16.tif")
    assert np.array_equal(load_image(tmp_path / "i32.tif"), load_image(tmp_path / "u16.tif"))
    Image.fromarray((counts * 100).astype(np.int32), "I").save(tmp_path / "huge.tif")
    with pytest.raises(BadImageError, match=r"huge\.tif: 32-bit integer image with values up to 300000"):
        load_image(tmp_path / "huge.tif")
    mask = np.zeros((8, 8), np.int32)
    mask[2:6, 2:6] = 70000  # a label image's label: a mask reads any non-zero value as the cell
    Image.fromarray(mask, "I").save(tmp_path / "huge_mask.tif")
    assert (load_image(tmp_path / "huge_mask.tif", camera=False)[..., 0] > 0).sum() == 16


def test_an_animation_is_refused_not_read_as_its_first_frame(tmp_path):
    """A GIF or PNG of several frames is several pictures; one of a single frame reads as an image."""
    green = np.zeros((16, 16, 3), np.uint8)
    green[..., 1] = 200
    first, second = Image.fromarray(green), Image.fromarray(255 - green)
    for ext in ("gif", "png"):
        first.save(tmp_path / f"anim.{ext}", save_all=True, append_images=[second])
        with pytest.raises(BadImageError, match=rf"anim\.{ext}: an animation of 2 frames"):
            load_image(tmp_path / f"anim.{ext}")
        first.save(tmp_path / f"still.{ext}")
        assert load_image(tmp_path / f"still.{ext}")[..., 1].max() >= 190
    # a camera JPEG that carries its preview (MPO: two pictures) is read as its first, full-size picture
    first.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[first.resize((8, 8))])
    with Image.open(tmp_path / "camera.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    assert load_image(tmp_path / "camera.jpg").shape == (16, 16, 3)


def test_big_endian_16_bit_tiff_reads_as_little_endian(tmp_path):
    """ImageJ / Fiji writes big-endian 16-bit TIFFs; they read exactly as the little-endian file does."""
    a = (np.arange(20 * 16, dtype=np.uint32).reshape(20, 16) * 200).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "le.tif")
    Image.frombytes("I;16B", (16, 20), a.astype(">u2").tobytes()).save(tmp_path / "be.tif")
    with Image.open(tmp_path / "be.tif") as im:
        assert not np.asarray(im).dtype.isnative  # the file really is big-endian as PIL hands it over
    assert np.array_equal(load_image(tmp_path / "be.tif"), load_image(tmp_path / "le.tif"))


def test_float_images_are_read_by_their_range_or_refused(tmp_path):
    counts = np.linspace(0, 3000, 64, dtype=np.float32).reshape(8, 8)  # raw camera counts as float
    Image.fromarray(counts, "F").save(tmp_path / "counts.tif")
    img = load_image(tmp_path / "counts.tif")
    assert (
        img.max() == round(3000 / 65535 * 255) and (img == 255).sum() == 0
    )  # as 16-bit counts, not saturated
    # one scale for every float image above 1, as for 16-bit integers: a dim field stays dim
    Image.fromarray(counts / 15, "F").save(tmp_path / "dim.tif")
    Image.fromarray((counts / 15).round().astype(np.uint16)).save(tmp_path / "dim16.tif")
    assert (
        np.abs(load_image(tmp_path / "dim.tif").astype(int) - load_image(tmp_path / "dim16.tif")).max() <= 1
    )
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tif")
    assert load_image(tmp_path / "unit.tif").max() == 255
    Image.fromarray(counts * 100, "F").save(tmp_path / "huge.tif")
    with pytest.raises(BadImageError, match=r"huge\.tif: floating-point image with values up to 300000"):
        load_image(tmp_path / "huge.tif")
    nan = counts.copy()
    nan[0, 0] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tif")
    with pytest.raises(BadImageError, match="NaN"):
        load_image(tmp_path / "nan.tif")


def test_a_tiff_of_channels_reads_as_fitc_green_and_dapi_blue(tmp_path):
    """A microscope's or Fiji's multi-channel TIFF (channels as pages or as samples, OME or ImageJ names or none)
    becomes the composite the models read: FITC green, DAPI blue, red empty. Without names it is refused (never
    read as its first page) until channels=[…] says the order; a z-stack, a time series, several images in one
    file and a multi-channel mask are refused saying what to save instead."""
    import tifffile

    from ana_lightning.data.images import check_channels, set_channels

    dapi, fitc = np.full((16, 20), 200, np.uint8), np.full((16, 20), 30, np.uint8)
    fitc[4:8, 5:9] = 90
    want = np.stack([np.zeros_like(fitc), fitc, dapi], axis=-1)
    Image.fromarray(dapi).save(tmp_path / "stack.tif", save_all=True, append_images=[Image.fromarray(fitc)])
    with pytest.raises(
        BadImageError,
        match=r"stack\.tif: a TIFF of 2 channels with no channel names: .*channels=\[fitc,dapi\]",
    ):
        load_image(tmp_path / "stack.tif")
    tifffile.imwrite(
        tmp_path / "samples.tif", np.stack([dapi, fitc], -1), photometric="minisblack", planarconfig="contig"
    )  # PIL cannot
    with pytest.raises(BadImageError, match=r"samples\.tif: a TIFF of 2 channels with no channel names"):
        load_image(tmp_path / "samples.tif")
    set_channels(["dapi", "fitc"])
    assert np.array_equal(load_image(tmp_path / "stack.tif"), want)
    assert np.array_equal(load_image(tmp_path / "samples.tif"), want)
    set_channels("fitc,dapi")  # the other order: the dim channel is now DAPI
    assert np.array_equal(load_image(tmp_path / "stack.tif"), want[..., [0, 2, 1]])
    set_channels(None)
    # names: OME-XML (16-bit, read at the type's range like any 16-bit file) and ImageJ slice labels
    ome = np.stack([dapi, fitc]).astype(np.uint16) * 257
    tifffile.imwrite(
        tmp_path / "f.ome.tif",
        ome,
        ome=True,
        metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "FITC-IgG"]}},
    )
    assert np.array_equal(load_image(tmp_path / "f.ome.tif"), want)
    three = np.stack([fitc, np.full_like(fitc, 255), dapi])
    labels = ["Alexa Fluor 488", "Cy5", "Hoechst 33342"]
    tifffile.imwrite(tmp_path / "ij.tif", three, imagej=True, metadata={"axes": "CYX", "Labels": labels})
    assert np.array_equal(load_image(tmp_path / "ij.tif"), want)  # Cy5 says neither: left out
    tifffile.imwrite(
        tmp_path / "cy5.ome.tif",
        ome,
        ome=True,
        metadata={"axes": "CYX", "Channel": {"Name": ["Cy5", "DAPI"]}},
    )
    with pytest.raises(
        BadImageError, match=r"named Cy5, DAPI; no channel name says which one is the pattern's stain"
    ):
        load_image(tmp_path / "cy5.ome.tif")
    set_channels("fitc,skip,dapi")
    assert np.array_equal(load_image(tmp_path / "ij.tif"), want)  # the order the names say: read
    assert set_channels("dapi,fitc") and np.array_equal(load_image(tmp_path / "f.ome.tif"), want)  # agrees
    set_channels("fitc,dapi")
    with pytest.raises(BadImageError, match=r"named DAPI, FITC-IgG; channels=fitc,dapi says otherwise"):
        load_image(tmp_path / "f.ome.tif")  # an order never overrules what a file's names say
    labels = {"axes": "CYX", "Labels": ["Ch1", "Ch2"]}  # names that say neither: the order set is read
    tifffile.imwrite(tmp_path / "ch.tif", np.stack([dapi, fitc]), imagej=True, metadata=labels)
    set_channels("dapi,fitc")
    assert np.array_equal(load_image(tmp_path / "ch.tif"), want)
    set_channels("fitc,skip,dapi")
    with pytest.raises(
        BadImageError, match=r"2 channels named DAPI, FITC-IgG; channels=fitc,skip,dapi names 3"
    ):
        load_image(tmp_path / "f.ome.tif")
    set_channels(None)
    tifffile.imwrite(tmp_path / "z.ome.tif", ome, ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(
        BadImageError, match=r"z\.ome\.tif: a TIFF of 2 focal planes \(a z-stack\).*maximum-intensity"
    ):
        load_image(tmp_path / "z.ome.tif")
    tifffile.imwrite(tmp_path / "t.ome.tif", np.stack([ome, ome]), ome=True, metadata={"axes": "TCYX"})
    with pytest.raises(BadImageError, match=r"a TIFF of 2 time points"):
        load_image(tmp_path / "t.ome.tif")
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tw:
        for _ in range(2):
            tw.write(ome, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "FITC"]}})
    with pytest.raises(BadImageError, match=r"a TIFF of 2 images \(positions or series\)"):
        load_image(tmp_path / "two.ome.tif")
    with pytest.raises(BadImageError, match=r"a mask of 2 channels or pages"):
        load_image(tmp_path / "f.ome.tif", camera=False)
    damaged = (tmp_path / "f.ome.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(damaged[: len(damaged) // 2])
    with pytest.raises(BadImageError, match=r"cut\.tif: "):
        load_image(tmp_path / "cut.tif")
    assert check_channels(["GFP", "Hoechst"]) == ("fitc", "dapi") and check_channels("null") is None
    for wrong in (["fitc", "fitc"], ["dapi"], "fitc,red", ["fitc", "dapi", "dapi"]):
        with pytest.raises(ValueError, match=r"data\.channels=.*exactly one fitc and at most one dapi"):
            check_channels(wrong, "data.channels")


def test_data_channels_reads_a_folder_of_channel_stacks_and_keys_its_caches(tmp_path):
    """data.channels reaches every read of a training folder of DAPI + FITC stacks (loader workers and DDP ranks
    through the environment); without it the folder's stacks are bad files naming channels=; the decoded-image
    cache and the read settings its keys carry tell the two orders apart."""
    from ana_lightning.data.cache import ImageCache
    from ana_lightning.data.datamodules import SingleLabelDataModule
    from ana_lightning.data.images import read_settings, set_channels

    for k, code in enumerate(("AC-1", "AC-2")):
        (tmp_path / "ds" / code).mkdir(parents=True)
        for i in range(6):
            rng = np.random.default_rng(i + 10 * k)
            dapi, fitc = (Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)) for _ in range(2))
            dapi.save(tmp_path / "ds" / code / f"{i}.tif", save_all=True, append_images=[fitc])
    kw = dict(root=str(tmp_path / "ds"), image_size=24, batch_size=4, split_fractions=[0.5, 0.25, 0.25])
    with pytest.raises(Exception, match=r"0\.tif: a TIFF of 2 channels with no channel names") as bad:
        SingleLabelDataModule(**kw).setup("fit")
    assert "channels=[fitc,dapi]" in str(bad.value)
    dm = SingleLabelDataModule(**kw, channels=["dapi", "fitc"])
    dm.setup("fit")
    assert len(dm.dataset("train")) + len(dm.dataset("val")) + len(dm.dataset("test")) == 12
    assert read_settings() == "|channels=dapi,fitc"
    paths = [str(p) for p in sorted((tmp_path / "ds").rglob("*.tif"))]
    built = {}
    for order in ("dapi,fitc", "fitc,dapi"):
        set_channels(order)
        built[order] = ImageCache.build(paths, 24, lambda a: a, cache_dir=tmp_path / "cache")
    assert built["dapi,fitc"].path != built["fitc,dapi"].path
    set_channels(None)
    assert read_settings() == ""  # the keys of caches written before channels existed
    with pytest.raises(ValueError, match=r"data\.channels="):
        SingleLabelDataModule(**kw, channels=["dapi"])


def test_a_tiff_with_a_reduced_resolution_preview_is_one_image(tmp_path):
    full = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    preview = full.resize((8, 8))
    full.save(tmp_path / "with_preview.tif", save_all=True, append_images=[preview])
    assert load_image(tmp_path / "with_preview.tif").shape == (32, 32, 3)


def test_twelve_bit_data_in_16_bit_files_is_warned_about_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(images_mod, "_LOW_BIT_DEPTH_WARNED", False)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 4000 + i, np.uint16)).save(tmp_path / f"c{i}.tif")
    with caplog.at_level(logging.WARNING, logger="ana_lightning.data.images"):
        assert load_image(tmp_path / "c0.tif").max() == round(4000 / 257)  # not rescaled per image
        load_image(tmp_path / "c1.tif")
    warned = [r.getMessage() for r in caplog.records if "12-bit" in r.getMessage()]
    assert len(warned) == 1 and "c0.tif" in warned[0] and "4000 of 65535" in warned[0]


def test_a_camera_bit_depth_reads_12_bit_files_at_full_range(tmp_path, caplog, monkeypatch):
    """bit_depth=12: 0-4095 is the full range (16x the grey levels of /257); a pixel above it names the file;
    8-bit files are unchanged; null (the default) reads the file's own range, with the hint to set it."""
    from ana_lightning.data.images import bit_depth, check_bit_depth, set_bit_depth

    monkeypatch.setattr(images_mod, "_LOW_BIT_DEPTH_WARNED", False)
    ramp = np.linspace(0, 4095, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "cam12.tif")
    Image.fromarray((ramp.astype(np.float32) * 255 / 4095 + 0.5).astype(np.uint8)).save(tmp_path / "as8.png")
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "counts.tif")  # raw counts as float
    with caplog.at_level(logging.WARNING, logger="ana_lightning.data.images"):
        own = load_image(tmp_path / "cam12.tif")
    assert own.max() == 16 and len(np.unique(own)) == 17  # /257: 17 grey levels
    assert "data.bit_depth=12" in caplog.text and "bit_depth=12 for ana-predict" in caplog.text
    assert set_bit_depth(12) == 12 and bit_depth() == 12
    full = load_image(tmp_path / "cam12.tif")
    assert np.array_equal(full, load_image(tmp_path / "as8.png")) and len(np.unique(full)) == 256
    assert np.array_equal(load_image(tmp_path / "counts.tif"), full)
    assert np.array_equal(
        load_image(tmp_path / "as8.png")[..., 0],
        (ramp.astype(np.float64) * 255 / 4095 + 0.5).astype(np.uint8),
    )
    Image.fromarray(np.full((8, 8), 5000, np.uint16)).save(tmp_path / "cam14.tif")
    with pytest.raises(BadImageError, match=r"cam14\.tif: a pixel value of 5000 is above the 12-bit range"):
        load_image(tmp_path / "cam14.tif")
    set_bit_depth(None)
    assert bit_depth() is None and np.array_equal(load_image(tmp_path / "cam12.tif"), own)
    for wrong in (8, 17, "twelve", 12.5):
        with pytest.raises(ValueError, match="integer from 9 to 16"):
            check_bit_depth(wrong)
    assert check_bit_depth("null") is None and check_bit_depth(14.0) == 14


def test_16_bit_colour_files_keep_their_16_bits_and_masks_ignore_the_camera_depth(tmp_path):
    """PIL hands a 16-bit RGB PNG / TIFF over as its high bytes: read at 16 bits instead, so bit_depth=12 reaches
    it as it reaches grey files; a 16-bit mask (0/65535) reads as a mask whatever the camera's bit depth."""
    import cv2

    from ana_lightning.data.images import set_bit_depth

    green = np.zeros((32, 32, 3), np.uint16)
    green[..., 1] = np.linspace(0, 4095, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    for ext in ("png", "tif"):
        assert cv2.imwrite(str(tmp_path / f"rgb16.{ext}"), green[..., ::-1])  # OpenCV writes BGR
    Image.fromarray(green[..., 1]).save(tmp_path / "grey16.png")
    own = load_image(tmp_path / "rgb16.png")
    assert own[..., 1].max() == 16 and own[..., 0].max() == 0  # /257, the green channel, as grey 16-bit files
    assert np.array_equal(own[..., 1], load_image(tmp_path / "grey16.png")[..., 0])
    set_bit_depth(12)
    for ext in ("png", "tif"):
        full = load_image(tmp_path / f"rgb16.{ext}")
        assert full[..., 1].max() == 255 and len(np.unique(full[..., 1])) == 256 and full[..., 2].max() == 0
        assert np.array_equal(full[..., 1], load_image(tmp_path / "grey16.png")[..., 0])
    mask = np.zeros((32, 32), np.uint16)
    mask[8:24, 8:24] = 65535
    Image.fromarray(mask).save(tmp_path / "mask16.png")
    with pytest.raises(BadImageError, match="above the 12-bit range"):
        load_image(tmp_path / "mask16.png")  # as a camera image it is out of range …
    assert load_image(tmp_path / "mask16.png", camera=False)[..., 0].max() == 255  # … as a mask it is a mask


def test_data_bit_depth_reaches_the_images_a_run_trains_on(tmp_path):
    """data.bit_depth=12 on a folder of 12-bit TIFFs: the training images span the full range, and the
    decode-once cache of another bit depth is never reused."""
    from ana_lightning.data.cache import ImageCache
    from ana_lightning.data.datamodules import SingleLabelDataModule

    for k, code in enumerate(("AC-1", "AC-2")):
        for i in range(6):
            (tmp_path / "ds" / code).mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(i + 10 * k)
            img = rng.integers(0, 4096, (32, 32)).astype(np.uint16)
            Image.fromarray(img).save(tmp_path / "ds" / code / f"{i}.tif")
    tops = {}
    for depth in (None, 12):
        dm = SingleLabelDataModule(
            root=str(tmp_path / "ds"),
            image_size=32,
            batch_size=4,
            bit_depth=depth,
            split_fractions=[0.5, 0.25, 0.25],
        )
        dm.setup("fit")
        tops[depth] = max(float(dm.dataset("val")[i]["image"].max()) for i in range(len(dm.dataset("val"))))
    assert tops[12] > tops[None] + 1.0  # normalised: the 12-bit read is far brighter than 4095/65535
    paths = [str(p) for p in sorted((tmp_path / "ds").rglob("*.tif"))]
    caches = {}
    for depth in (None, 12):
        images_mod.set_bit_depth(depth)
        caches[depth] = ImageCache.build(paths, 16, lambda a: a[:16, :16], cache_dir=tmp_path / "cache")
    assert caches[None].path != caches[12].path
    with pytest.raises(ValueError, match=r"data.bit_depth=7"):
        SingleLabelDataModule(root=str(tmp_path / "ds"), bit_depth=7)
    # the near-duplicate hashes (cached by file digest, also on disk) are kept apart by bit depth too
    from ana_lightning.data.records import ImageRecord
    from ana_lightning.data.splits import duplicates as dup

    rec = ImageRecord(paths[0], ("AC-1",), None, images_mod.sha256_file(paths[0]))
    thumbs = {}
    for depth in (None, 12):
        images_mod.set_bit_depth(depth)
        thumbs[depth] = dup._hash_one(rec)[1]
    assert thumbs[12].mean() > 4 * thumbs[None].mean()


def _linked_tree(tmp_path):
    """A store of 3 images linked into a dataset, plus a link back up the tree (a loop)."""
    for i in range(3):
        _png(tmp_path / "store" / f"s{i}.png", seed=i + 10)
    return tmp_path / "store"


def test_symlinked_folders_are_read_by_every_reader(tmp_path, caplog):
    from ana_lightning.data.hospital_records import read_hospital_folder
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.predict.io import list_inputs

    store = _linked_tree(tmp_path)
    ds = tmp_path / "ds"
    _png(ds / "AC-1" / "a.png", 1)
    _png(ds / "AC-2" / "b.png", 2)
    os.symlink(store, ds / "AC-1" / "more")
    os.symlink(ds, ds / "AC-2" / "loop")  # back up the tree: read once, not forever
    hosp = tmp_path / "hosp"
    _png(hosp / "p1" / "AC-1" / "a.png", 3)
    os.symlink(store, hosp / "p1" / "AC-4")
    tree = Taxonomy.load()
    with caplog.at_level(logging.WARNING):
        recs, bad = read_single_label_folder(ds, tree)
        assert sorted(r.codes[0] for r in recs) == ["AC-1"] * 4 + ["AC-2"] and not bad
        recs, bad = read_hospital_folder(hosp, tree)
        assert sorted(r.codes for r in recs) == [("AC-1",)] + [("AC-4",)] * 3 and not bad
        assert len(list_inputs(ds)) == 5
    assert any("AC-2/loop" in r.getMessage() and "not read here" in r.getMessage() for r in caplog.records)


def test_a_link_inside_the_dataset_never_relabels_or_doubles_images(tmp_path, caplog):
    """A link to a folder of the same dataset is not followed: that folder is read under its own path and
    label. A second link to one outside folder, and a link above the dataset, are not followed either."""
    from ana_lightning.data.hospital_records import read_hospital_folder
    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.predict.io import list_inputs

    store = _linked_tree(tmp_path)
    hosp = tmp_path / "hosp"
    _png(hosp / "p0" / "AC-1" / "a.png", 1)
    _png(hosp / "p1" / "AC-4" / "b.png", 2)
    os.symlink(hosp / "p1" / "AC-4", hosp / "p0" / "AC-1" / "alias")  # walked first, but inside the dataset
    os.symlink(store, hosp / "p0" / "AC-1" / "slides")
    os.symlink(store, hosp / "p1" / "AC-4" / "slides")  # the same outside folder again
    os.symlink(tmp_path, hosp / "p1" / "up")  # above the dataset
    tree = Taxonomy.load()
    with caplog.at_level(logging.WARNING):
        recs, bad = read_hospital_folder(hosp, tree)
    got = sorted((Path(r.path).relative_to(hosp).as_posix(), r.codes) for r in recs)
    assert got[:2] == [("p0/AC-1/a.png", ("AC-1",)), ("p0/AC-1/slides/s0.png", ("AC-1",))]
    assert ("p1/AC-4/b.png", ("AC-4",)) in got and len(got) == 5 and not bad  # a, 3 slides once, b
    said = caplog.text
    assert (
        "inside the dataset" in said
        and "already read through another link" in said
        and "above the dataset" in said
    )
    ds = tmp_path / "ds"
    _png(ds / "AC-1" / "a.png", 3)
    _png(ds / "AC-2" / "b.png", 4)
    os.symlink(ds / "AC-2", ds / "AC-1" / "alias")
    recs, _ = read_single_label_folder(ds, tree)
    assert sorted((os.path.basename(r.path), r.codes[0]) for r in recs) == [
        ("a.png", "AC-1"),
        ("b.png", "AC-2"),
    ]
    assert len(list_inputs(ds)) == 2
    # the input folder may itself be a link, even to a folder above it
    (tmp_path / "anc" / "deep").mkdir(parents=True)
    _png(tmp_path / "anc" / "x.png", 5)
    os.symlink(tmp_path / "anc", tmp_path / "anc" / "deep" / "ds")
    assert [p.name for p in list_inputs(tmp_path / "anc" / "deep" / "ds")] == ["x.png"]


def test_a_class_folder_that_links_to_another_class_is_refused_not_read_twice(tmp_path):
    """A class folder that is a link to another class folder (or two class folders linked to one outside
    folder) would read each image under two labels: named as a bad folder, never read twice."""
    from ana_lightning.data.records import DatasetError, read_single_label_folder

    store = _linked_tree(tmp_path)
    ds = tmp_path / "ds"
    _png(ds / "AC-1" / "a.png", 1)
    _png(ds / "AC-2" / "b.png", 2)
    os.symlink(ds / "AC-1", ds / "AC-5")  # "the same cells are AC-5 too"
    os.symlink(store, ds / "AC-3")  # a link leading outside, alone: read
    tree = Taxonomy.load()
    with pytest.raises(
        DatasetError, match=r"AC-5: a symlink to .*AC-1, the images of class folder\(s\) AC-1"
    ):
        read_single_label_folder(ds, tree)
    recs, bad = read_single_label_folder(ds, tree, on_bad_file="skip")
    assert sorted(r.codes[0] for r in recs) == ["AC-1", "AC-2", "AC-3", "AC-3", "AC-3"]
    assert [Path(b.path).name for b in bad] == ["AC-5"]
    os.unlink(ds / "AC-5")
    os.symlink(store / ".", ds / "AC-4")  # a second class linked to the same outside images
    recs, bad = read_single_label_folder(ds, tree, on_bad_file="skip")
    assert sorted(r.codes[0] for r in recs) == ["AC-1", "AC-2"]
    assert sorted(Path(b.path).name for b in bad) == ["AC-3", "AC-4"]
    assert all("images of class folder(s)" in b.reason for b in bad)
    # a link to a folder of the dataset that is not read as a class (a hidden store) is read as its class
    os.unlink(ds / "AC-3")
    os.unlink(ds / "AC-4")
    _png(ds / ".store" / "c.png", 7)
    os.symlink(ds / ".store", ds / "AC-6")
    recs, bad = read_single_label_folder(ds, tree)
    assert sorted(r.codes[0] for r in recs) == ["AC-1", "AC-2", "AC-6"] and not bad
    # a class folder linked to images read already through a link inside an earlier class folder
    os.symlink(store, ds / "AC-1" / "slides")
    os.symlink(store, ds / "AC-7")
    recs, bad = read_single_label_folder(ds, tree, on_bad_file="skip")
    assert sorted(r.codes[0] for r in recs) == ["AC-1"] * 4 + ["AC-2", "AC-6"]
    assert [Path(b.path).name for b in bad] == ["AC-7"] and "read already" in bad[0].reason


def test_hidden_and_system_folders_are_not_entered(tmp_path):
    from ana_lightning.data.records import read_single_label_folder

    ds = tmp_path / "ds"
    _png(ds / "AC-1" / "a.png", 1)
    _png(ds / "AC-1" / ".thumbs" / "a_small.png", 2)  # a viewer's thumbnails: not training images
    _png(ds / "AC-2" / "b.png", 3)
    _png(ds / "__MACOSX" / "AC-1" / "._a.png", 4)  # what unzipping a macOS archive leaves
    recs, bad = read_single_label_folder(ds, Taxonomy.load())
    assert sorted(os.path.basename(r.path) for r in recs) == ["a.png", "b.png"] and not bad
    assert [p.name for p in walk_files(ds)] == ["a.png", "b.png"]


def test_labels_csv_from_excel(tmp_path):
    """Excel's 'CSV UTF-8' (a byte-order mark) and Windows paths read; another encoding is a clear error."""
    from ana_lightning.data.hospital_records import read_labels_csv

    _png(tmp_path / "patiënt 1" / "a.png")
    (tmp_path / "bom.csv").write_bytes("path,labels\r\npatiënt 1\\a.png,AC-1;AC-4\r\n".encode("utf-8-sig"))
    recs, bad = read_labels_csv(tmp_path / "bom.csv", Taxonomy.load())
    assert [r.codes for r in recs] == [("AC-1", "AC-4")] and not bad
    (tmp_path / "cp1252.csv").write_bytes("path,labels\r\npatiënt 1/a.png,AC-1\r\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"cp1252\.csv: not UTF-8 text.*CSV UTF-8"):
        read_labels_csv(tmp_path / "cp1252.csv", Taxonomy.load())


def test_blank_fields_of_different_levels_are_not_one_picture():
    from ana_lightning.data.splits.duplicates import _same_picture

    black, white, grey = (np.full((32, 32), v, np.float32) for v in (0, 255, 128))
    assert not _same_picture(black, white, 0.95) and not _same_picture(black, grey, 0.95)
    assert _same_picture(black, black.copy(), 0.95)
    texture = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    assert _same_picture(texture, texture * 0.5 + 10, 0.95) and not _same_picture(texture, black, 0.95)


def test_an_empty_label_folder_of_a_hospital_export_is_reported(tmp_path):
    from ana_lightning.data.hospital_records import read_hospital_folder
    from ana_lightning.data.records import DatasetError

    _png(tmp_path / "p1" / "AC-1" / "slide1" / "a.png")
    _png(tmp_path / "p2" / "AC-4" / "b.png")
    (tmp_path / "p3" / "AC-5").mkdir(parents=True)  # exported, but no image in it
    with pytest.raises(DatasetError, match=r"p3/AC-5: empty label folder \(no images\)"):
        read_hospital_folder(tmp_path, Taxonomy.load())
    recs, bad = read_hospital_folder(tmp_path, Taxonomy.load(), on_bad_file="skip")
    assert len(recs) == 2 and [b.reason for b in bad] == ["empty label folder (no images)"]


def test_every_users_csv_names_itself_when_it_is_not_utf8(tmp_path):
    """group_by= and truth= tables are read like the labels CSV: Excel's BOM fine, another encoding named."""
    from ana_lightning.predict.io import path_table

    img = _png(tmp_path / "in" / "é.png")
    (tmp_path / "bom.csv").write_bytes("path,specimen\r\né.png,S1\r\n".encode("utf-8-sig"))
    assert (
        path_table([img], tmp_path / "in", tmp_path / "bom.csv", "specimen", "group_column")[img][0] == "S1"
    )
    (tmp_path / "cp.csv").write_bytes("path,specimen\r\né.png,S1\r\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"group_column: .*cp\.csv: not UTF-8 text"):
        path_table([img], tmp_path / "in", tmp_path / "cp.csv", "specimen", "group_column")
