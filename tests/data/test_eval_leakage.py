"""Evaluation refuses images that any checkpoint trained on: every ensemble member and every level of
a hierarchical pipeline is checked against its own run's split manifest, not only the first."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from ana_lightning.data.records import ImageRecord
from ana_lightning.data.splits import LeakageError
from ana_lightning.pipeline import check_unseen

from conftest import compose, tiny_train_overrides


@pytest.fixture(scope="module")
def other_seed_checkpoint(trained_checkpoint, tmp_path_factory) -> Path:
    """The same data, split with another seed: its training split holds some of the first run's test images."""
    from ana_lightning.pipeline import train

    root, _, _ = trained_checkpoint
    run = tmp_path_factory.mktemp("seed1") / "runs" / "r"
    train(compose("train", tiny_train_overrides(root, epochs=1) + ["data.seed=1"], output_dir=run))
    return next((run / "checkpoints").glob("best-epoch*.ckpt"))


def test_ensemble_member_trained_on_the_test_images_is_refused(
    trained_checkpoint, other_seed_checkpoint, tmp_path
):
    from ana_lightning.pipeline import evaluate

    root, _, best = trained_checkpoint
    cfg = compose(
        "eval",
        [
            "data=single_label",
            f"data.root={root}",
            "ckpt_path=null",
            f"ensemble.members=[{best},{other_seed_checkpoint}]",
        ],
        output_dir=tmp_path / "e",
    )
    with pytest.raises(LeakageError, match="overlap a checkpoint's training split") as e:
        evaluate(cfg)
    lines = str(e.value).splitlines()[1:]
    assert any(str(other_seed_checkpoint) in line and "trained on" in line for line in lines)
    assert not any(
        line.strip().startswith(str(best)) for line in lines
    )  # the first member's own split is clean


def test_members_of_one_split_pass(trained_checkpoint, tmp_path):
    from ana_lightning.pipeline import evaluate

    root, run, best = trained_checkpoint
    last = run / "checkpoints" / "last.ckpt"  # same run, same split
    cfg = compose(
        "eval",
        ["data=single_label", f"data.root={root}", "ckpt_path=null", f"ensemble.members=[{best},{last}]"],
        output_dir=tmp_path / "e",
    )
    _, objs = evaluate(cfg)
    assert objs["split"] == "test"


def _manifest(run: Path, rows: list[tuple[str, str]]) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(b"")
    with open(run / "split_manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sha256", "group"])
        w.writerows([p, "AC-1", s, p, ""] for p, s in rows)  # sha256 = path, for the test
    return ckpt


def test_every_pipeline_level_is_checked(tmp_path, caplog):
    from omegaconf import OmegaConf

    from ana_lightning.hierarchy_jobs import _all_checkpoints

    level1 = _manifest(tmp_path / "l1", [("a", "train"), ("b", "test"), ("c", "test")])
    level2 = _manifest(tmp_path / "l2", [("a", "train"), ("b", "test"), ("c", "test")])
    leaf = _manifest(tmp_path / "l3", [("a", "test"), ("b", "train"), ("c", "test")])  # another split
    pipe = OmegaConf.create({"level1": str(level1), "level2": str(level2), "level3": {"speckled": str(leaf)}})
    ckpts = _all_checkpoints(pipe)
    assert ckpts == [level1, level2, leaf]
    evaluated = [ImageRecord(p, ("AC-1",), sha256=p) for p in ("b", "c")]  # level 1's test split
    with pytest.raises(
        LeakageError, match=r"l3/checkpoints/best.ckpt trained on 1 of the 2 evaluated images"
    ):
        check_unseen(ckpts, evaluated, "test")
    check_unseen(ckpts[:2], evaluated, "test")  # levels 1 and 2 share the split: fine
    with caplog.at_level(logging.WARNING):
        check_unseen(ckpts, evaluated, "all")  # asked for: a warning, not an error
    assert "not held-out results" in caplog.text


