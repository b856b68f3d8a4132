"""Hospital folders and CSVs → multi-label records; grouped splits; the mixed datamodule's split and manifest."""

import csv
import logging
import shutil
from pathlib import Path

import pytest
import torch

from ana_lightning.data.hospital import (
    HospitalDataModule,
    MixedDataModule,
    read_hospital_folder,
    read_labels_csv,
)
from ana_lightning.data.records import DatasetError
from ana_lightning.data.splits import SPLITS, check_no_leakage, split_records
from ana_lightning.taxonomy import Taxonomy

from conftest import write_class_images

TREE = Taxonomy.load()


def _by_name(records):
    return {Path(r.path).parent.as_posix().split("/hosp/")[-1]: r for r in records}


def test_grammar_valid_names_and_other_levels(tmp_path):
    root = write_class_images(
        tmp_path / "hosp",
        {
            "patient01/AC-1 AC-4": 2,
            "patient01/AC-1+AC-4": 1,
            "patient02/ac-29_ac-3": 2,
            "patient03/AC-1, AC-5": 2,
            "patient04/AC-2 & AC-3;AC-5": 1,
            "AC-4/patient12": 2,  # a patient sub-folder below the label: AC-4, never AC-12
            "AC-6/patient12/slide3": 1,
        },
        size=24,
    )
    (root / "README.txt").write_text("export notes")  # next to the label folders: ignored
    recs, bad = read_hospital_folder(root, TREE)
    assert bad == []
    got = _by_name(recs)
    assert got["patient01/AC-1 AC-4"].codes == ("AC-1", "AC-4")
    assert got["patient01/AC-1+AC-4"].codes == ("AC-1", "AC-4")
    assert got["patient02/ac-29_ac-3"].codes == ("AC-3", "AC-29")  # natural order
    assert got["patient03/AC-1, AC-5"].codes == ("AC-1", "AC-5")
    assert got["patient04/AC-2 & AC-3;AC-5"].codes == ("AC-2", "AC-3", "AC-5")
    assert got["AC-4/patient12"].codes == ("AC-4",)
    assert got["AC-6/patient12/slide3"].codes == ("AC-6",)
    assert all("AC-12" not in r.codes for r in recs)
    # group: the outermost folder that names no code; the same name is the same group anywhere
    assert got["patient01/AC-1 AC-4"].group == "patient01"
    assert got["AC-4/patient12"].group == got["AC-6/patient12/slide3"].group == "patient12"
    assert all(len(r.sha256) == 64 for r in recs) and len(recs) == 11
    recs0, _ = read_hospital_folder(root, TREE, group_level="none")
    assert {r.group for r in recs0} == {None}
    recs1, _ = read_hospital_folder(root, TREE, group_level=1)
    assert _by_name(recs1)["AC-6/patient12/slide3"].group == "patient12"
    assert _by_name(recs1)["patient01/AC-1 AC-4"].group is None  # depth 1 is the label folder there


def test_grammar_invalid_tokens_listed_or_ignored(tmp_path, caplog):
    root = write_class_images(
        tmp_path / "hosp",
        {
            "patient01/AC-4 1:160": 2,  # a titer
            "patient02/AC-1 positive": 1,
            "patient03/AC-1 4": 1,  # a bare number is never a class
            "patient04/AC-2": 2,
        },
        size=24,
    )
    with pytest.raises(DatasetError) as e:
        read_hospital_folder(root, TREE)
    msg = str(e.value)
    for needle in ("AC-4 1:160", "'1:160'", "AC-1 positive", "'positive'", "AC-1 4", "strict=false"):
        assert needle in msg, needle
    assert "patient04" not in msg
    with caplog.at_level(logging.WARNING):
        recs, _ = read_hospital_folder(root, TREE, strict=False)
    got = _by_name(recs)
    assert got["patient01/AC-4 1:160"].codes == ("AC-4",)
    assert got["patient03/AC-1 4"].codes == ("AC-1",)
    assert "1:160" in caplog.text and "positive" in caplog.text


