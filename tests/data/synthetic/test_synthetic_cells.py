"""Single-cell crops of the simulator in the contest layout (ana-synth --cells)."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from ana_lightning.cli.synth import main as synth_cli
from ana_lightning.data.contest import read_i3a2014
from ana_lightning.data.synthetic import CODES, LEVEL2
from ana_lightning.data.synthetic_cells import (
    I3A_CLASSES,
    class_table,
    generate_cell_dataset,
    render_cells,
)
from ana_lightning.taxonomy import Taxonomy


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_render_cells_grey_and_green_with_centred_masks():
    for color in ("grey", "green"):
        cells = render_cells("AC-4", np.random.default_rng(1), n_cells=4, color=color)
        assert 1 <= len(cells) <= 4
        for img, mask in cells:
            assert img.dtype == np.uint8 and mask.dtype == np.uint8
            assert img.shape[:2] == mask.shape and img.ndim == (2 if color == "grey" else 3)
            if color == "green":
                assert img[..., 1].mean() > img[..., 0].mean() and img[..., 1].mean() > img[..., 2].mean()
            assert set(np.unique(mask)) == {0, 255}
            m = mask > 0
            assert 0.25 < m.mean() < 0.6  # the mask fills ~40 % of the crop, as in the I3A cells
            ys, xs = np.nonzero(m)
            h, w = m.shape
            assert abs(ys.mean() - h / 2) < 0.15 * h and abs(xs.mean() - w / 2) < 0.15 * w
            assert 35 <= h <= 110 and 35 <= w <= 110  # I3A crops: 54-99 px


def test_intermediate_cells_are_dimmer_and_background_is_a_dark_offset():
    def p99(intensity):
        vals = []
        for k in range(6):
            for img, mask in render_cells("AC-1", np.random.default_rng(k), n_cells=1, intensity=intensity):
                vals.append(np.percentile(img, 99) - np.percentile(img[mask == 0], 10))
        return np.median(vals)

    dim, bright = p99("intermediate"), p99("positive")
    assert dim < bright
    assert dim < 40  # dim like the real intermediate cells, not stretched to 0-255
    img, mask = render_cells("AC-1", np.random.default_rng(0), n_cells=1)[0]
    assert 5 < np.median(img[mask == 0]) < 60


def test_mitosis_only_patterns_give_mitotic_cells():
    for code in ("AC-25", "AC-26", "AC-27", "AC-28"):
        assert render_cells(code, np.random.default_rng(3), n_cells=2), code


def test_render_cells_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown ICAP code"):
        render_cells("AC-99", np.random.default_rng(0))
    with pytest.raises(ValueError, match="color"):
        render_cells("AC-1", np.random.default_rng(0), color="blue")
    with pytest.raises(ValueError, match="intensity"):
        render_cells("AC-1", np.random.default_rng(0), intensity="bright")
    with pytest.raises(ValueError, match="classes"):
        class_table("paper")


def test_i3a_layout_is_read_by_the_contest_reader(tmp_path):
    root = generate_cell_dataset(tmp_path / "cells", n_per_class=6, cells_per_field=3, seed=0, progress=False)
    rows = _rows(root / "gt_training.csv")
    assert list(rows[0]) == ["Image ID", "Image class", "Intensity", "Specimen ID"]
    assert len(rows) == 36 and {r["Image class"] for r in rows} == set(I3A_CLASSES)
    assert {r["Intensity"] for r in rows} <= {"positive", "intermediate"}
    for r in rows:
        assert (root / f"{r['Image ID']}.png").is_file() and (root / f"{r['Image ID']}_Mask.png").is_file()
    img = cv2.imread(str(root / "00001.png"), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 2 and img.dtype == np.uint8  # 8-bit grey, like the I3A cells
    data = read_i3a2014(root, Taxonomy.load())
    assert len(data.records) == 36 and not data.bad and len(data.masks) == 36
    labels = {r.codes[0] for r in data.records}
    assert labels == {"AC-1", "speckled", "nucleolar", "AC-3", "nuclear envelope", "AC-22"}
    # the specimen (field) is the group: at most cells_per_field cells each, never two classes
    by_group = {}
    for r in data.records:
        by_group.setdefault(r.group, set()).add(r.codes[0])
    assert all(len(v) == 1 for v in by_group.values()) and len(by_group) >= 12
    # deterministic and resumable: a second call writes the same CSV and keeps the files
    before = (root / "00007.png").read_bytes()
    generate_cell_dataset(root, n_per_class=6, cells_per_field=3, seed=0, progress=False)
    assert (root / "00007.png").read_bytes() == before and _rows(root / "gt_training.csv") == rows


@pytest.mark.parametrize("classes", ["codes", "level2"])
def test_every_code_and_group_the_renderers_know(tmp_path, classes):
    root = generate_cell_dataset(
        tmp_path / classes, classes=classes, n_per_class=1, cells_per_field=1, color="green", progress=False
    )
    rows = _rows(root / "gt_training.csv")
    names = {r["Image class"] for r in rows}
    assert names == (set(CODES) if classes == "codes" else set(LEVEL2.values()))
    data = read_i3a2014(root, Taxonomy.load())  # codes and tree nodes are read as such
    assert len(data.records) == len(names)
    if classes == "codes":
        assert {r.codes[0] for r in data.records} == set(CODES)


def test_ana_synth_cells_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    synth_cli(
        ["--cells", "--output", str(out), "--n-per-class", "2", "--codes", "AC-1,AC-3", "--no-progress"]
    )
    rows = _rows(out / "gt_training.csv")
    assert [r["Image class"] for r in rows] == ["Homogeneous"] * 2 + ["Centromere"] * 2
    assert "wrote 4 cells" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        synth_cli(["--cells", "--output", str(out), "--codes", "AC-99", "--no-progress"])
