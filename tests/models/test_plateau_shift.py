"""experiments/i3a_cells/plateau_shift.py: the plateau moved inside the mask, the rest of the cell kept."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from plateau_check import plateau  # noqa: E402
from plateau_shift import conditions, markdown, move_plateau  # noqa: E402


def _cell(level: int) -> tuple[np.ndarray, np.ndarray]:
    """32 px: slide at 10, a 20 px nucleus at ``level`` with dots at 210; its mask."""
    x = np.full((32, 32), 10, np.uint8)
    x[6:26, 6:26] = level
    for r, c in [(9, 9), (9, 20), (15, 14), (21, 9), (21, 21), (12, 17)]:
        x[r : r + 2, c : c + 2] = 210
    m = np.zeros((32, 32), np.uint8)
    m[6:26, 6:26] = 255
    return x, m


def test_lift_raises_a_dark_plateau_and_keeps_dots_and_slide():
    x, m = _cell(10)  # centromere-like: dots on a nucleus as dark as the slide
    y = move_plateau(x, m, "lift", 0.3)
    assert plateau(x, m) == pytest.approx(0.0, abs=0.01)
    assert plateau(y, m) == pytest.approx(0.3, abs=0.01)
    assert (y[m == 0] == x[m == 0]).all()  # outside the mask untouched
    assert y[9, 9] == x[9, 9] == 210  # the dots stay at the top
    assert y.dtype == np.uint8
    core, edge = int(y[18, 16]) - 10, int(y[6, 12]) - 10  # deep inside vs on the mask's edge (1 px deep)
    assert core == pytest.approx(0.3 * 200, abs=1)  # 0.3 of t - b
    assert edge == pytest.approx(core / 3, abs=1)  # ramped in: no hard edge


def test_sink_lowers_a_bright_plateau_to_zero_when_below_the_amount():
    x, m = _cell(60)  # plateau (60 - 10) / 200 = 0.25
    assert plateau(x, m) == pytest.approx(0.25, abs=0.01)
    assert plateau(move_plateau(x, m, "sink", 0.3), m) == pytest.approx(0.0, abs=0.01)
    assert plateau(move_plateau(x, m, "sink", 0.15), m) == pytest.approx((0.25 - 0.15) / 0.85, abs=0.01)
    assert move_plateau(x, m, "sink", 0.3)[9, 9] == 210


def test_zero_amount_changes_nothing_and_rgb_moves_every_channel_alike():
    x, m = _cell(90)
    assert (move_plateau(x, m, "lift", 0.0) == x).all() and (move_plateau(x, m, "sink", 0.0) == x).all()
    rgb = np.stack([x // 4, x, x // 4], axis=2)  # green signal, dimmer red/blue
    y = move_plateau(rgb, np.stack([m] * 3, axis=2), "lift", 0.3)
    assert y.shape == rgb.shape
    d = y.astype(int) - rgb.astype(int)
    assert (d[..., 0] == d[..., 1]).all() and (d[..., 1] == d[..., 2]).all()
    assert plateau(y, m) > plateau(rgb, m)


def test_bad_kind_or_amount_is_named():
    x, m = _cell(40)
    with pytest.raises(ValueError, match="'raise'"):
        move_plateau(x, m, "raise", 0.1)
    with pytest.raises(ValueError, match="1.2"):
        move_plateau(x, m, "lift", 1.2)


def test_conditions_and_table():
    conds = conditions([0.15, 0.3])
    assert list(conds) == ["none", "lift 0.15", "lift 0.3", "sink 0.15", "sink 0.3"]
    assert all(getattr(conds[k], "with_mask", False) for k in list(conds)[1:])
    rows = [
        {
            "path": "a",
            "specimen": "AC-3#0",
            "true": "Centromere",
            "none": "Centromere",
            "lift 0.3": "Speckled",
        },
        {
            "path": "b",
            "specimen": "AC-3#0",
            "true": "Centromere",
            "none": "Centromere",
            "lift 0.3": "Centromere",
        },
        {
            "path": "c",
            "specimen": "speckled#1",
            "true": "Speckled",
            "none": "Homogeneous",
            "lift 0.3": "Speckled",
        },
    ]
    text = markdown(rows, ["none", "lift 0.3"], ["Speckled", "Centromere"], Path("cv"), 1.0)
    assert "| Centromere | 2 | 0.00 / 1.00 | 0.50 / 0.50 |" in text
    assert "| Speckled | 1 | 0.00 / 0.00 (Homogeneous 1.00) | 1.00 / 0.00 |" in text
    assert "| Speckled | speckled#1 | 1 | 0.00 | 1.00 |" in text
    assert "1.000 of the cells agree" in text
