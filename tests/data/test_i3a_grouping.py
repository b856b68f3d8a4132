"""Specimen grouping of I3A cells (no specimen column): consecutive-ID runs cut at intensity steps."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from contest_fixtures import write_specimens
from PIL import Image

from ana_lightning.data.contest import consecutive_id_groups, read_i3a2014
from ana_lightning.data.hierarchy import HEp2HierarchyDataModule
from ana_lightning.data.images import load_image
from ana_lightning.data.splits import split_records
from ana_lightning.taxonomy import Taxonomy

I3A_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "i3a2014-task1" / "training"


def _runs(records):
    """Group of each record in ID order, per class."""
    return [r.group for r in sorted(records, key=lambda r: int(Path(r.path).stem))]


def test_steps_are_found_and_small_runs_merged():
    ids = list(range(1, 301))
    values = [20.0] * 100 + [40.0] * 60 + [20.0] * 140  # three specimens, the middle one small
    assert np.bincount(consecutive_id_groups(ids, values, min_size=10)).tolist() == [100, 60, 140]
    merged = consecutive_id_groups(ids, values, min_size=80)
    sizes = np.bincount(merged).tolist()
    assert min(sizes) >= 80 and sum(sizes) == 300 and len(sizes) == 2
    # merged runs stay contiguous: group index never decreases along the IDs
    assert all(b >= a for a, b in zip(merged, merged[1:], strict=False))


def test_noise_alone_does_not_cut_and_gaps_do():
    rng = np.random.default_rng(0)
    ids = list(range(1, 201)) + list(range(301, 501))
    values = list(30 * np.exp(rng.normal(0, 0.1, 400)))  # one brightness, cell-to-cell noise only
    assert np.bincount(consecutive_id_groups(ids, values, min_size=1)).tolist() == [200, 200]  # the ID gap
    blocks = consecutive_id_groups(ids, None, min_size=90)
    assert np.bincount(blocks).tolist() == [100, 100, 100, 100]


def test_reader_groups_by_steps(tmp_path, caplog):
    specs = [
        ("Homogeneous", 100, 20),
        ("Homogeneous", 100, 60),
        ("Homogeneous", 50, 25),
        ("Homogeneous", 100, 40),
        ("Centromere", 40, 30),
        ("Centromere", 40, 90),
    ]
    root = write_specimens(tmp_path / "i3a", specs)
    with caplog.at_level("INFO"):
        data = read_i3a2014(root, Taxonomy.load(), group_min_size=8)
    assert "intensity steps" in data.grouping and "i3a2014 groups" in caplog.text
    homog = _runs([r for r in data.records if r.codes == ("AC-1",)])
    assert [len(g) for g in _split(homog)] == [100, 100, 50, 100]  # each specimen its own group
    cen = _runs([r for r in data.records if r.codes == ("AC-3",)])
    assert [len(g) for g in _split(cen)] == [40, 40]
    # min size 70 (= a fifth of Homogeneous): the 50-cell specimen (level 25) joins the adjacent run
    # of closer intensity (40, not 60)
    data = read_i3a2014(root, Taxonomy.load(), group_min_size=70)
    homog = _runs([r for r in data.records if r.codes == ("AC-1",)])
    assert [len(g) for g in _split(homog)] == [100, 100, 150]
    cen = _runs([r for r in data.records if r.codes == ("AC-3",)])
    assert [len(g) for g in _split(cen)] == [40, 40]  # a fifth of 80 cells is 16: kept apart
    # never a specimen cut in two, whatever the minimum
    for m in (1, 30, 120, 1000):
        homog = _runs(
            [r for r in read_i3a2014(root, Taxonomy.load(), group_min_size=m).records if r.codes == ("AC-1",)]
        )
        starts = np.cumsum([0, 100, 100, 50, 100])
        assert all(len(set(homog[a:b])) == 1 for a, b in zip(starts[:-1], starts[1:], strict=True))
        sizes = Counter(homog)
        assert min(sizes.values()) >= min(m, 70)


def test_cell_medians_are_kept_across_reads_and_follow_the_bytes(tmp_path, monkeypatch):
    """A second read of the same folder (a rerun, a CV fold, ana-eval) takes each cell's median from the
    cache instead of decoding the cell and its mask again, and groups the same; a changed mask, a changed
    bit depth or a damaged cache file means computing again, never a stale value."""
    from ana_lightning.data import specimens

    monkeypatch.setenv("ANA_CACHE_DIR", str(tmp_path / "cache"))
    computed = []
    real = specimens.cell_median
    monkeypatch.setattr(specimens, "cell_median", lambda p, m: computed.append(p) or real(p, m))
    root = write_specimens(tmp_path / "i3a", [("Homogeneous", 30, 20), ("Homogeneous", 30, 60)])

    def groups():
        return {r.path: r.group for r in read_i3a2014(root, Taxonomy.load(), group_min_size=10).records}

    first = groups()
    assert len(computed) == 60 and (tmp_path / "cache" / specimens.MEDIANS_FILE).is_file()
    assert len(set(first.values())) == 2
    computed.clear()
    assert groups() == first and computed == []
    # one mask now covers a single pixel: that cell's median is another value, so it is computed again
    mask = np.zeros((12, 12), np.uint8)
    mask[5, 5] = 255
    Image.fromarray(mask).save(root / "00007_Mask.png")
    assert groups() == first and computed == [str(root / "00007.png")]
    computed.clear()
    monkeypatch.setenv("ANA_BIT_DEPTH", "12")
    groups()
    assert len(computed) == 60
    monkeypatch.delenv("ANA_BIT_DEPTH")
    (tmp_path / "cache" / specimens.MEDIANS_FILE).write_bytes(b"not an npz")
    computed.clear()
    assert groups() == first and len(computed) == 60


def test_a_mask_of_another_size_or_empty_is_a_bad_file_found_when_the_folder_is_read(tmp_path):
    """A mask that does not fit its cell is reported with both files before anything trains (it used to
    stop the fit at the first batch that held it), and ``skip`` leaves that cell out."""
    from ana_lightning.data.records import DatasetError

    root = write_specimens(tmp_path / "i3a", [("Homogeneous", 12, 20), ("Golgi", 12, 60)])
    mask = np.zeros((10, 12), np.uint8)
    mask[2:8, 2:10] = 255
    Image.fromarray(mask).save(root / "00005_Mask.png")
    with pytest.raises(
        DatasetError, match=r"00005\.png: its mask .*00005_Mask\.png is 12×10 px, the cell 12×12 px"
    ):
        read_i3a2014(root, Taxonomy.load(), group_min_size=4)
    data = read_i3a2014(root, Taxonomy.load(), group_min_size=4, on_bad_file="skip")
    assert len(data.records) == 23 and str(root / "00005.png") not in {r.path for r in data.records}
    assert [b.path for b in data.bad] == [str(root / "00005.png")]
    # an empty mask (a failed segmentation) marks no cell: a bad file too, named, not a crash mid-fit
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "00009_Mask.png")
    with pytest.raises(DatasetError, match=r"00009_Mask\.png: an empty mask \(every pixel 0\)"):
        read_i3a2014(root, Taxonomy.load(), group_min_size=4)
    data = read_i3a2014(root, Taxonomy.load(), group_min_size=4, on_bad_file="skip")
    assert len(data.records) == 22 and str(root / "00009.png") not in {r.path for r in data.records}
    # a mask of 0/1 values (not 0/255), even a 16-bit one or a 16-bit label image, is not empty
    fits = np.pad(mask, ((1, 1), (0, 0))) > 0
    Image.fromarray(fits.astype(np.uint16)).save(root / "00005_Mask.png")
    Image.fromarray(fits.astype(np.uint8)).save(root / "00009_Mask.png")
    Image.fromarray(fits.astype(np.uint16) * 7).save(root / "00011_Mask.png")
    data = read_i3a2014(root, Taxonomy.load(), group_min_size=4)
    assert len(data.records) == 24
    for n in ("00005", "00009", "00011"):
        assert (load_image(root / f"{n}_Mask.png", camera=False).max(axis=2) > 0).sum() == fits.sum()


def test_a_label_csv_saved_as_excels_unicode_text_reads_like_utf8(tmp_path):
    """Excel's 'Unicode Text' is UTF-16 with tabs; it used to arrive as NUL characters ("expected at
    least 2 columns, got ['\\x00']"). Read with its byte-order mark, it gives the same cells and labels."""
    root = write_specimens(tmp_path / "i3a", [("Homogeneous", 12, 20), ("Golgi", 12, 60)])
    want = [(r.path, r.codes) for r in read_i3a2014(root, Taxonomy.load(), group_min_size=4).records]
    gt = root / "gt_training.csv"
    gt.write_bytes(gt.read_text().replace(",", "\t").replace("\n", "\r\n").encode("utf-16"))
    got = [(r.path, r.codes) for r in read_i3a2014(root, Taxonomy.load(), group_min_size=4).records]
    assert got == want


