"""The ICPR 2012 contest protocol on a fixture in the contest's exact layout (tests/contest_fixtures.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from contest_fixtures import ICPR2012_CLASSES, ICPR2012_NODES, write_icpr2012_contest
from PIL import Image

from ana_lightning.data.contest import contest_classes, is_icpr2012_contest_layout, read_icpr2012
from ana_lightning.data.hierarchy import HEp2HierarchyDataModule
from ana_lightning.data.records import DatasetError
from ana_lightning.taxonomy import Taxonomy

from conftest import TINY_BACKBONE, compose


def test_fixture_is_the_contest_layout(tmp_path):
    root = write_icpr2012_contest(tmp_path / "icpr")
    assert is_icpr2012_contest_layout(root)
    assert (root / "training" / "001.png").is_file() and (root / "training" / "001_mask.png").is_file()
    assert (root / "training" / "gt_training.csv").read_text().splitlines()[:2] == [
        "ID;pattern",
        "001;homogeneous",
    ]
    assert (root / "training" / "training.csv").read_text().splitlines()[0] == "ID;intensity;width;height"
    assert (root / "test" / "gt_test.csv").is_file() and (root / "test" / "test.csv").is_file()
    assert (root / "cells.csv").read_text().splitlines()[0] == (
        "ICPR2012Contest_Cell_ID;Set;Image;Intensity;Original_cell_ID;Cell_class;Cell_width;Cell_height"
    )
    img = Image.open(root / "training" / "002.png")
    assert img.mode == "RGB" and img.size == (585, 400)  # 8-bit RGB, the contest's largest width
    assert Image.open(root / "training" / "001.png").size == (20, 20)


def test_reader_keeps_the_official_split_fields_and_masks(tmp_path):
    root = write_icpr2012_contest(tmp_path / "icpr")
    data = read_icpr2012(root, Taxonomy.load())
    assert len(data.records) == 36 and data.bad == []
    split = {Path(p).parent.name: s for p, s in data.official_split.items()}
    assert split == {"training": "train", "test": "test"}
    assert sum(s == "test" for s in data.official_split.values()) == 12
    by = {(Path(r.path).parent.name, Path(r.path).stem): r for r in data.records}
    assert by[("training", "001")].codes == ("AC-1",) and by[("training", "005")].codes == ("AC-4",)
    assert by[("test", "031")].codes == ("nucleolar",) and by[("test", "036")].codes == ("cytoplasmic",)
    assert by[("training", "001")].group == "image 1" and by[("test", "025")].group == "image 5"
    assert len(data.masks) == 36 and data.masks[by[("test", "025")].path].endswith("test/025_mask.png")
    assert set(data.intensity.values()) == {"positive", "intermediate"}
    assert by[("training", "002")].size == (400, 585)


def test_reader_errors_name_the_line(tmp_path):
    root = write_icpr2012_contest(tmp_path / "icpr")
    cells = root / "cells.csv"
    lines = cells.read_text().splitlines()
    lines[3] = lines[3].replace("homogeneous", "centromere")  # contradicts gt_training.csv
    cells.write_text("\n".join(lines[:-1]) + "\n")  # and the last test cell is not listed
    info = root / "training" / "training.csv"
    info.write_text(info.read_text().replace("001;positive", "001;bright"))
    with pytest.raises(DatasetError) as e:
        read_icpr2012(root, Taxonomy.load())
    msg = str(e.value)
    assert "cells.csv:4: Cell_class 'centromere' contradicts" in msg
    assert "test/036.png: not listed in" in msg
    assert "training.csv:2: intensity 'bright' is not one of" in msg
    assert len(read_icpr2012(root, Taxonomy.load(), on_bad_file="skip").records) == 34


def _dm(root: Path, **kw) -> HEp2HierarchyDataModule:
    return HEp2HierarchyDataModule(
        root=str(root), reader="icpr2012", level="contest", image_size=32, cache_images=False, **kw
    )


def test_contest_target_and_official_test_split(tmp_path):
    root = write_icpr2012_contest(tmp_path / "icpr", train_per_class=6)
    dm = _dm(root)
    dm.setup()
    assert dm.class_names == list(ICPR2012_CLASSES)
    assert dm.class_nodes() == ICPR2012_NODES
    # the official test folder, whole and alone; validation carved from training/, by field image
    assert sorted(Path(r.path).name for r in dm.splits["test"]) == sorted(
        p.name for p in (root / "test").glob("0??.png")
    )
    assert all(Path(r.path).parent.name == "training" for s in ("train", "val") for r in dm.splits[s])
    assert dm.splits["val"] and not (
        {r.group for r in dm.splits["val"]} & {r.group for r in dm.splits["train"]}
    )
    assert dm.split_flags() == {
        "test/shared_groups_with_train": 0.0,
        "test/images_in_train_groups": 0.0,
        "test/identical_to_train": 0.0,
    }
    t = dm.make_targets(dm.splits["test"])
    assert sorted(set(t.tolist())) == list(range(6))
    item = dm.dataset("test")[0]
    assert item["image"].shape == (3, 32, 32)
    assert (
        dm.state_dict()["ana_data"]["level"] == "contest"
        and dm.state_dict()["class_nodes"]["cytoplasmatic"] == "cytoplasmic"
    )
    # another seed moves validation, never the test set
    other = _dm(root, seed=5)
    other.setup()
    assert [r.path for r in other.splits["test"]] == [r.path for r in dm.splits["test"]]


def test_contest_classes_subset_and_errors(tmp_path):
    root = write_icpr2012_contest(tmp_path / "icpr")
    dm = _dm(root, classes=["Homogeneous", "centromere"])
    dm.setup()
    assert dm.class_names == ["homogeneous", "centromere"]
    with pytest.raises(Exception, match="'speckled' is not a icpr2012 class"):
        _dm(root, classes=["speckled"]).setup()
    with pytest.raises(ValueError, match="needs a contest reader"):
        HEp2HierarchyDataModule(root=str(root), reader="folder", level="contest")
    assert list(contest_classes(Taxonomy.load(), "i3a2014")) == [
        "Homogeneous",
        "Speckled",
        "Nucleolar",
        "Centromere",
        "NuMem",
        "Golgi",
    ]


def test_test_cells_from_a_training_field_are_flagged(tmp_path, caplog):
    root = write_icpr2012_contest(tmp_path / "icpr", shared_field=True)
    dm = _dm(root)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "THE TEST SPLIT SHARES 1 GROUP(S)" in caplog.text
    assert dm.split_flags()["test/shared_groups_with_train"] == 1.0
    assert dm.split_flags()["test/images_in_train_groups"] >= 1.0
    run = tmp_path / "run"
    run.mkdir()
    dm.write_reports(run)  # the manifest of an official split reloads although it shares a group
    again = _dm(root, split_manifest=str(run / "split_manifest.csv"))
    again.setup()
    assert [r.path for r in again.splits["test"]] == [r.path for r in dm.splits["test"]]


def test_fast_dev_run_of_the_experiment(tmp_path):
    from ana_lightning.pipeline import train

    root = write_icpr2012_contest(tmp_path / "icpr")
    cfg = compose(
        "train",
        [
            "experiment=icpr2012_cells",
            f"data.root={root}",
            "debug=fdr",
            "data.image_size=32",
            f"model.backbone.name={TINY_BACKBONE}",
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=tmp_path / "run",
    )
    metrics, objs = train(cfg)
    assert objs["model"].class_names == list(ICPR2012_CLASSES)
    assert objs["datamodule"].official_split and "test/mca" in metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test/shared_groups_with_train"] == 0.0


def test_cross_validation_folds_only_the_training_folder(tmp_path, caplog):
    root = write_icpr2012_contest(tmp_path / "icpr", train_per_class=6)
    official_test = sorted(str(p) for p in (root / "test").glob("0??.png"))
    seen: set[str] = set()
    tested: set[str] = set()
    with caplog.at_level(logging.WARNING):
        for k in range(2):
            dm = _dm(root, folds=2, fold=k, folds_manifest=str(tmp_path / "folds.csv"))
            dm.setup()
            paths = {s: {r.path for r in dm.splits[s]} for s in ("train", "val", "test")}
            assert all(Path(p).parent.name == "training" for s in paths.values() for p in s)
            seen |= paths["train"] | paths["val"] | paths["test"]
            tested |= paths["test"]
    assert not seen & set(official_test) and official_test
    assert tested == {str(p) for p in (root / "training").glob("0??.png")}  # every training cell tested once
    assert "official test split" in caplog.text and "left out of every fold" in caplog.text


@pytest.mark.parametrize("with_masks", [True, False])
def test_the_checkpoint_says_whether_the_cells_had_masks(tmp_path, caplog, with_masks):
    """An ICPR 2012 folder has masks only sometimes. A run whose cells had them stores that, so
    ana-predict hands the model its cells as in training (mask channel, framing); a folder without them
    says loudly that data.mask / data.crop_fraction do nothing, and the checkpoint says neither was used."""
    import torch

    from ana_lightning.fields.mode import training_scale

    root = write_icpr2012_contest(tmp_path / "icpr", extreme_sizes=False)
    if not with_masks:
        for m in root.rglob("*_mask.png"):
            m.unlink()
    dm = _dm(root, mask="channel", crop_fraction=0.7)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert ("no cell masks found" in caplog.text) is not with_masks
    state = dm.state_dict()
    assert state["cell_masks"] is with_masks
    ckpt = tmp_path / "m.ckpt"
    torch.save(
        {"datamodule_hyper_parameters": dict(dm.hparams), type(dm).__qualname__: state, "state_dict": {}},
        ckpt,
    )
    scale = training_scale(ckpt)
    assert scale["input_kind"] == "cell"
    assert (scale["cell_mask"], scale["crop_fraction"]) == (
        ("channel", 0.7) if with_masks else ("none", None)
    )
    # a checkpoint from before the datamodule said it: an ICPR model is read without its masks, as before
    del state["cell_masks"]
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams), "DM": state}, ckpt)
    assert (training_scale(ckpt)["cell_mask"], training_scale(ckpt)["crop_fraction"]) == ("none", None)


def test_truth_reads_the_icpr2012_contest_labels(tmp_path):
    """truth=icpr2012 on the contest layout: every cell of training/ and test/ gets its gt_*.csv class as
    a tree label (fine and coarse speckled at their leaves, cytoplasmatic at its level-1 node)."""
    from ana_lightning.data.contest import _is_mask
    from ana_lightning.predict.io import list_inputs
    from ana_lightning.predict.truth import read_truth

    root = write_icpr2012_contest(tmp_path / "icpr", train_per_class=2, test_per_class=1, extreme_sizes=False)
    files = [f for f in list_inputs(root) if not _is_mask(f)]
    nodes = {"Homogeneous": "AC-1", "Speckled": "speckled", "Golgi": "AC-22"}
    got = read_truth(files, root, "icpr2012", "label", nodes)
    want = {}
    for folder, gt in (("training", "gt_training.csv"), ("test", "gt_test.csv")):
        for line in (root / folder / gt).read_text().splitlines()[1:]:
            cell_id, pattern = line.split(";")
            want[cell_id] = pattern
    assert len(got) == len(files) == len(want)
    for f in files:
        assert got[str(f.resolve())] == ICPR2012_NODES[want[f.stem].lower()], f
