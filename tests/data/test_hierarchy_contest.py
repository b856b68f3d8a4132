"""Contest readers (ICPR 2012 / MIVIA, I3A / ICPR 2014 Task 1) on small fixture sets in their layouts."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ana_lightning.data.contest import apply_mask, map_contest_label, read_i3a2014, read_icpr2012
from ana_lightning.data.hierarchy import HEp2HierarchyDataModule
from ana_lightning.data.masks import masked_loader
from ana_lightning.data.records import DatasetError
from ana_lightning.taxonomy import LabelError, Taxonomy

ICPR_CLASSES = ["homogeneous", "fine_speckled", "coarse_speckled", "nucleolar", "centromere", "cytoplasmatic"]
I3A_CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


def _cell(rng, size=24, grey=True, level=120):
    img = np.clip(rng.normal(level, 20, (size, size)), 0, 255).astype(np.uint8)
    return img if grey else np.repeat(img[:, :, None], 3, axis=2)


def write_icpr2012(root: Path, per_class: int = 4, header: bool = True) -> Path:
    """MIVIA layout: BMP cell crops named by ID, ``gt_training.csv`` ``ID;pattern;image`` (image = field)."""
    rng = np.random.default_rng(0)
    (root / "cells").mkdir(parents=True)
    lines = ["ID;pattern;image"] if header else []
    i = 0
    for k, name in enumerate(ICPR_CLASSES):
        for j in range(per_class):
            i += 1
            Image.fromarray(_cell(rng, level=40 + 30 * k)).save(root / "cells" / f"{i}.bmp")
            lines.append(f"{i};{name};field{k * 2 + j % 2}")
    (root / "gt_training.csv").write_text("\n".join(lines) + "\n")
    return root


def write_i3a2014(root: Path, per_class: int = 4) -> Path:
    """I3A Task 1 layout: zero-padded grey PNG cells with ``<ID>_Mask.png`` and ``Image ID,Image class,Specimen ID``."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    lines = ["Image ID,Image class,Specimen ID"]
    i = 0
    for k, name in enumerate(I3A_CLASSES):
        for j in range(per_class):
            i += 1
            Image.fromarray(_cell(rng, level=40 + 30 * k)).save(root / f"{i:05d}.png")
            mask = np.zeros((24, 24), np.uint8)
            mask[4:20, 6:18] = 255
            Image.fromarray(mask).save(root / f"{i:05d}_Mask.png")
            lines.append(f"{i},{name},{k * 2 + j % 2}")
    (root / "gt_training.csv").write_text("\n".join(lines) + "\n")
    return root


def test_packaged_mapping_sends_names_to_leaves_and_nodes():
    tree = Taxonomy.load()
    assert map_contest_label(tree, "icpr2012", "Coarse Speckled") == "AC-5"
    assert map_contest_label(tree, "icpr2012", "cytoplasmatic") == "cytoplasmic"  # a level-1 node
    assert map_contest_label(tree, "i3a2014", "NuMem") == "nuclear envelope"  # a level-2 node
    assert map_contest_label(tree, "i3a2014", "golgi") == "AC-22"
    with pytest.raises(LabelError, match="'Mitotic spindle' is not a I3A_ICPR2014_task1 class"):
        map_contest_label(tree, "i3a2014", "Mitotic spindle")


@pytest.mark.parametrize("header", [True, False])
def test_icpr2012_reader(tmp_path, header):
    root = write_icpr2012(tmp_path / "mivia", header=header)
    data = read_icpr2012(root, Taxonomy.load())
    assert len(data.records) == 24 and data.bad == []
    by_id = {Path(r.path).stem: r for r in data.records}
    assert (
        by_id["1"].codes == ("AC-1",)
        and by_id["13"].codes == ("nucleolar",)
        and by_id["21"].codes == ("cytoplasmic",)
    )
    if header:  # the field column groups the cells of one field
        assert by_id["1"].group == "field0" and by_id["2"].group == "field1"
    assert all(r.sha256 for r in data.records)