def _split(seq):
    out, cur = [], [seq[0]]
    for g in seq[1:]:
        if g == cur[-1]:
            cur.append(g)
        else:
            out.append(cur)
            cur = [g]
    return [*out, cur]


def test_specimen_column_wins_and_none_is_loud(tmp_path, caplog):
    specs = [("Homogeneous", 10, 20), ("Homogeneous", 10, 20), ("Golgi", 10, 50)]
    root = write_specimens(tmp_path / "col", specs, specimen_column=True)
    data = read_i3a2014(root, Taxonomy.load(), grouping="steps")
    assert {r.group for r in data.records} == {
        "spec0",
        "spec1",
        "spec2",
    }  # same brightness, still two specimens
    assert "specimen column" in data.grouping
    root = write_specimens(tmp_path / "nocol", specs)
    with caplog.at_level("WARNING"):
        data = read_i3a2014(root, Taxonomy.load(), grouping="none")
    assert all(r.group is None for r in data.records) and "leaks" not in data.grouping
    assert "not grouped" in caplog.text
    with pytest.raises(ValueError, match="data.grouping must be one of"):
        read_i3a2014(root, Taxonomy.load(), grouping="random")


def test_datamodule_split_is_grouped_and_reported(tmp_path):
    specs = [(c, 24, lv) for c in ("Homogeneous", "Centromere", "Golgi") for lv in (20, 45, 100)]
    root = write_specimens(tmp_path / "i3a", specs, gap_after=4)
    dm = HEp2HierarchyDataModule(
        root=str(root),
        reader="i3a2014",
        level=3,
        image_size=12,
        group_min_size=20,
        split_fractions=(0.34, 0.33, 0.33),
        cache_images=False,
    )
    dm.setup()
    groups = {s: {r.group for r in dm.splits[s]} for s in dm.splits}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert len(set().union(*groups.values())) == 9
    dm.write_reports(tmp_path)
    assert "intensity steps" in (tmp_path / "grouping.txt").read_text()
    assert "AC-1#" in (tmp_path / "split_manifest.csv").read_text()


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not I3A_REAL.is_dir(), reason=f"{I3A_REAL} is absent")
def test_real_i3a_groups():
    data = read_i3a2014(I3A_REAL, Taxonomy.load())
    assert len(data.records) == 10809 and "intensity steps" in data.grouping
    sizes = Counter(r.group for r in data.records)
    per_class = Counter(r.codes[0] for r in data.records)
    for g, n in sizes.items():
        label = g.split("#")[0]
        assert n >= min(250, per_class[label] // 5), (g, n)
    for label in per_class:  # every class has at least 3 groups, so train, val and test can all hold it
        assert sum(1 for g in sizes if g.split("#")[0] == label) >= 3, label
    # groups are runs of consecutive IDs within a class
    for label in per_class:
        seq = _runs([r for r in data.records if r.codes[0] == label])
        assert len(_split(seq)) == len(set(seq))
    # the recipe's split (experiment=i3a_cells: 0.6/0.2/0.2) puts every class in every split, no group in two
    for seed in range(3):
        splits = split_records(data.records, (0.6, 0.2, 0.2), seed=seed)
        for s, recs in splits.items():
            assert {r.codes[0] for r in recs} == set(per_class), (seed, s)


@pytest.mark.realdata
@pytest.mark.skipif(not I3A_REAL.is_dir(), reason=f"{I3A_REAL} is absent")
def test_size_order_reproduces_the_recorded_i3a_splits():
    """The READMEs' figures before round 19 ran on splits of the largest-first order: data.split_order=size
    draws them again (split A at 0.6/0.2/0.2 and the round-17 default at 0.8/0/0.2, both data.seed=0), and
    the random order, since round 19, draws others (about 20 s: every cell is read for its intensity)."""
    data = read_i3a2014(I3A_REAL, Taxonomy.load())
    sizes = {}
    for fractions in [(0.6, 0.2, 0.2), (0.8, 0.0, 0.2)]:
        for order in ("size", "random"):
            s = split_records(data.records, fractions, seed=0, order=order)
            sizes[fractions, order] = [len(s[k]) for k in ("train", "val", "test")]
    assert sizes[(0.6, 0.2, 0.2), "size"] == [6746, 2090, 1973]  # split A (experiments/i3a_cells/README.md)
    assert sizes[(0.8, 0.0, 0.2), "size"] == [8852, 0, 1957]  # results/round17/default80_test.md
    assert sizes[(0.8, 0.0, 0.2), "random"] == [8663, 0, 2146]  # results/round19 (the default since)


def test_datamodule_takes_the_split_order(tmp_path):
    """data.split_order reaches the datamodule's split (and a wrong value stops it at construction)."""
    specs = [(c, n, lv) for c in ("Homogeneous", "Centromere") for n, lv in ((40, 20), (24, 45), (32, 100))]
    root = write_specimens(tmp_path / "i3a", specs, gap_after=4)
    kw = dict(root=str(root), reader="i3a2014", level=3, image_size=12, group_min_size=20, cache_images=False)
    kw["split_fractions"] = (0.34, 0.33, 0.33)
    got = {}
    for order in ("size", "random"):
        for seed in range(4):
            dm = HEp2HierarchyDataModule(split_order=order, seed=seed, **kw)
            dm.setup()
            records = [r for v in dm.splits.values() for r in v]
            want = split_records(records, kw["split_fractions"], seed=seed, together=dm.together, order=order)
            assert {k: [r.path for r in v] for k, v in dm.splits.items()} == {
                k: [r.path for r in v] for k, v in want.items()
            }
            got[order, seed] = frozenset(frozenset(r.group for r in v) for v in dm.splits.values())
    assert len({got["size", s] for s in range(4)}) == 1  # groups of distinct sizes: one split for every seed
    with pytest.raises(ValueError, match="data.split_order='newest'"):
        HEp2HierarchyDataModule(split_order="newest", **kw)
