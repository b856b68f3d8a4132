"""Background subtraction in the per-cell normalisation, and the second grouped validation split."""

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ana_lightning.models.backbones import create_backbone
from ana_lightning.models.cells import CellInput, cell_background, cell_normalize

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from second_split import swap_validation  # noqa: E402


def _cells(n=4, size=32, seed=0, glow=0.05):
    """Cells with texture inside a square mask and a flat background glow outside it."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 6:26, 6:26] = 1
    cell = glow + torch.rand(n, 1, size, size, generator=g) * 0.1 * mask
    return torch.cat([cell, cell, mask], 1)


def test_background_is_the_median_outside_the_mask():
    x = _cells(glow=0.07)
    inten, m = x[:, :2].amax(1), x[:, 2] > 0.5
    assert torch.allclose(cell_background(inten, m, "channel"), torch.full((4,), 0.07), atol=1e-6)
    # no outside pixel (the mask covers the crop): the 5th percentile inside instead
    full = torch.ones_like(m)
    low = cell_background(inten, full, "channel")
    assert torch.allclose(low, inten.reshape(4, -1).quantile(0.05, dim=1, interpolation="lower"), atol=1e-6)


def test_background_subtraction_removes_offset_and_gain():
    x = _cells(glow=0.03)
    ref = cell_normalize(x, "channel", background=True)
    shifted = x.clone()
    shifted[:, :2] = shifted[:, :2] * 3 + 0.1  # another gain and a brighter glow
    assert torch.allclose(cell_normalize(shifted, "channel", background=True), ref, atol=1e-5)
    # without it the glow changes the input
    assert not torch.allclose(cell_normalize(shifted, "channel"), cell_normalize(x, "channel"), atol=1e-2)
    outside = ref[:, 0][x[:, 2] < 0.5]
    assert outside.abs().max() < 1e-6  # the flat background maps to 0
    assert torch.equal(ref[:, 2], x[:, 2])
    dark = _cells(glow=0.0)  # no glow: the same input as without background subtraction
    assert torch.allclose(cell_normalize(dark, "channel", background=True), cell_normalize(dark, "channel"))
    for mode in ("apply", "none"):
        out = cell_normalize(x[:, :1].repeat(1, 3, 1, 1), mode, background=True)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 4


def test_cell_input_background_is_off_by_default_and_configurable():
    torch.manual_seed(0)
    off = create_backbone("cellnet", num_classes=6, width=8, cell_input={"mask": "channel"})
    on = create_backbone(
        "cellnet", num_classes=6, width=8, cell_input={"mask": "channel", "background": True}
    )
    assert isinstance(off, CellInput) and not off.background and on.background
    x = _cells()
    assert torch.allclose(on.prepare(x), cell_normalize(x, "channel", background=True))
    assert torch.allclose(off.prepare(x), cell_normalize(x, "channel"))


def test_second_split_keeps_test_and_swaps_validation_groups():
    rows = []
    for label, groups in {
        "A": [("A#0", "test", 5), ("A#1", "val", 4), ("A#2", "train", 4), ("A#3", "train", 9)],
        "B": [("B#0", "val", 3), ("B#1", "train", 3), ("B#2", "test", 3)],
    }.items():
        for g, split, n in groups:
            rows += [{"path": f"{g}_{i}.png", "label": label, "split": split, "group": g} for i in range(n)]
    before = pd.DataFrame(rows)
    after = swap_validation(before)
    assert after.loc[before["split"] == "test", "split"].eq("test").all()
    assert set(after.loc[after["split"] == "val", "group"]) == {"A#2", "B#1"}
    assert set(after.loc[after["split"] == "train", "group"]) == {"A#1", "A#3", "B#0"}
    with pytest.raises(ValueError, match="no group column"):
        swap_validation(before.drop(columns="group"))


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_i3a_recipe_subtracts_the_background_at_both_sizes(tmp_path, accelerator):
    from conftest import compose

    cfg = compose(
        "train", ["experiment=i3a_cells", "data.root=/x", f"trainer={accelerator}"], output_dir=tmp_path
    )
    assert cfg.model.backbone.cell_input.background is True
    assert cfg.model.backbone.cell_input.normalize is True
    # the ICPR 2012 contest recipe too, with the same network (round 12)
    other = compose(
        "train",
        ["experiment=icpr2012_cells", "data.root=/x", f"trainer={accelerator}"],
        output_dir=tmp_path / "o",
    )
    assert other.model.backbone.cell_input.background is True
    assert other.model.backbone.name == cfg.model.backbone.name == "resnet10t"
    assert "width" not in other.model.backbone
    # round 12: the contest's partial validation split
    assert other.keep_epoch == "last" and cfg.keep_epoch == "best"


@pytest.mark.slow
def test_time_to_accuracy_reports_thresholds_best_and_data_share(tmp_path, monkeypatch, capsys):
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import time_to_accuracy
    from contest_fixtures import write_specimens

    names = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]
    root = write_specimens(tmp_path / "i3a", [(c, 8, lv) for c in names for lv in (20, 45, 100)])
    out = tmp_path / "tta.json"
    argv = ["time_to_accuracy.py", "--root", str(root), "--epochs", "2", "--thresholds", "0.0,0.99"]
    argv += ["--out", str(out), "data.image_size=16", "data.group_min_size=5", "model=cellnet"]
    monkeypatch.setattr(sys, "argv", [*argv, "model.backbone.width=8", f"paths.log_dir={tmp_path}"])
    time_to_accuracy.main()
    text = capsys.readouterr().out
    assert "| val MCA ≥ 0.00 | 1 |" in text and "| val MCA ≥ 0.99 | not reached |" in text
    assert "best val MCA" in text and "s from the start" in text
    res = json.loads(out.read_text())
    assert 0 < res["data_share"] < 1 and res["best_val"]["epoch"] in (1, 2)
    assert len(res["history"]) == 2