def test_unlabelled_and_bad_files(tmp_path):
    root = write_class_images(tmp_path / "hosp", {"patient01/AC-1": 2, "patient02": 1}, size=24)
    (root / "patient01" / "AC-1" / "notes.txt").write_text("x")
    (root / "patient01" / "AC-1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError) as e:
        read_hospital_folder(root, TREE)
    msg = str(e.value)
    assert "patient02" in msg and "names an AC code" in msg and "notes.txt" in msg and "broken.png" in msg
    recs, bad = read_hospital_folder(root, TREE, on_bad_file="skip")
    assert len(recs) == 2 and len(bad) == 3
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_hospital_folder(tmp_path / "nowhere", TREE)


def test_labels_csv(tmp_path):
    root = write_class_images(tmp_path / "imgs", {"a": 3}, size=24)
    files = sorted((root / "a").glob("*.png"))
    rows = [
        ["path", "labels", "group"],
        [f"a/{files[0].name}", "AC-1;AC-4", "p1"],
        [f"a/{files[1].name}", "AC-4 1:160", "p2"],
        [f"a/{files[2].name}", "ac-29_ac-3", ""],
    ]
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DatasetError, match=r"line 3.*1:160"):
        read_labels_csv(root / "labels.csv", TREE)
    recs, _ = read_labels_csv(root / "labels.csv", TREE, strict=False)
    assert [(r.codes, r.group) for r in recs] == [
        (("AC-1", "AC-4"), "p1"),
        (("AC-4",), "p2"),
        (("AC-3", "AC-29"), None),
    ]
    dm = HospitalDataModule(
        labels_csv=str(root / "labels.csv"), strict=False, image_size=16, split_fractions=[1, 0, 0]
    )
    dm.setup()
    assert dm.class_names == ["AC-1", "AC-3", "AC-4", "AC-29"]


def _synthetic_hospital(root: Path, n=60, patients=12, codes=("AC-1", "AC-3", "AC-5", "AC-8")) -> Path:
    from ana_lightning.data.synthetic import generate_hospital_dataset

    return generate_hospital_dataset(
        root, n_images=n, codes=list(codes), n_patients=patients, size=32, seed=1, progress=False
    )


def test_grouped_stratified_split_without_leakage(tmp_path):
    root = _synthetic_hospital(tmp_path / "hosp")
    # the same image filed under two patients joins their groups: still one split
    src = next((root / "patient000").rglob("*.png"))
    dst = root / "patient001" / "AC-8" / "copy.png"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    recs, _ = read_hospital_folder(root, TREE)
    assert {r.group for r in recs} == {f"patient{k:03d}" for k in range(12)}
    for seed in range(4):
        s = split_records(recs, seed=seed)
        check_no_leakage(s)
        where = {}
        for k, v in s.items():
            for r in v:
                assert where.setdefault(r.group, k) == k, f"{r.group} spans two splits"
        assert where["patient000"] == where["patient001"]
        assert sum(len(v) for v in s.values()) == len(recs)
        train_codes = {c for r in s["train"] for c in r.codes}
        assert train_codes == {c for r in recs for c in r.codes}


def test_hospital_datamodule_targets_and_pos_weight(tmp_path):
    root = _synthetic_hospital(tmp_path / "hosp")
    dm = HospitalDataModule(hospital_root=str(root), image_size=16, batch_size=4)
    dm.setup()
    assert dm.class_names == ["AC-1", "AC-3", "AC-5", "AC-8"]
    ds = dm.dataset("train")
    for i in range(len(ds)):
        t = ds[i]["target"]
        assert t.dtype == torch.float32 and t.tolist() == [
            float(c in ds.records[i].codes) for c in dm.class_names
        ]
    train = dm.splits["train"]
    want = [
        (len(train) - sum(c in r.codes for r in train)) / sum(c in r.codes for r in train)
        for c in dm.class_names
    ]
    kw = dm.model_kwargs()
    assert kw["pos_weight"] == pytest.approx(want) and "class_weights" not in kw
    assert dm.model_kwargs(loss_weights=False)["pos_weight"] is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].shape == (4, 4)
    with pytest.raises(ValueError, match="hospital_root is not set"):
        HospitalDataModule()


