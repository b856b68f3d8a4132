import shutil

import pytest

from ana_lightning.data.records import ImageRecord, read_single_label_folder
from ana_lightning.data.splits import (
    LeakageError,
    check_no_leakage,
    load_manifest,
    save_manifest,
    split_records,
)
from ana_lightning.taxonomy import Taxonomy

from conftest import write_class_images


def _records(n_per_class=20, classes=("AC-1", "AC-2", "AC-3")):
    return [
        ImageRecord(f"/d/{c}/{i}.png", (c,), None, f"{c}-{i}") for c in classes for i in range(n_per_class)
    ]


def test_deterministic_and_disjoint():
    recs = _records()
    a = split_records(recs, seed=3)
    b = split_records(list(reversed(recs)), seed=3)  # input order does not matter
    assert {k: [r.path for r in v] for k, v in a.items()} == {k: [r.path for r in v] for k, v in b.items()}
    paths = [r.path for s in a.values() for r in s]
    assert len(paths) == len(set(paths)) == len(recs)
    c = split_records(recs, seed=4)
    assert [r.path for r in a["test"]] != [r.path for r in c["test"]]


def _specimens(sizes=(310, 120, 260, 90, 400, 180, 220)):
    """Two classes of specimen groups of distinct sizes, as the I3A reader makes them."""
    return [
        ImageRecord(f"/d/{c}/s{j}_{i}.png", (c,), f"{c}#{j}", f"{c}{j}-{i}")
        for c in ("AC-1", "AC-3")
        for j, n in enumerate(sizes)
        for i in range(n // 10)
    ]


def _partition(parts) -> frozenset:
    return frozenset(frozenset(r.group for r in p) for p in parts)


def test_another_seed_or_repeat_puts_specimens_elsewhere():
    """Groups of distinct sizes: data.seed draws another grouped split and a repeat of a k-fold other folds
    (until round 19 the larger groups went first, so every seed gave one split and every repeat one partition)."""
    from ana_lightning.data.splits import fold_records

    recs = _specimens()
    splits = {_partition(split_records(recs, (0.6, 0.2, 0.2), seed=s).values()) for s in range(8)}
    assert len(splits) >= 4
    folds = {_partition(fold_records(recs, 3, [0, rep])) for rep in range(6)}
    assert len(folds) >= 3
    for s in range(8):  # still grouped and stratified: each class's specimens reach every split
        out = split_records(recs, (0.6, 0.2, 0.2), seed=s)
        assert all({r.codes for r in out[k]} == {("AC-1",), ("AC-3",)} for k in out)
        groups = [{r.group for r in v} for v in out.values()]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    # a class of a large and a small group still reaches a 20 % test split (its small group), whatever the seed
    two = [
        ImageRecord(f"/d/{c}/{j}_{i}.png", (c,), f"{c}#{j}", f"{c}{j}-{i}")
        for c in ("AC-1", "AC-2", "AC-3", "AC-4")
        for j, n in enumerate((8, 16))
        for i in range(n)
    ]
    for s in range(10):
        test = split_records(two, (0.8, 0.0, 0.2), seed=s)["test"]
        assert {r.group for r in test} == {f"{c}#0" for c in ("AC-1", "AC-2", "AC-3", "AC-4")}


def test_size_order_reproduces_the_splits_before_round_19():
    """data.split_order=size: the larger groups first, as every grouped split and fold was made before round
    19, so a figure of then can be rerun by command: one split whatever the seed, one partition per repeat."""
    from ana_lightning.data.splits import fold_records

    recs = _specimens()
    splits = {
        _partition(split_records(recs, (0.6, 0.2, 0.2), seed=s, order="size").values()) for s in range(8)
    }
    assert len(splits) == 1
    folds = {_partition(fold_records(recs, 3, [0, rep], order="size")) for rep in range(6)}
    assert len(folds) == 1
    out = split_records(recs, (0.6, 0.2, 0.2), seed=0, order="size")
    # largest first: each class's largest group (#4, 400 cells) goes to training, which wants most
    assert {"AC-1#4", "AC-3#4"} <= {r.group for r in out["train"]}
    assert _partition(out.values()) != _partition(split_records(recs, (0.6, 0.2, 0.2), seed=0).values())


@pytest.mark.parametrize("order", ["sized", "", None])
def test_an_unknown_split_order_is_named(order):
    with pytest.raises(ValueError, match=r"data.split_order=.*random.*size"):
        split_records(_records(), seed=0, order=order)


def test_stratified_70_15_15():
    s = split_records(_records(20), seed=0)
    for split, want in (("train", 14), ("val", 3), ("test", 3)):
        for c in ("AC-1", "AC-2", "AC-3"):
            assert sum(r.codes == (c,) for r in s[split]) == want


def test_small_classes_still_reach_test():
    recs = _records(5, classes=("AC-7", "AC-8"))
    s = split_records(recs, seed=0)
    for c in ("AC-7", "AC-8"):
        assert [sum(r.codes == (c,) for r in s[k]) for k in ("train", "val", "test")] == [3, 1, 1]


def test_duplicates_and_groups_stay_together():
    recs = _records(20)
    dup = [ImageRecord(f"/d/AC-1/copy{i}.png", ("AC-1",), None, "AC-1-0") for i in range(3)]
    grouped = [ImageRecord(f"/d/AC-2/p7_{i}.png", ("AC-2",), "patient7", f"g{i}") for i in range(4)]
    for seed in range(10):
        s = split_records(recs + dup + grouped, seed=seed)
        where = {r.path: k for k, v in s.items() for r in v}
        assert len({where[p] for p in ["/d/AC-1/0.png"] + [d.path for d in dup]}) == 1
        assert len({where[g.path] for g in grouped}) == 1


def test_leakage_check_catches_shared_hash():
    r = ImageRecord("/a.png", ("AC-1",), None, "h")
    with pytest.raises(LeakageError):
        check_no_leakage({"train": [r], "val": [ImageRecord("/b.png", ("AC-1",), None, "h")], "test": []})


def test_manifest_roundtrip(tmp_path):
    s = split_records(_records(10), seed=0)
    save_manifest(s, tmp_path / "m.csv")
    back = load_manifest(tmp_path / "m.csv")
    assert {k: [(r.path, r.codes, r.sha256) for r in v] for k, v in s.items()} == {
        k: [(r.path, r.codes, r.sha256) for r in v] for k, v in back.items()
    }


def test_byte_identical_files_from_disk_share_a_split(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 8, "AC-2": 8})
    shutil.copy(root / "AC-1" / "img_000.png", root / "AC-1" / "zz_copy.png")
    recs, _ = read_single_label_folder(root, Taxonomy.load())
    for seed in range(5):
        s = split_records(recs, seed=seed)
        where = {r.path: k for k, v in s.items() for r in v}
        assert where[str(root / "AC-1" / "img_000.png")] == where[str(root / "AC-1" / "zz_copy.png")]
