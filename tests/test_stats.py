"""Bootstrap intervals, fold summaries and paired tests (ana_lightning.stats)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from ana_lightning.data.records import ImageRecord
from ana_lightning.reports import summary_rows
from ana_lightning.reports.tables import MAX_GROUP_ROWS, write_group_report
from ana_lightning.stats import (
    bootstrap_intervals,
    fold_summary,
    label_matrix,
    mcnemar,
    paired_comparison,
    point_metrics,
    run_intervals,
    sign_test,
)


def _single(
    n: int, k: int = 4, acc: float = 0.8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < acc, y, (y + rng.integers(1, k, n)) % k)
    eye = np.eye(k, dtype=bool)
    return eye[y], eye[p], y, p


def test_point_metrics_match_scikit_learn():
    t, p, y, yp = _single(200, k=5)
    m = point_metrics(t, p)
    assert m["acc"] == pytest.approx(accuracy_score(y, yp))
    assert m["mca"] == pytest.approx(balanced_accuracy_score(y, yp))  # mean recall over classes in the truth
    # A class only predicted, never true, does not count towards MCA.
    t2, p2 = label_matrix(["a", "a", "b"], ["a", "b", "c"]), label_matrix(["a", "c", "b"], ["a", "b", "c"])
    assert point_metrics(t2, p2)["mca"] == pytest.approx(0.75)
    rng = np.random.default_rng(1)
    tm, pm = rng.random((100, 6)) < 0.3, rng.random((100, 6)) < 0.3
    m = point_metrics(tm, pm)
    assert m["exact_match"] == pytest.approx(accuracy_score(tm, pm))
    assert m["micro_f1"] == pytest.approx(f1_score(tm, pm, average="micro"))


@pytest.mark.parametrize("seed", range(5))
def test_bootstrap_interval_contains_point_and_narrows_with_more_images(seed):
    widths = []
    for n in (40, 160, 640):
        t, p, _, _ = _single(n, seed=seed)
        point = point_metrics(t, p)
        ci = bootstrap_intervals(t, p, ["mca", "acc"], n_boot=500, seed=seed)
        for k, (lo, hi) in ci.items():
            assert lo <= point[k] <= hi, (n, k, lo, point[k], hi)
        widths.append(ci["mca"][1] - ci["mca"][0])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] > 1.7 * widths[2]  # ~ 1/sqrt(n): 2x per 4x images


def test_group_bootstrap_is_wider_for_correlated_groups():
    # 20 patients with 10 images each; a patient is either all right or all wrong.
    rng = np.random.default_rng(0)
    right = np.repeat(rng.random(20) < 0.7, 10)
    y = rng.integers(0, 3, 200)
    eye = np.eye(3, dtype=bool)
    t, p = eye[y], eye[np.where(right, y, (y + 1) % 3)]
    groups = [f"patient{i // 10}" for i in range(200)]
    lo_i, hi_i = bootstrap_intervals(t, p, ["acc"], n_boot=500)["acc"]
    lo_g, hi_g = bootstrap_intervals(t, p, ["acc"], clusters=groups, n_boot=500)["acc"]
    assert hi_g - lo_g > 2 * (hi_i - lo_i)


def test_multilabel_bootstrap_keys():
    rng = np.random.default_rng(2)
    t = rng.random((80, 5)) < 0.3
    p = t ^ (rng.random((80, 5)) < 0.1)
    point = point_metrics(t, p)
    for k, (lo, hi) in bootstrap_intervals(t, p, ["mca", "exact_match", "micro_f1"], n_boot=300).items():
        assert lo <= point[k] <= hi


def test_fold_summary_equals_fold_mean_and_sd():
    vals = [0.71, 0.83, 0.64, 0.9, 0.77]
    s = fold_summary({"test/mca": vals, "test/acc": [0.8, None, 0.7, 0.9, math.nan]}, folds=5)
    assert s["test/mca/mean"] == pytest.approx(np.mean(vals))
    assert s["test/mca/sd"] == pytest.approx(np.std(vals, ddof=1))
    assert s["test/mca/n_folds"] == 5 and s["test/acc/n_folds"] == 3
    half = 2.7764451 * np.std(vals, ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert s["test/mca/ci95_low"] == pytest.approx(np.mean(vals) - half, abs=1e-6)
    assert s["test/mca/ci95_high"] == pytest.approx(np.mean(vals) + half, abs=1e-6)
    rep = fold_summary({"m": vals * 2}, folds=5, repeats=2)  # corrected interval is wider
    assert rep["m/ci95_high"] - rep["m/ci95_low"] > (s["test/mca/ci95_high"] - s["test/mca/ci95_low"]) * 0.9


def test_paired_comparison_of_a_model_with_itself_reports_no_difference():
    a = [0.7, 0.8, 0.65, 0.9, 0.75]
    r = paired_comparison(a, a)
    assert r["mean_diff"] == 0 and (r["ci95_low"], r["ci95_high"]) == (0.0, 0.0) and r["p_ttest"] == 1.0
    correct = np.random.default_rng(0).random(50) < 0.7
    m = mcnemar(correct, correct)
    assert (m["a_only_correct"], m["b_only_correct"], m["p_mcnemar"]) == (0, 0, 1.0)


def test_paired_comparison_detects_a_consistent_gain():
    b = [0.7, 0.8, 0.65, 0.9, 0.75]
    a = [x + 0.05 + 0.01 * i for i, x in enumerate(b)]
    r = paired_comparison(a, b)
    assert r["mean_diff"] == pytest.approx(0.07) and r["ci95_low"] > 0 and r["p_ttest"] < 0.01
    from scipy import stats

    assert r["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    ca = np.ones(40, bool)
    cb = np.r_[np.ones(25, bool), np.zeros(15, bool)]
    assert mcnemar(ca, cb)["p_mcnemar"] < 0.001


class _FakeModel:
    def __init__(self, prob, target, pred=None):
        self.test_predictions = {"index": torch.arange(len(prob)), "prob": prob, "target": target}
        if pred is not None:
            self.test_predictions["pred"] = pred


def test_run_intervals_from_model_predictions_and_report_format():
    t, p, y, yp = _single(60)
    prob = torch.tensor(p, dtype=torch.float32) * 0.7 + 0.1
    records = [ImageRecord(f"/x/{i}.png", ("AC-1",), f"g{i // 3}", f"s{i}") for i in range(60)]
    point = point_metrics(t, p)
    metrics = {"test/mca": point["mca"], "test/acc": point["acc"], "test/loss": 0.5}
    ci = run_intervals(_FakeModel(prob, torch.tensor(y)), records, metrics)
    assert set(ci) == {"test/mca_ci95_low", "test/mca_ci95_high", "test/acc_ci95_low", "test/acc_ci95_high"}
    assert ci["test/mca_ci95_low"] <= point["mca"] <= ci["test/mca_ci95_high"]
    rows = summary_rows({**metrics, **ci})
    assert rows[0].startswith("| `test/acc` | ") and "[" in rows[0] and len(rows) == 3
    assert summary_rows({"test/mca": 0.8312, "test/mca_ci95_low": 0.781, "test/mca_ci95_high": 0.8805}) == [
        "| `test/mca` | 0.83 [0.78, 0.88] |"
    ]
    # Multi-label: exact match and micro F1 get intervals too.
    rng = np.random.default_rng(3)
    tm = torch.tensor(rng.random((30, 4)) < 0.4).long()
    pm = tm ^ torch.tensor(rng.random((30, 4)) < 0.1).long()
    metrics = {"test/mca": 0.5, "test/exact_match": 0.5, "test/micro_f1": 0.5}
    ci = run_intervals(_FakeModel(pm.float(), tm, pm), records[:30], metrics)
    assert {"test/exact_match_ci95_low", "test/micro_f1_ci95_high", "test/mca_ci95_low"} <= set(ci)


def test_group_report_names_the_groups_a_model_misreads(tmp_path):
    names = ["Homogeneous", "Speckled", "Centromere"]
    groups = ["h1"] * 4 + ["c1"] * 4 + [None] * 2
    target = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2, 1, 1])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 1, 1])  # the whole centromere specimen read as speckled
    path = write_group_report(groups, target, pred, names, tmp_path)
    rows = {r["group"]: r for r in csv.DictReader(open(path))}
    assert set(rows) == {"h1", "c1"}  # images without a group are left out
    assert rows["c1"]["true"] == "Centromere" and float(rows["c1"]["accuracy"]) == 0.25
    assert rows["c1"]["most_predicted"] == "Speckled" and float(rows["c1"]["most_predicted_share"]) == 0.75
    assert float(rows["h1"]["accuracy"]) == 0.75 and rows["h1"]["images"] == "4"
    md = (tmp_path / "test_report.md").read_text()
    assert "| c1 | Centromere | 4 | 0.250 | Speckled (0.75) |" in md
    assert "By majority vote of its images, **1 of 2** single-class groups" in md  # h1 right, c1 wrong
    tie = torch.tensor([0, 0, 1, 1])  # two votes each: no verdict
    (tmp_path / "tie").mkdir()
    write_group_report(["t1"] * 4, torch.zeros(4, dtype=torch.long), tie, names, tmp_path / "tie")
    assert "**0 of 1**" in (tmp_path / "tie" / "test_report.md").read_text()
    assert write_group_report([None] * 3, target[:3], pred[:3], names, tmp_path / "none") is None
    many = [f"g{i:03d}" for i in range(MAX_GROUP_ROWS + 5)]
    t = torch.zeros(len(many), dtype=torch.long)
    p = torch.tensor([0] * 5 + [1] * MAX_GROUP_ROWS)
    write_group_report(many, t, p, names, tmp_path, stage="val")
    md = (tmp_path / "val_report.md").read_text()
    assert "| g000 |" not in md and "| g044 |" in md and f"The {MAX_GROUP_ROWS} least accurate" in md
    assert len(list(csv.DictReader(open(tmp_path / "val_per_group.csv")))) == MAX_GROUP_ROWS + 5


def test_error_gallery_picks_the_most_confident_errors_half_a_row_per_group(tmp_path):
    from PIL import Image

    from ana_lightning.reports.gallery import pick_errors, plot_error_gallery

    # class 0: 6 errors in group a (confidences .9 … .4) and 2 in group b (.35, .3); class 1: all right
    target = [0] * 10 + [1] * 3
    pred = [1] * 8 + [0, 0] + [1] * 3
    conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.99, 0.99, 0.9, 0.9, 0.9]
    groups = ["a"] * 6 + ["b"] * 2 + ["a", "a"] + ["c"] * 3
    picked = pick_errors(target, pred, conf, groups, per_class=4)
    assert list(picked) == [0]  # class 1 has no error: no row
    assert picked[0] == [0, 1, 6, 7]  # two of a (the cap), then b's two, most confident first
    assert pick_errors(target, pred, conf, groups, per_class=8)[0] == [0, 1, 2, 3, 4, 5, 6, 7]  # filled up
    paths = []
    for i in range(13):  # dim 8-bit cells and one unreadable file
        p = tmp_path / f"c{i}.png"
        if i == 3:
            p.write_bytes(b"not a png")
        else:
            Image.fromarray((np.random.default_rng(i).random((40, 40)) * 30).astype(np.uint8)).save(p)
        paths.append(str(p))
    prob = np.array([[1 - c, c] if p == 1 else [c, 1 - c] for p, c in zip(pred, conf, strict=True)])
    out = plot_error_gallery(paths, target, prob, ["AC-1", "AC-4"], groups, tmp_path / "test_errors.png")
    assert out is not None and out.stat().st_size > 5000
    right = prob[10:]
    assert (
        plot_error_gallery(paths[10:], target[10:], right, ["AC-1", "AC-4"], groups[10:], tmp_path / "x.png")
        is None
    )
    assert not (tmp_path / "x.png").exists()


def test_sign_test_counts_wins_and_refuses_negative_counts():
    assert sign_test(0, 0) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 2**10) == sign_test(0, 10)
    assert sign_test(17, 13) == pytest.approx(0.585, abs=0.001)  # round 26: full vs CPU size, by specimen
    with pytest.raises(ValueError, match="counts wins"):
        sign_test(-1, 3)


def test_compare_by_group_does_not_let_one_specimen_decide():
    """A reads all 40 cells of one specimen right where B reads none; elsewhere both read the same. McNemar
    counts 40 independent wins (p ~ 1e-12); by group it is one specimen of three, which proves nothing."""
    from ana_lightning.compare import _by_group

    keys, groups, ca, cb = [], {}, {}, {}
    for g, n in (("s1", 40), ("s2", 30), ("s3", 25)):
        for i in range(n):
            k = ("0", f"{g}/{i}.png")
            keys.append(k)
            groups[k] = g
            ca[k] = True if g == "s1" else i % 3 == 0
            cb[k] = False if g == "s1" else i % 3 == 0
    assert mcnemar([ca[k] for k in keys], [cb[k] for k in keys])["p_mcnemar"] < 1e-10
    r = _by_group(keys, ca, cb, groups)
    assert (r["n_groups"], r["groups_a_better"], r["groups_b_better"], r["groups_tied"]) == (3, 1, 0, 2)
    assert r["p_sign_groups"] == 1.0
    singletons = {k: k[1] for k in keys}  # every image its own group: nothing to add to McNemar
    assert _by_group(keys, ca, cb, singletons) == {}
