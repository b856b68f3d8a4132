"""A class folder's sub-folders are split groups (``data.group_level``): a patient's, slide's or field's images
never sit in two splits of a single-label folder (``data=single_label``, ``data=hierarchy data.reader=folder``)."""

from __future__ import annotations

from itertools import combinations

import pytest
from hydra.utils import instantiate

from ana_lightning.data.records import folder_group, parse_group_level
from ana_lightning.data.splits import SPLITS

from conftest import compose, write_class_images


@pytest.fixture
def patients(tmp_path):
    folders = {f"AC-1/p{i}": 4 for i in range(1, 6)} | {f"AC-4/p{i}": 4 for i in range(6, 11)}
    folders["AC-4/p1"] = 3  # patient p1 has fields of both patterns: one group
    folders["AC-4"] = 2  # two images straight in the class folder: each stands alone
    return write_class_images(tmp_path / "data", folders, size=24)


def _datamodule(overrides):
    dm = instantiate(compose("train", ["data.near_duplicates=false", "data.image_size=24", *overrides]).data)
    dm.setup("fit")
    return dm


def _check_groups_kept_together(dm):
    where = {s: {r.group for r in dm.splits[s] if r.group} for s in SPLITS}
    for a, b in combinations(SPLITS, 2):
        assert not where[a] & where[b], (a, b, where[a] & where[b])
    return set().union(*where.values())


@pytest.mark.parametrize("data", [["data=single_label"], ["data=hierarchy", "data.level=3"]])
def test_each_patient_folder_is_one_group_in_one_split(patients, tmp_path, data):
    dm = _datamodule([*data, f"data.root={patients}"])
    assert _check_groups_kept_together(dm) == {f"p{i}" for i in range(1, 11)}
    records = [r for s in SPLITS for r in dm.splits[s]]
    assert sum(1 for r in records if r.group == "p1") == 7 and sum(1 for r in records if not r.group) == 2
    dm.write_reports(tmp_path / "run")
    said = (tmp_path / "run" / "grouping.txt").read_text()
    assert "the first sub-folder below each class folder (10 groups" in said
    assert "2 image(s) outside such a folder stand alone" in said


def test_group_level_none_splits_image_by_image_and_depth_picks_a_deeper_folder(patients, tmp_path):
    dm = _datamodule(["data=single_label", f"data.root={patients}", "data.group_level=none"])
    assert not any(r.group for s in SPLITS for r in dm.splits[s])
    dm.write_reports(tmp_path / "run")
    assert "image by image" in (tmp_path / "run" / "grouping.txt").read_text()
    assert folder_group(patients / "AC-1" / "p1" / "slide2" / "a.png", patients, 2) == "slide2"
    assert folder_group(patients / "AC-1" / "p1" / "a.png", patients, 2) is None
    with pytest.raises(ValueError, match="group_level must be 'auto', 'none' or a folder depth"):
        parse_group_level("patients")


def test_a_flat_folder_says_how_to_group(tmp_path):
    root = write_class_images(tmp_path / "flat", {"AC-1": 6, "AC-4": 6}, size=24)
    dm = _datamodule(["data=single_label", f"data.root={root}"])
    dm.write_reports(tmp_path / "run")
    said = (tmp_path / "run" / "grouping.txt").read_text()
    assert "none found" in said and "AC-3/<patient>/..." in said


def test_the_simulator_splits_field_by_field_without_the_folder_hint(tmp_path):
    """Rendered fields are independent draws: ``data=synthetic`` splits them one by one and grouping.txt says why,
    not that the user should sort patients into sub-folders (before: the flat-folder hint)."""
    dm = _datamodule(
        [
            "data=synthetic",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.n_per_class=3",
            "data.render_size=48",
            "data.classes=[AC-1,AC-4]",
            "data.split_fractions=[0.34,0.33,0.33]",
        ]
    )
    assert sum(len(dm.splits[s]) for s in SPLITS) == 6 and not any(
        r.group for s in SPLITS for r in dm.splits[s]
    )
    dm.write_reports(tmp_path / "run")
    said = (tmp_path / "run" / "grouping.txt").read_text()
    assert "independent draw of the simulator" in said and "sub-folder" not in said
