"""experiments/i3a_cells/icpr_proxy.py: I3A cells written in the ICPR 2012 contest layout, read back by
the project's own ICPR 2012 reader; and its table of paired test MCAs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from contest_fixtures import I3A_CLASSES, write_specimens
from PIL import Image
from scipy import stats

from ana_lightning.data.contest import read_icpr2012
from ana_lightning.taxonomy import Taxonomy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from icpr_proxy import ICPR_NAME, draw, i3a_of_node, table, write  # noqa: E402


@pytest.fixture
def i3a(tmp_path):
    """Four specimens of 5 cells per class (a brightness each) and a grouped manifest: the first three
    specimens of a class in train/val, the fourth in test."""
    node_of = {v: k for k, v in i3a_of_node().items()}
    specimens = [(c, 5, 30 + 10 * s) for c in I3A_CLASSES for s in range(4)]
    root = write_specimens(tmp_path / "i3a", specimens)
    rows = []
    for i in range(len(specimens) * 5):
        c, s = I3A_CLASSES[i // 20], (i % 20) // 5
        split = ("train", "val", "train", "test")[s]
        rows.append({"path": f"{i + 1:05d}.png", "label": node_of[c], "split": split, "group": f"{c}#{s}"})
    return root, pd.DataFrame(rows)


def test_the_proxy_is_an_icpr2012_contest_folder(tmp_path, i3a):
    root, manifest = i3a
    rows = draw(manifest, ["train", "val"], train_fields=2, cells=4, seed=3)
    assert set(rows["group"]).isdisjoint(
        manifest.loc[manifest["split"] == "test", "group"]
    )  # test groups untouched
    per = rows.groupby(["i3a_class", "set"])["group"].nunique().unstack()
    assert (per["training"] == 2).all() and (per["test"] == 1).all()
    assert not set(rows.loc[rows["set"] == "training", "group"]) & set(
        rows.loc[rows["set"] == "test", "group"]
    )
    assert (rows.groupby("group").size() == 4).all()

    out = tmp_path / "proxy"
    write(rows, out, root)
    data = read_icpr2012(out, Taxonomy.load())
    assert data.bad == [] and len(data.records) == len(rows) == 6 * 3 * 4
    split_of = data.official_split
    assert sum(s == "train" for s in split_of.values()) == 6 * 2 * 4
    fields = {r.group for r in data.records}
    assert len(fields) == 18  # one field per specimen group
    train_fields = {r.group for r in data.records if split_of[r.path] == "train"}
    assert not train_fields & {r.group for r in data.records if split_of[r.path] == "test"}
    # every cell is the I3A cell it came from: grey in green, its mask, its class under the ICPR name
    gt = dict(line.split(";") for line in (out / "training" / "gt_training.csv").read_text().splitlines()[1:])
    first = rows[rows["set"] == "training"].iloc[0]
    rgb = np.asarray(Image.open(out / "training" / "0001.png"))
    src = np.asarray(Image.open(root / first["path"]))
    assert rgb.shape == (*src.shape, 3) and (rgb[..., 1] == src).all() and not rgb[..., [0, 2]].any()
    src_mask = np.asarray(Image.open(root / first["path"].replace(".png", "_Mask.png"))) > 0
    assert ((np.asarray(Image.open(out / "training" / "0001_mask.png")) > 0) == src_mask).all()
    assert gt["0001"] == ICPR_NAME[first["i3a_class"]]
    with pytest.raises(FileExistsError, match="proxy"):
        write(rows, out, root)


def test_too_few_groups_is_named(i3a):
    _, manifest = i3a
    with pytest.raises(ValueError, match=r"class Homogeneous: 3 group\(s\).*need 3 for training"):
        draw(manifest, ["train", "val"], train_fields=3, cells=4, seed=0)
    capped = draw(manifest, ["train", "val"], train_fields=3, cells=4, seed=0, at_most=True)
    per = capped.groupby(["i3a_class", "set"])["group"].nunique().unstack()
    assert (per["training"] == 2).all() and (per["test"] == 1).all()  # 3 groups: one kept for test
    mixed = manifest.copy()
    mixed.loc[0, "group"] = "Speckled#0"  # a Homogeneous cell in a Speckled group
    with pytest.raises(ValueError, match="group 'Speckled#0' holds cells of several labels"):
        draw(mixed, ["train", "val"], train_fields=2, cells=4, seed=0)


def test_table_pairs_the_arms_by_draw(tmp_path):
    for arm, vals in {"R0": [0.5, 0.6, 0.7], "R1": [0.6, 0.55, 0.9, 0.99]}.items():
        for d, v in enumerate(vals):
            (tmp_path / f"{arm}-d{d}").mkdir()
            (tmp_path / f"{arm}-d{d}" / "metrics.json").write_text(json.dumps({"test/mca": v}))
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "metrics.json").write_text(json.dumps({"test/mca": 0.1}))
    md = table(tmp_path)
    assert "| 1 | 0.600 | 0.550 | -0.050 |" in md
    assert "|---|---|---|---|" in md.splitlines()[1] and md.splitlines()[1].count("|") == 5
    diffs = np.array([0.1, -0.05, 0.2])  # draw 3 only R1 has: left out and named
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert (
        f"{diffs.mean():+.3f} ± {diffs.std(ddof=1):.3f} [{diffs.mean() - half:+.3f}, {diffs.mean() + half:+.3f}], "
        f"p = {stats.ttest_rel([0.6, 0.55, 0.9], [0.5, 0.6, 0.7]).pvalue:.3g}, higher in 2 of 3"
    ) in md
    assert "R1: draw(s) [3] left out" in md and "smoke: not named" in md
    with pytest.raises(ValueError, match="base arm 'R9'"):
        table(tmp_path, base="R9")


def test_shifts_rescore_each_run_as_it_tested(tmp_path):
    """The ``shifts`` table reads an ICPR 2012 run's test cells (``_mask`` masks) with its own framing; the
    unshifted column is the run's own test MCA."""
    from contest_fixtures import write_icpr2012_contest
    from icpr_proxy import shifts

    from ana_lightning.pipeline import train

    from conftest import TINY_BACKBONE, compose

    root = write_icpr2012_contest(tmp_path / "icpr", train_per_class=4, test_per_class=3, extreme_sizes=False)
    run = tmp_path / "runs" / "R0-d0"
    overrides = [
        "experiment=icpr2012_cells",
        f"data.root={root}",
        f"model.backbone.name={TINY_BACKBONE}",
        "data.image_size=32",
        "trainer.max_epochs=2",
        "callbacks.rich_progress_bar=null",
        "+trainer.enable_model_summary=false",
    ]
    train(compose("train", overrides, output_dir=run))
    md = shifts(tmp_path / "runs")
    row = next(line for line in md.splitlines() if line.startswith("| R0 (1) |"))
    none = float(row.split("|")[2].split("±")[0])
    assert none == pytest.approx(json.loads((run / "metrics.json").read_text())["test/mca"], abs=5e-4)
    assert "bright_x0.3" in md.splitlines()[0] and "worst shift" in md.splitlines()[0]
