"""The real ICAP reference images in ../shared (skipped when absent; never copied into the repo)."""

import pytest

from ana_lightning.data.datamodules import SingleLabelDataModule
from ana_lightning.data.records import read_single_label_folder
from ana_lightning.data.splits import split_records
from ana_lightning.taxonomy import Taxonomy

from conftest import REAL_DATA

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (REAL_DATA / "patterns").is_dir(), reason=f"{REAL_DATA} is absent"),
]


@pytest.fixture(scope="module")
def records():
    recs, bad = read_single_label_folder(REAL_DATA / "patterns", Taxonomy.load())
    assert bad == []
    return recs


def test_lower_case_folders_and_all_classes(records):
    codes = {r.label for r in records}
    assert len(records) == 155
    assert codes == {f"AC-{i}" for i in range(32)}
    assert all(r.path.split("/")[-2] == r.label.lower() for r in records)


def test_odd_size_image_read(records):
    sizes = {r.size for r in records}
    assert (301, 300) in sizes or (300, 301) in sizes


def test_duplicate_pair_lands_in_one_split(records):
    a, b = (str(REAL_DATA / "patterns" / "ac-7" / n) for n in ("1473303112-2.jpg", "1473307968-0.jpg"))
    by_path = {r.path: r for r in records}
    assert by_path[a].sha256 == by_path[b].sha256
    for seed in range(5):
        where = {r.path: s for s, v in split_records(records, seed=seed).items() for r in v}
        assert where[a] == where[b]


def test_datamodule_on_real_images(tmp_path):
    dm = SingleLabelDataModule(root=str(REAL_DATA / "patterns"), image_size=64, batch_size=8)
    dm.setup()
    assert dm.class_names == [f"AC-{i}" for i in range(32)]
    assert sum(len(v) for v in dm.splits.values()) == 155
    dm.write_reports(tmp_path)
    assert "1473303112-2.jpg" in (tmp_path / "duplicates.csv").read_text()
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[1:] == (3, 64, 64)
