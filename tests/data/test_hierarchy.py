"""HEp2HierarchyDataModule: level labels from the tree, subtrees, shared splits, node labels."""

from importlib import resources

import pytest
import torch
import yaml

from ana_lightning.data.hierarchy import HEp2HierarchyDataModule, label_path, resolve_label
from ana_lightning.data.records import ImageRecord
from ana_lightning.taxonomy import LabelError, Taxonomy

from conftest import write_class_images

ALL_CODES = [f"AC-{i}" for i in range(32)]


@pytest.fixture(scope="module")
def every_code(tmp_path_factory):
    """Two tiny images of every AC code of the tree (folder names spelled as users do)."""
    root = tmp_path_factory.mktemp("all_codes")
    names = {c if i % 2 else c.lower(): 3 for i, c in enumerate(ALL_CODES)}
    return write_class_images(root / "d", names, size=16)


def _dm(root, **kw):
    kw.setdefault("image_size", 16)
    kw.setdefault("batch_size", 8)
    kw.setdefault("cache_images", False)
    return HEp2HierarchyDataModule(root=str(root), **kw)


def test_level_labels_of_every_code_match_the_tree_yaml(every_code):
    raw = yaml.safe_load(resources.files("ana_lightning.resources").joinpath("icap_tree.yaml").read_text())
    expected = {e["code"]: (e["level1"], e["level2"], e["code"]) for e in raw["codes"]}
    assert sorted(expected) == sorted(ALL_CODES)
    seen = set()
    for level in (1, 2, 3):
        dm = _dm(every_code, level=level)
        dm.setup()
        for split in ("train", "val", "test"):
            recs = dm.splits[split]
            targets = dm.make_targets(recs)
            for r, t in zip(recs, targets.tolist(), strict=True):
                assert dm.class_names[t] == expected[r.label][level - 1], (r.path, level)
                seen.add(r.label)
        # class order: the tree's order of first appearance (level 3: natural code order)
        assert dm.class_names == list(dict.fromkeys(expected[c][level - 1] for c in ALL_CODES))
    assert seen == set(ALL_CODES)
    # level=all: the three indices at once, consistent with the per-level modules
    dm = _dm(every_code, level="all")
    dm.setup()
    t = dm.make_targets(dm.splits["train"])
    assert t.shape == (len(dm.splits["train"]), 3) and (t >= 0).all()
    for r, row in zip(dm.splits["train"], t.tolist(), strict=True):
        assert tuple(dm.level_names[lv][row[lv - 1]] for lv in (1, 2, 3)) == expected[r.label]


def test_parent_restricts_to_a_subtree_and_shares_the_split(every_code):
    full = _dm(every_code, level=1)
    full.setup()
    sub = _dm(every_code, level=3, parent="speckled")
    sub.setup()
    assert sub.class_names == ["AC-2", "AC-4", "AC-5", "AC-29"]
    for split in ("train", "val", "test"):
        inside = {r.path for r in sub.splits[split]}
        assert inside <= {r.path for r in full.splits[split]}  # one split for every level and group
        assert inside == {r.path for r in full.splits[split] if r.label in sub.class_names}
    assert sub.model_kwargs()["class_names"] == sub.class_names
    level2_nuclear = _dm(every_code, level=2, parent="nuclear")
    level2_nuclear.setup()
    assert "fibrillar" not in level2_nuclear.class_names and "speckled" in level2_nuclear.class_names


def test_bad_level_and_parent_are_clear_errors(every_code):
    with pytest.raises(ValueError, match="level must be 1, 2, 3, all or contest"):
        _dm(every_code, level=4)
    with pytest.raises(ValueError, match="'speckeld' is not a level-1 or level-2 node"):
        _dm(every_code, level=3, parent="speckeld")
    with pytest.raises(ValueError, match="single level-3 class"):
        _dm(every_code, level=3, parent="homogeneous")
    with pytest.raises(LabelError, match="'fibrilar' is not a level-2 node"):
        _dm(every_code, level=2, classes=["fibrilar"]).setup()


def test_node_labels_count_only_at_the_levels_they_determine():
    tree = Taxonomy.load()
    assert resolve_label(tree, "nucleolar", 1) == "nuclear"
    assert resolve_label(tree, "nucleolar", 2) == "nucleolar"
    assert resolve_label(tree, "nucleolar", 3) is None
    assert label_path(tree, "cytoplasmic") == ("cytoplasmic", None, None)
    assert label_path(tree, "centromere") == ("nuclear", "centromere", "AC-3")  # a group with one code
    assert label_path(tree, "ac_5") == ("nuclear", "speckled", "AC-5")


def test_classes_select_nodes_of_the_level(every_code):
    dm = _dm(every_code, level=2, classes=["nucleolar", "speckled"])
    dm.setup()
    assert dm.class_names == ["speckled", "nucleolar"]  # tree order
    labels = {r.label for s in dm.splits.values() for r in s}
    assert labels == {"AC-2", "AC-4", "AC-5", "AC-29", "AC-8", "AC-9", "AC-10"}
    w = dm.class_weights()
    assert len(w) == 2 and all(x > 0 for x in w)


def test_synthetic_default_renders_once_and_targets(tmp_path):
    dm = HEp2HierarchyDataModule(
        level=2,
        parent="nuclear",
        cache_dir=str(tmp_path),
        n_per_class=3,
        render_size=64,
        image_size=32,
        batch_size=8,
        classes=None,
    )
    dm.setup()
    assert dm.root.parent == tmp_path and (dm.root / ".complete").exists()
    assert set(dm.class_names) <= set(Taxonomy.load().nodes(2)) and "fibrillar" not in dm.class_names
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32) and batch["target"].dtype == torch.long


def test_multi_label_records_are_refused(tmp_path):
    class Multi(HEp2HierarchyDataModule):
        def read_records(self):
            return [ImageRecord(str(tmp_path / "x.png"), ("AC-1", "AC-4"))], []

    with pytest.raises(ValueError, match="single-label"):
        Multi(root=str(tmp_path), level=1).setup()


def test_a_split_without_a_class_of_an_ungrouped_folder_says_images_not_groups(tmp_path, caplog):
    """A class folder of 2 images cannot reach all three splits; the folder has no groups, so the warning
    speaks of images (it said 'too few groups … data.group_min_size', a contest reader's key)."""
    root = write_class_images(tmp_path / "d", {"AC-1": 12, "AC-3": 2}, size=16)
    dm = HEp2HierarchyDataModule(root=str(root), level=3, image_size=16, cache_images=False)
    with caplog.at_level("WARNING"):
        dm.setup()
    said = [m for m in caplog.messages if "split has no image of AC-3" in m]
    assert said and all("too few images per class" in m and "group_min_size" not in m for m in said)
