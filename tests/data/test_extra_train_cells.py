"""data.extra_train with a folder in the run's own layout: e.g. cells cut from a lab's labelled fields join the
training split of the I3A cells, and only it (round 24)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ana_lightning.data.run_config import eval_data_config
from ana_lightning.data.splits import LeakageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from contest_fixtures import i3a_contest_datamodule, write_specimens  # noqa: E402

I3A = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("extra_train")
    real = write_specimens(base / "i3a", [(c, 12, lv) for c in I3A for lv in (20, 45, 100)])
    # a lab's cells: other brightness levels (other pixels), a specimen column (one field each), NuMem and Golgi
    lab = write_specimens(
        base / "lab", [(c, 5, lv) for c in ("NuMem", "Golgi") for lv in (30, 70)], specimen_column=True
    )
    return base, real, lab


def test_a_folder_in_the_runs_layout_joins_the_training_split_only(folders, tmp_path):
    base, real, lab = folders
    plain = i3a_contest_datamodule(real)
    plain.setup()
    dm = i3a_contest_datamodule(real, extra_train=str(lab))
    dm.setup()
    extra = dm.extra_train_records
    assert len(extra) == 20 and all(Path(r.path).parent == lab for r in extra)
    assert sorted({r.group for r in extra}) == ["extra:spec0", "extra:spec1", "extra:spec2", "extra:spec3"]
    assert all(r.path in dm.masks for r in extra)  # their masks travel with them (mask=channel)
    for s in ("train", "val", "test"):  # the run's own splits are untouched
        assert [r.path for r in dm.splits[s]] == [r.path for r in plain.splits[s]]
    assert len(dm.dataset("train")) == len(dm.splits["train"]) + 20
    assert len(dm.dataset("test")) == len(dm.splits["test"])
    first = dm.dataset("train")[len(dm.splits["train"])]
    assert dm.class_names[int(first["target"])] == "NuMem" and float(first["image"][2].max()) > 0.5
    # a run restricted to fewer classes leaves the others out
    few = i3a_contest_datamodule(real, extra_train=str(lab), classes=["Homogeneous", "NuMem"])
    few.setup()
    assert len(few.extra_train_records) == 10
    with pytest.raises(ValueError, match=r"none of its 20 image\(s\) has a class of this run"):
        i3a_contest_datamodule(real, extra_train=str(lab), classes=["Homogeneous", "Speckled"]).setup()


def test_extra_images_that_the_run_holds_out_are_refused_naming_them(folders, tmp_path):
    base, real, lab = folders
    dm = i3a_contest_datamodule(real)
    dm.setup()
    leaky = tmp_path / "leaky"
    shutil.copytree(lab, leaky)
    held = dm.splits["test"][0]
    shutil.copy(held.path, leaky / "00003.png")  # a test cell copied in, under another ID
    with pytest.raises(
        LeakageError, match=rf"00003.png: the same image as .*{Path(held.path).name} \(test split\)"
    ):
        i3a_contest_datamodule(real, extra_train=str(leaky)).setup()
    with pytest.raises(FileNotFoundError, match="data.extra_train=.*nowhere: no such folder"):
        i3a_contest_datamodule(real, extra_train=str(tmp_path / "nowhere")).setup()
    with pytest.raises(ValueError, match="is data.root itself"):
        i3a_contest_datamodule(real, extra_train=str(real)).setup()


def test_evaluation_never_reads_the_extra_training_images():
    from omegaconf import OmegaConf

    trained = {"_target_": "x.HEp2", "root": "/real", "reader": "i3a2014", "extra_train": "/lab/cells"}
    cfg = OmegaConf.create({"_target_": "x.HEp2", "root": "/real", "extra_train": None, "batch_size": 8})
    out = eval_data_config(cfg, trained, group_chosen=False, explicit=set())
    assert out.extra_train is None and out.root == "/real"