def test_contest_errors_name_the_line_or_file(tmp_path):
    root = write_icpr2012(tmp_path / "mivia")
    csv = root / "gt_training.csv"
    csv.write_text(csv.read_text() + "99;fine_speckled;field0\n100;mitotic;field0\n")
    with pytest.raises(DatasetError) as e:
        read_icpr2012(root, Taxonomy.load())
    msg = str(e.value)
    assert "gt_training.csv:26" in msg and "no image file for ID '99'" in msg
    assert "gt_training.csv:27" in msg and "'mitotic' is not a ICPR2012_MIVIA class" in msg
    data = read_icpr2012(root, Taxonomy.load(), on_bad_file="skip")
    assert len(data.records) == 24 and len(data.bad) == 2


def test_i3a_reader_masks_and_groups(tmp_path):
    root = write_i3a2014(tmp_path / "i3a")
    data = read_i3a2014(root, Taxonomy.load())
    assert len(data.records) == 24 and len(data.masks) == 24
    labels = {Path(r.path).stem: r.codes[0] for r in data.records}
    assert labels["00001"] == "AC-1" and labels["00005"] == "speckled" and labels["00021"] == "AC-22"
    assert {r.group for r in data.records} == {str(i) for i in range(12)}
    (root / "00003_Mask.png").unlink()
    with pytest.raises(DatasetError, match="00003.png: no mask file"):
        read_i3a2014(root, Taxonomy.load())
    assert len(read_i3a2014(root, Taxonomy.load(), need_masks=False).records) == 24


def test_apply_mask_modes():
    img = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    applied = apply_mask(img, mask, "apply")
    assert applied[0, 0].tolist() == [0, 0, 0] and applied[1, 1].tolist() == [100, 100, 100]
    channel = apply_mask(img, mask, "channel")
    assert channel[0, 0].tolist() == [100, 100, 0] and channel[1, 1].tolist() == [100, 100, 255]
    assert apply_mask(img, mask, "none") is img
    with pytest.raises(ValueError, match="does not fit"):
        apply_mask(img, np.zeros((3, 3), np.uint8))


def test_recrop_frames_the_mask_box_at_the_given_share():
    from ana_lightning.data.masks import recrop

    img = np.full((60, 80), 10, np.uint8)
    img[30:50, 20:60] = 200  # the cell: a 20×40 box, off centre
    mask = (img > 100).astype(np.uint8) * 255
    out, m = recrop(img, mask, 0.5)  # square of side 40 / 0.5 = 80, centred on the box
    assert out.shape == m.shape == (80, 80)
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    assert (cols[0], cols[-1] + 1) == (20, 60) and (rows[0], rows[-1] + 1) == (30, 50)  # box centred
    assert (m > 0).sum() == (mask > 0).sum() and (out[m > 0] == 200).all()
    assert out[0, 0] == 10  # past the image's top edge: filled with the background (median outside)
    tight, tm = recrop(img, mask, 1.0)
    assert tight.shape == (40, 40) and (tm > 0).sum() == 800
    rgb, _ = recrop(np.dstack([img] * 3), np.dstack([mask] * 3), 0.7)
    assert rgb.shape == (57, 57, 3)
    with pytest.raises(ValueError, match="empty"):
        recrop(img, np.zeros_like(mask), 0.7)
    with pytest.raises(ValueError, match="does not fit"):
        recrop(img, mask[:10], 0.7)


