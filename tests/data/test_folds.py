"""Cross-validation folds: stratified, grouped, disjoint, saved once per sweep and reused exactly."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from test_near_duplicates import folder as near_dup_folder  # noqa: F401 - a fixture

from ana_lightning.data.datamodules import SingleLabelDataModule
from ana_lightning.data.records import ImageRecord
from ana_lightning.data.splits import (
    FoldsManifestError,
    cv_split,
    fold_records,
    load_folds_manifest,
    sweep_folds,
)

from conftest import write_class_images


def _records(counts: dict[str, int]) -> list[ImageRecord]:
    return [
        ImageRecord(f"/d/{c}/{i}.png", (c,), None, f"{c}-{i}") for c, n in counts.items() for i in range(n)
    ]


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_folds_disjoint_covering_and_stratified_within_one_image(k, seed):
    counts = {"AC-1": 23, "AC-2": 11, "AC-4": 7, "AC-5": 3, "AC-8": 2}
    recs = _records(counts)
    folds = fold_records(recs, k, seed)
    paths = [r.path for f in folds for r in f]
    assert len(paths) == len(set(paths)) == len(recs)  # disjoint and covering
    for c, n in counts.items():
        per_fold = [sum(r.codes == (c,) for r in f) for f in folds]
        ideal = n / k
        assert all(abs(x - ideal) < 1 for x in per_fold), (c, per_fold)  # within one image of n/k
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= len(counts)


def test_folds_deterministic_and_seeded():
    recs = _records({"AC-1": 20, "AC-2": 20})
    a = fold_records(recs, 4, [0, 0])
    assert [[r.path for r in f] for f in a] == [
        [r.path for r in f] for f in fold_records(list(reversed(recs)), 4, [0, 0])
    ]
    assert [[r.path for r in f] for f in a] != [[r.path for r in f] for f in fold_records(recs, 4, [0, 1])]


def test_groups_and_duplicates_never_split_across_folds():
    recs = _records({"AC-1": 20, "AC-2": 20})
    dup = [ImageRecord(f"/d/AC-1/copy{i}.png", ("AC-1",), None, "AC-1-0") for i in range(3)]
    grouped = [ImageRecord(f"/d/AC-2/p7_{i}.png", ("AC-2",), "patient7", f"g{i}") for i in range(4)]
    mixed = [ImageRecord(f"/d/AC-4/p9_{i}.png", ("AC-4",), "patient9", f"h{i}") for i in range(3)]
    mixed.append(ImageRecord("/d/AC-1/p9_x.png", ("AC-1",), "patient9", "hx"))
    for seed in range(8):
        folds = fold_records(recs + dup + grouped + mixed, 5, seed)
        where = {r.path: k for k, f in enumerate(folds) for r in f}
        assert len({where[p] for p in ["/d/AC-1/0.png"] + [d.path for d in dup]}) == 1
        assert len({where[g.path] for g in grouped}) == 1
        assert len({where[m.path] for m in mixed}) == 1


def test_multilabel_folds_stratified():
    recs = []
    for i in range(60):
        codes = ("AC-1", "AC-4") if i % 3 == 0 else ("AC-1",) if i % 3 == 1 else ("AC-4", "AC-5")
        recs.append(ImageRecord(f"/h/{i}.png", codes, f"patient{i}", f"s{i}"))
    folds = fold_records(recs, 4, 0)
    for c in ("AC-1", "AC-4", "AC-5"):
        n = sum(c in r.codes for r in recs)
        per_fold = [sum(c in r.codes for r in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 2, (c, per_fold, n)


def test_too_few_groups_is_a_clear_error():
    recs = [ImageRecord(f"/d/{i}.png", ("AC-1",), f"g{i % 2}", f"s{i}") for i in range(10)]
    with pytest.raises(ValueError, match="at least 3 independent groups"):
        fold_records(recs, 3)


def test_validation_never_from_the_test_fold():
    recs = _records({"AC-1": 20, "AC-2": 14, "AC-3": 6})
    recs += [ImageRecord(f"/d/AC-3/p_{i}.png", ("AC-3",), "patientX", f"px{i}") for i in range(3)]
    fold_of = {r.path: k for k, f in enumerate(fold_records(recs, 5, 0)) for r in f}
    tests = []
    for k in range(5):
        s = cv_split(recs, fold_of, k, val_fraction=0.15 / 0.85, seed=[0, 0, k])
        assert {r.path for r in s["test"]} == {p for p, f in fold_of.items() if f == k}
        assert all(fold_of[r.path] != k for r in s["val"] + s["train"])
        assert s["val"] and len(s["train"]) + len(s["val"]) + len(s["test"]) == len(recs)
        tests += [r.path for r in s["test"]]
    assert sorted(tests) == sorted(r.path for r in recs)  # every image tested exactly once


def test_manifest_made_once_and_reused_exactly(tmp_path):
    recs = _records({"AC-1": 12, "AC-2": 9})
    path = tmp_path / "sweep" / "folds_manifest.csv"
    first = sweep_folds(recs, path, folds=3, repeats=2, seed=0)
    text = path.read_text()
    rows = load_folds_manifest(path)
    assert len(rows) == 2 * len(recs) and {r["repeat"] for r in rows} == {"0", "1"}
    assert first[0] != first[1]  # repeats use different fold seeds
    assert sweep_folds(recs, path, folds=3, repeats=2, seed=0) == first
    assert path.read_text() == text
    # A hand-edited manifest is used exactly as written (it is not recomputed).
    edited = text.replace("\n0,0,/d/AC-1/0.png", "\n0,1,/d/AC-1/0.png")
    assert edited != text
    path.write_text(edited)
    assert sweep_folds(recs, path, folds=3, repeats=2, seed=0)[0]["/d/AC-1/0.png"] == 1


def test_manifest_creation_is_race_free(tmp_path):
    recs = _records({"AC-1": 30, "AC-2": 30})
    path = tmp_path / "folds_manifest.csv"
    results, errors = [], []

    def job():
        try:
            results.append(sweep_folds(recs, path, folds=5, seed=0))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    assert all(r == results[0] for r in results)
    assert len(load_folds_manifest(path)) == len(recs)


@pytest.mark.parametrize(
    "change, match",
    [
        ("added", "not in it"),
        ("removed", "not in the dataset"),
        ("content", "sha256 differs"),
        ("label", "labelled"),
        ("settings", "data.folds=4"),
    ],
)
def test_changed_dataset_or_settings_refused(tmp_path, change, match):
    recs = _records({"AC-1": 10, "AC-2": 10})
    path = tmp_path / "folds_manifest.csv"
    sweep_folds(recs, path, folds=3, seed=0)
    folds = 3
    if change == "added":
        recs = recs + [ImageRecord("/d/AC-2/new.png", ("AC-2",), None, "new")]
    elif change == "removed":
        recs = recs[1:]
    elif change == "content":
        recs = [ImageRecord(recs[0].path, recs[0].codes, None, "edited")] + recs[1:]
    elif change == "label":
        recs = [ImageRecord(recs[0].path, ("AC-2",), None, recs[0].sha256)] + recs[1:]
    else:
        folds = 4
    with pytest.raises(FoldsManifestError, match=match):
        sweep_folds(recs, path, folds=folds, seed=0)


def test_manifest_of_size_order_folds_says_so(tmp_path):
    """Folds made with data.split_order=size carry an ``order`` column: a job asking for the other order is
    refused; a manifest without the column (the random order, or made before round 19) is read as given."""
    recs = _records({"AC-1": 12, "AC-2": 9})
    path = tmp_path / "folds_manifest.csv"
    made = sweep_folds(recs, path, folds=3, seed=0, order="size")
    assert {r["order"] for r in load_folds_manifest(path)} == {"size"}
    assert sweep_folds(recs, path, folds=3, seed=0, order="size") == made
    with pytest.raises(FoldsManifestError, match="data.split_order=random"):
        sweep_folds(recs, path, folds=3, seed=0)
    plain = tmp_path / "plain.csv"
    sweep_folds(recs, plain, folds=3, seed=0)
    assert "order" not in plain.read_text().splitlines()[0]  # the random order writes the columns as before
    assert sweep_folds(recs, plain, folds=3, seed=0, order="size")  # no column: not checked


def test_datamodule_folds(tmp_path):
    root = write_class_images(tmp_path / "data", {"AC-1": 9, "AC-2": 9, "AC-4": 6}, size=16)
    manifest = tmp_path / "sweep" / "folds_manifest.csv"
    tested = []
    for k in range(3):
        dm = SingleLabelDataModule(
            root=str(root), image_size=16, folds=3, fold=k, folds_manifest=str(manifest), cache_images=False
        )
        dm.setup()
        test = {Path(r.path).name + r.label for r in dm.splits["test"]}
        assert not test & {Path(r.path).name + r.label for r in dm.splits["train"] + dm.splits["val"]}
        assert Counter(r.label for r in dm.splits["test"]) == {"AC-1": 3, "AC-2": 3, "AC-4": 2}
        tested += sorted(test)
        dm.write_reports(tmp_path / f"job{k}")
    assert len(tested) == len(set(tested)) == 24
    assert all(
        not Path(r["path"]).is_absolute() for r in load_folds_manifest(manifest)
    )  # relative to data.root


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"folds": 5}, "data.fold in 0…4"),
        ({"folds": 5, "fold": 5}, "data.fold in 0…4"),
        ({"fold": 1}, "needs data.folds"),
        ({"folds": 1, "fold": 0}, "at least 2"),
        ({"folds": 3, "fold": 0, "repeats": 2, "repeat": 2}, "data.repeat"),
        ({"folds": 3, "fold": 0, "split_manifest": "x.csv"}, "drop data.split_manifest"),
    ],
)
def test_fold_settings_checked(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SingleLabelDataModule(root=str(tmp_path), **kwargs)


def _fold_tests(make, k: int) -> list[list]:
    """The test split of every fold job; checks validation and training never touch it."""
    out = []
    for fold in range(k):
        dm = make(fold)
        dm.setup()
        test = {r.path for r in dm.splits["test"]}
        assert test and not test & {r.path for r in dm.splits["train"] + dm.splits["val"]}
        out.append(dm.splits["test"])
    paths = [r.path for t in out for r in t]
    assert len(paths) == len(set(paths))
    return out


def test_hospital_folds_are_grouped_by_patient_and_multilabel(tmp_path):
    from ana_lightning.data.hospital import HospitalDataModule

    folders = {
        f"patient{p:02d}/{lab}": 2
        for p, lab in enumerate(["AC-1 AC-4", "AC-1", "AC-4", "AC-5", "AC-1 AC-5", "AC-4"] * 3)
    }
    root = write_class_images(tmp_path / "hosp", folders, size=16)
    manifest = tmp_path / "sweep" / "folds_manifest.csv"
    tests = _fold_tests(
        lambda f: HospitalDataModule(
            hospital_root=str(root),
            image_size=16,
            folds=3,
            fold=f,
            folds_manifest=str(manifest),
            cache_images=False,
        ),
        3,
    )
    assert sum(len(t) for t in tests) == 36
    patients = [{r.group for r in t} for t in tests]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    for code in ("AC-1", "AC-4", "AC-5"):
        per_fold = [sum(code in r.codes for r in t) for t in tests]
        assert max(per_fold) - min(per_fold) <= 2, (
            code,
            per_fold,
        )  # whole patients of 2 images move together


def test_mixed_and_hierarchy_datamodules_take_folds(tmp_path):
    from ana_lightning.data.hierarchy import HEp2HierarchyDataModule
    from ana_lightning.data.hospital import MixedDataModule

    single = write_class_images(tmp_path / "single", {"AC-1": 6, "AC-4": 6, "AC-5": 6}, size=16)
    hosp = write_class_images(
        tmp_path / "hosp",
        {f"patient{p}/{lab}": 2 for p, lab in enumerate(["AC-1 AC-4", "AC-5", "AC-4"] * 2)},
        size=16,
        seed=1,
    )
    tests = _fold_tests(
        lambda f: MixedDataModule(
            single_root=str(single),
            hospital_root=str(hosp),
            image_size=16,
            batch_size=4,
            folds=3,
            fold=f,
            folds_manifest=str(tmp_path / "m1.csv"),
            cache_images=False,
        ),
        3,
    )
    assert sum(len(t) for t in tests) == 30
    tests = _fold_tests(
        lambda f: HEp2HierarchyDataModule(
            root=str(single),
            level=2,
            image_size=16,
            folds=3,
            fold=f,
            repeats=2,
            repeat=1,
            folds_manifest=str(tmp_path / "m2.csv"),
            cache_images=False,
        ),
        3,
    )
    assert sum(len(t) for t in tests) == 18
    rows = load_folds_manifest(tmp_path / "m2.csv")
    assert {r["repeat"] for r in rows} == {"0", "1"}
    assert [len(t) for t in tests] == [6, 6, 6]


@pytest.mark.parametrize("seed", range(3))
def test_near_duplicates_never_split_across_folds(near_dup_folder, tmp_path, seed):  # noqa: F811 - the fixture
    root, sets = near_dup_folder
    fold_of = {}
    for k in range(3):
        dm = SingleLabelDataModule(
            root=str(root),
            image_size=16,
            cache_images=False,
            seed=seed,
            folds=3,
            fold=k,
            folds_manifest=str(tmp_path / f"m{seed}.csv"),
        )
        dm.setup()
        fold_of.update({r.path: k for r in dm.splits["test"]})
        split_of = {r.path: s for s, recs in dm.splits.items() for r in recs}
        for paths in sets.values():  # also within the job: train and val never share a copy
            assert len({split_of[str(p)] for p in paths}) == 1
    for paths in sets.values():
        assert len({fold_of[str(p)] for p in paths}) == 1, {p.name: fold_of[str(p)] for p in paths}