def test_copies_of_a_trained_image_count_as_images_in_both_warnings(tmp_path, caplog):
    """Two evaluated files with the bytes of one trained image are two images seen in training, in the
    check before scoring as in the metrics.json flag after it (before: 1 of 3 before, 2 of 3 after)."""
    from ana_lightning.data.splits import seen_in_training

    ckpt = _manifest(tmp_path / "r", [("a", "train"), ("c", "test")])
    evaluated = [ImageRecord(p, ("AC-1",), sha256=h) for p, h in (("a", "a"), ("a_copy", "a"), ("c", "c"))]
    with pytest.raises(
        LeakageError, match=r"trained on 2 of the 3 evaluated images \(e.g. \['a', 'a_copy'\]"
    ):
        check_unseen([ckpt], evaluated, "test")
    assert seen_in_training(evaluated, tmp_path / "r" / "split_manifest.csv") == 2


# ---------------------------------------------------------------------------- grouping that cannot split
def _hospital(root: Path, layout: dict[str, int]) -> Path:
    from conftest import write_class_images

    for folder, n in layout.items():
        write_class_images(root / Path(folder).parent, {Path(folder).name: n}, size=24, seed=len(folder) + n)
    return root


def test_one_group_holding_everything_stops_naming_the_key(tmp_path):
    from ana_lightning.data.hospital import HospitalDataModule
    from ana_lightning.data.records import DatasetError

    root = _hospital(
        tmp_path / "export", {"site1/AC-1": 20, "site1/AC-4": 20}
    )  # group_level=auto: 'site1' for all
    dm = HospitalDataModule(hospital_root=str(root), image_size=32, cache_images=False, near_duplicates=False)
    with pytest.raises(
        DatasetError,
        match=r"val and test split\(s\) are empty \(train 40, val 0, test 0.*'site1'.*data.group_level",
    ):
        dm.setup()
    dm = HospitalDataModule(
        hospital_root=str(root), image_size=32, cache_images=False, near_duplicates=False, group_level="none"
    )
    dm.setup()  # split image by image, as the message suggests
    assert all(dm.splits[s] for s in ("train", "val", "test"))


def test_a_dominant_group_is_a_warning(tmp_path, caplog):
    from ana_lightning.data.hospital import HospitalDataModule

    layout = {"p0/AC-1": 16, "p0/AC-4": 16, **{f"p{i}/AC-{1 if i % 2 else 4}": 2 for i in range(1, 15)}}
    root = _hospital(tmp_path / "export", layout)
    dm = HospitalDataModule(
        hospital_root=str(root),
        image_size=32,
        cache_images=False,
        near_duplicates=False,
        split_fractions=[0.5, 0.25, 0.25],
    )
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "One group, 'p0', holds 32 of the 60 images" in caplog.text


def test_episodes_use_each_picture_once():
    from ana_lightning.data.splits import NearDuplicateSet
    from ana_lightning.episodes import unique_images

    recs = [
        ImageRecord(p, ("AC-1",), sha256=h)
        for p, h in [
            ("a.png", "1"),
            ("a_copy.png", "1"),
            ("b.png", "2"),
            ("b_flipped.png", "3"),
            ("c.png", "4"),
        ]
    ]
    near = [NearDuplicateSet((recs[2], recs[3]), ("identity", "flip_lr"), (0, 0))]
    kept, dropped = unique_images(recs, near)
    assert [r.path for r in kept] == ["a.png", "b.png", "c.png"] and dropped == 2


def test_a_split_left_empty_by_tiny_classes_is_a_warning(tmp_path, caplog):
    from ana_lightning.data.datamodules import SingleLabelDataModule

    from conftest import write_class_images

    root = write_class_images(tmp_path / "d", {"AC-1": 2, "AC-2": 2}, size=16)
    dm = SingleLabelDataModule(root=str(root), image_size=16, cache_images=False)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert any(not dm.splits[s] for s in ("val", "test"))
    assert "split(s) are empty" in caplog.text and "Too few images" in caplog.text