def test_hospital_balanced_draws_with_pos_weight_warn_of_double_weighting(tmp_path, caplog):
    root = _synthetic_hospital(tmp_path / "hosp")
    dm = HospitalDataModule(hospital_root=str(root), image_size=16, batch_size=4, sampler="balanced")
    dm.setup()
    with caplog.at_level(logging.WARNING):
        dm.model_kwargs(loss_weights=False)
    assert "twice" not in caplog.text
    with caplog.at_level(logging.WARNING):
        kw = dm.model_kwargs()
    assert "BCE pos_weight) with data.sampler=balanced weighs the classes twice" in caplog.text
    assert kw["pos_weight"] is not None  # a warning, not a change: the user may mean it


@pytest.fixture(scope="module")
def mixed_dm(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixed")
    dm = MixedDataModule(
        cache_dir=str(base / "cache"),
        synthetic_codes=["AC-1", "AC-3", "AC-5", "AC-8"],
        n_per_class=10,
        n_hospital=60,
        n_patients=12,
        render_size=32,
        image_size=16,
        batch_size=8,
        mix_ratio=0.5,
    )
    dm.setup()
    return dm, base


def test_mixed_split_holds_both_sources(mixed_dm):
    dm, _ = mixed_dm
    hosp = dm._hospital_paths
    for s in SPLITS:
        n_h = sum(r.path in hosp for r in dm.splits[s])
        n_s = len(dm.splits[s]) - n_h
        assert n_h > 0 and n_s > 0, s
    assert sum(r.path in hosp for r in dm.splits["train"]) == pytest.approx(0.7 * 60, abs=6)
    check_no_leakage(dm.splits)
    ds = dm.dataset("train")
    single = [i for i, r in enumerate(ds.records) if r.path not in hosp]
    assert all(ds.targets[i].sum() == 1 for i in single)  # single-label images are one-hot


def test_mixed_manifest_selects_the_hospital_test_split(mixed_dm, tmp_path):
    dm, _ = mixed_dm
    dm.write_reports(tmp_path)
    again = MixedDataModule(
        cache_dir=dm.single_root.parent,
        synthetic_codes=dm.synthetic_codes,
        n_per_class=10,
        n_hospital=60,
        n_patients=12,
        render_size=32,
        image_size=16,
        split_manifest=str(tmp_path / "split_manifest.csv"),
    )
    again.setup()
    assert {s: [r.path for r in v] for s, v in again.splits.items()} == {
        s: [r.path for r in v] for s, v in dm.splits.items()
    }
    # data=hospital on the mixed run's manifest: the hospital images of each split, matched by content
    hdm = HospitalDataModule(
        hospital_root=str(dm.hospital_root),
        image_size=16,
        split_manifest=str(tmp_path / "split_manifest.csv"),
    )
    hdm.setup()
    for s in SPLITS:
        assert sorted(r.sha256 for r in hdm.splits[s]) == sorted(
            r.sha256 for r in dm.splits[s] if r.path in dm._hospital_paths
        )


def test_mixed_rejects_a_ratio_without_hospital_images(tmp_path):
    with pytest.raises(ValueError, match=r"mix_ratio=0.95 with batch_size=8"):
        MixedDataModule(cache_dir=str(tmp_path), batch_size=8, mix_ratio=0.95)
    with pytest.raises(ValueError, match="data.root"):
        MixedDataModule(cache_dir=str(tmp_path), root="/x")


def test_mixed_duplicates_across_sources_share_a_split(tmp_path):
    single = write_class_images(tmp_path / "single", {"AC-1": 8, "AC-3": 8, "AC-5": 8}, size=24)
    hosp = _synthetic_hospital(tmp_path / "hosp", n=40, patients=10, codes=("AC-1", "AC-3", "AC-5"))
    copied = sorted(hosp.rglob("*.png"))[:3]
    for i, src in enumerate(copied):  # the same bytes filed as single-label images too
        shutil.copy(src, single / "AC-1" / f"from_hospital_{i}.png")
    dm = MixedDataModule(
        single_root=str(single), hospital_root=str(hosp), strict=False, image_size=16, batch_size=8
    )
    dm.setup()
    where = {r.path: s for s in SPLITS for r in dm.splits[s]}
    for i, src in enumerate(copied):
        assert where[str(single / "AC-1" / f"from_hospital_{i}.png")] == where[str(src)]
    check_no_leakage(dm.splits)
    assert dm.root == tmp_path.resolve()
