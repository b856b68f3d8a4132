"""Dataset readers as classes: ``data.reader=<name>`` as before, or a ``_target_`` config."""

import pytest
from contest_fixtures import write_i3a2014_cells
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ana_lightning.data.hierarchy import HEp2HierarchyDataModule
from ana_lightning.data.readers import (
    READERS,
    FolderReader,
    I3A2014Reader,
    ICPR2012Reader,
    Reader,
    build_reader,
)
from ana_lightning.taxonomy import Taxonomy

from conftest import write_class_images

I3A = "ana_lightning.data.readers.I3A2014Reader"


def test_names_build_the_registered_classes_with_the_keys_they_take():
    assert set(READERS) == {"folder", "icpr2012", "i3a2014"}
    keys = {"csv": "labels.csv", "group_column": "slide", "grouping": "blocks", "group_min_size": 40}
    assert isinstance(build_reader("folder", **keys), FolderReader)
    icpr = build_reader("icpr2012", **keys)
    assert isinstance(icpr, ICPR2012Reader) and (icpr.csv, icpr.group_column) == ("labels.csv", "slide")
    i3a = build_reader("i3a2014", **keys)
    assert isinstance(i3a, I3A2014Reader) and (i3a.grouping, i3a.group_min_size) == ("blocks", 40)
    assert i3a.config() == {
        "_target_": I3A,
        "csv": "labels.csv",
        "group_column": "slide",
        "grouping": "blocks",
        "group_min_size": 40,
    }
    assert build_reader(i3a) is i3a


def test_bad_reader_settings_are_named():
    with pytest.raises(ValueError, match="data.reader must be one of .*'folder'.*got 'mivia'"):
        build_reader("mivia")
    with pytest.raises(ValueError, match="needs _target_"):
        build_reader({"grouping": "steps"})
    with pytest.raises(TypeError, match="is not a Reader class"):
        build_reader({"_target_": "ana_lightning.taxonomy.Taxonomy.load"})
    with pytest.raises(ValueError, match="data.grouping must be one of"):
        build_reader({"_target_": I3A, "grouping": "random"})


def test_a_target_config_reads_what_the_name_reads(tmp_path):
    root = write_i3a2014_cells(tmp_path / "i3a", per_class=4, specimens_per_class=2)
    common = dict(root=str(root), level=3, image_size=16, cache_images=False, near_duplicates=False)
    by_name = HEp2HierarchyDataModule(reader="i3a2014", grouping="blocks", group_min_size=2, **common)
    cfg = OmegaConf.create({"_target_": I3A, "grouping": "blocks", "group_min_size": 2})
    by_target = HEp2HierarchyDataModule(
        reader=cfg, **common
    )  # not yet instantiated (as with _recursive_=false)
    built = HEp2HierarchyDataModule(reader=instantiate(cfg), **common)  # what Hydra passes by default
    for dm in (by_name, by_target, built):
        dm.setup()
    assert by_target.reader == built.reader == "i3a2014"
    want = {s: [(r.path, r.codes, r.group) for r in recs] for s, recs in by_name.splits.items()}
    for dm in (by_target, built):
        assert {s: [(r.path, r.codes, r.group) for r in recs] for s, recs in dm.splits.items()} == want
        assert dm.masks == by_name.masks and dm.grouping == by_name.grouping
    # The run's data settings keep the reader as its config, so a checkpoint rebuilds it.
    assert built.hparams["reader"] == {
        "_target_": I3A,
        "csv": None,
        "group_column": None,
        "grouping": "blocks",
        "group_min_size": 2,
    }
    assert by_name.hparams["reader"] == "i3a2014"
    again = instantiate(OmegaConf.create(built.state_dict()["ana_data"]))
    assert isinstance(again.layout_reader, I3A2014Reader) and again.layout_reader.grouping == "blocks"


def test_a_new_layout_is_one_class(tmp_path):
    """A reader defined outside the package, given by _target_, feeds the hierarchy datamodule."""
    root = write_class_images(tmp_path / "d", {"AC-1": 6, "AC-4": 6, "AC-5": 6})

    class EveryOtherImage(Reader):
        def __init__(self, keep: int = 2):
            self.keep = keep

        def read(self, root, tree: Taxonomy, on_bad_file="error", masks=True):
            data = FolderReader().read(root, tree, on_bad_file, masks)
            data.records = data.records[:: self.keep]
            return data

    dm = HEp2HierarchyDataModule(
        root=str(root),
        reader=EveryOtherImage(3),
        level=3,
        image_size=16,
        cache_images=False,
        near_duplicates=False,
    )
    dm.setup()
    assert sum(len(v) for v in dm.splits.values()) == 6
    assert dm.reader == "EveryOtherImage" and dm.hparams["reader"]["keep"] == 3
    with pytest.raises(ValueError, match="needs a contest reader"):
        HEp2HierarchyDataModule(root=str(root), reader=EveryOtherImage(), level="contest")


def test_a_reader_config_on_the_command_line(tmp_path):
    from conftest import compose

    root = write_i3a2014_cells(tmp_path / "i3a", per_class=4, specimens_per_class=2)
    cfg = compose(
        "train",
        [
            "data=hierarchy",
            f"data.root={root}",
            f"data.reader={{_target_:{I3A},grouping:blocks,group_min_size:2}}",
            "data.cache_images=false",
            "data.near_duplicates=false",
            "data.level=2",
        ],
    )
    dm = instantiate(cfg.data)
    assert isinstance(dm.layout_reader, I3A2014Reader) and dm.layout_reader.grouping == "blocks"
    dm.setup()
    assert (
        dm.reader == "i3a2014"
        and "specimen column" in dm.grouping
        and sum(map(len, dm.splits.values())) == 24
    )
