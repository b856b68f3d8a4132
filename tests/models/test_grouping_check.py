"""experiments/i3a_cells/grouping_check.py: the reader's specimen groups with and without the ID gaps."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "i3a_cells"))
from grouping_check import compare_groupings  # noqa: E402


def test_a_gap_between_two_equal_specimens_is_the_only_boundary_and_vanishes_without_it():
    # two specimens of one brightness, told apart only by an ID gap; a third, brighter, after a step
    ids = list(range(0, 60)) + list(range(100, 160)) + list(range(160, 220))
    values = [10.0] * 120 + [40.0] * 60
    r = compare_groupings(ids, values, min_size=60)
    assert (r["id_gaps"], r["groups"], r["groups_gapless"]) == (1, 3, 2)
    assert (r["boundaries"], r["boundaries_kept"], r["boundaries_new"]) == (2, 1, 0)
    assert r["joined"] == 1  # the gapless grouping joins the two dim specimens: coarser, not leaky


def test_steps_alone_recover_the_same_groups_when_every_gap_is_also_a_step():
    ids = list(range(0, 40)) + list(range(60, 100))
    values = [10.0] * 40 + [30.0] * 40
    r = compare_groupings(ids, values, min_size=30)
    assert r["groups"] == r["groups_gapless"] == 2
    assert (r["boundaries_kept"], r["boundaries_new"], r["joined"]) == (1, 0, 0)