def test_crop_fraction_reframes_every_cell_in_the_datamodule(tmp_path):
    """data.crop_fraction: the loader re-cuts each cell around its mask (masks are read even with
    data.mask=none), so a tight crop and a loose crop of one cell reach the network alike."""
    root = write_i3a2014(tmp_path / "i3a")  # 24×24 cells, mask box rows 4:20, cols 6:18 (16 × 12)
    kw = dict(
        root=str(root), reader="i3a2014", level="contest", image_size=24, split_fractions=(0.5, 0.25, 0.25)
    )
    dm = HEp2HierarchyDataModule(mask="none", crop_fraction=0.5, **kw)
    dm.setup()
    ds = dm.dataset("train")
    raw = ds.loader(ds.records[0])
    assert raw.shape[:2] == (32, 32)  # 16 / 0.5, before the resize to image_size
    assert HEp2HierarchyDataModule(mask="none", **kw).uses_masks is False
    with pytest.raises(ValueError, match="crop_fraction"):
        HEp2HierarchyDataModule(mask="channel", crop_fraction=0, **kw)
    with pytest.raises(ValueError, match="crop_fraction"):
        HEp2HierarchyDataModule(mask="channel", crop_fraction="tight", **kw)
    # a cell whose mask file is empty: found when the folder is read (not by the loader mid-fit), named
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(root / "00001_Mask.png")
    dm = HEp2HierarchyDataModule(mask="channel", crop_fraction=0.7, **kw)
    with pytest.raises(ValueError, match=r"00001_Mask\.png: an empty mask \(every pixel 0\)"):
        dm.setup()
    # a loader given it anyway names the cell and its mask
    load = masked_loader({str(root / "00001.png"): str(root / "00001_Mask.png")}, "channel", 0.7)
    with pytest.raises(ValueError, match="00001.png with mask .*00001_Mask.png: the mask is empty"):
        load(str(root / "00001.png"))


@pytest.mark.parametrize("mask", ["apply", "channel"])
def test_i3a_in_the_hierarchy_datamodule(tmp_path, mask):
    root = write_i3a2014(tmp_path / "i3a")
    kw = dict(
        root=str(root),
        reader="i3a2014",
        mask=mask,
        image_size=24,
        batch_size=64,
        split_fractions=(0.5, 0.25, 0.25),
    )
    dm1 = HEp2HierarchyDataModule(level=1, **kw)
    dm1.setup()
    assert dm1.class_names == ["nuclear", "cytoplasmic"]  # Golgi (AC-22) is cytoplasmic
    groups = {s: {r.group for r in dm1.splits[s]} for s in dm1.splits}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    dm3 = HEp2HierarchyDataModule(level=3, **kw)
    dm3.setup()
    assert dm3.class_names == ["AC-1", "AC-3", "AC-22"]  # Speckled, Nucleolar and NuMem stop at level 2
    item = dm3.dataset("train")[0]
    img = item["image"]
    assert img.shape == (3, 24, 24)
    # outside the mask (row 0): "apply" zeroes every channel; "channel" puts 0 in blue and keeps the cell
    raw = dm3.dataset("train").load(0)
    assert raw[0, 0, 2] == 0 and raw[10, 10, 2] == (255 if mask == "channel" else raw[10, 10, 0])
    if mask == "apply":
        assert raw[0, 0].tolist() == [0, 0, 0]


def test_contest_manifest_round_trip_with_node_labels(tmp_path):
    root = write_icpr2012(tmp_path / "mivia")
    dm = HEp2HierarchyDataModule(
        root=str(root), reader="icpr2012", level=1, image_size=24, cache_images=False
    )
    dm.setup()
    run = tmp_path / "run"
    run.mkdir()
    dm.write_reports(run)
    text = (run / "split_manifest.csv").read_text()
    assert "cytoplasmic" in text and "nucleolar" in text
    again = HEp2HierarchyDataModule(
        root=str(root),
        reader="icpr2012",
        level=2,
        image_size=24,
        cache_images=False,
        split_manifest=str(run / "split_manifest.csv"),
        seed=123,
    )
    again.setup()
    for s in ("train", "val", "test"):
        assert {r.path for r in again.splits[s]} == {
            r.path for r in dm.splits[s] if r.codes != ("cytoplasmic",)
        }
