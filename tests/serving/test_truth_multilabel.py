"""ana-predict truth=… with a multi-label model: label sets of AC codes, scored from what predictions.csv says."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ana_lightning.predict import run_predict
from ana_lightning.taxonomy import LabelError

from conftest import compose, write_class_images

CLASSES = ["AC-1", "AC-4", "AC-5"]  # test_export.SigmoidToy's, thresholds 0.2, 0.45, 0.7


@pytest.fixture(scope="module")
def multi_ckpt(tmp_path_factory) -> Path:
    from test_export import write_multi_label_checkpoint

    return write_multi_label_checkpoint(tmp_path_factory.mktemp("multi") / "multi.ckpt")


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    """Three patients: images in 'AC-1 + AC-4', 'ac-5' and 'AC-29' (a code the model has no class for)
    folders, and an unreadable image in a labelled folder."""
    root = tmp_path_factory.mktemp("hospital")
    for p in range(3):
        write_class_images(
            root / f"patient{p:02d}", {"AC-1 + AC-4": 3, "ac-5": 2, "AC-29": 1}, size=32, seed=p
        )
    (root / "patient00" / "ac-5" / "broken.png").write_bytes(b"not a png")
    return root


def _predict(ckpt: Path, inp: Path, out: Path, *extra: str) -> dict:
    run_predict(
        compose("predict", [f"ckpt_path={ckpt}", f"input={inp}", "progress=false", *extra], output_dir=out)
    )
    return json.loads((out / "truth_metrics.json").read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _expected(pairs: list[tuple[set[str], set[str]]]) -> dict[str, float]:
    """Exact match, Hamming loss, micro F1 and MCA (mean recall over present classes), by hand."""
    t = np.array([[c in known for c in CLASSES] for known, _ in pairs])
    p = np.array([[c in said for c in CLASSES] for _, said in pairs])
    tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
    present = t.sum(0) > 0
    return {
        "exact_match": float((t == p).all(1).mean()),
        "hamming_loss": float((t != p).mean()),
        "micro_f1": float(2 * tp / (2 * tp + fp + fn)),
        "mca": float(((t & p).sum(0)[present] / t.sum(0)[present]).mean()),
    }


def test_truth_from_hospital_folders_scores_label_sets(multi_ckpt, hospital, tmp_path):
    """truth=folder: each image's set is its nearest folder naming AC codes; the metrics are recomputed
    from predictions.csv's written sets; AC-29 images are listed, not scored; the broken one has no verdict."""
    m = _predict(multi_ckpt, hospital, tmp_path / "r", "truth=folder")
    rows = _rows(tmp_path / "r" / "predictions.csv")
    known = {"AC-1 + AC-4": {"AC-1", "AC-4"}, "ac-5": {"AC-5"}}
    pairs = [
        (known[Path(r["path"]).parent.name], {x for x in r["pred"].split(";") if x})
        for r in rows
        if r["status"] == "ok" and Path(r["path"]).parent.name in known
    ]
    assert len(pairs) == 15 and m["truth/scored_images"] == 15
    for key, want in _expected(pairs).items():
        assert m[f"truth/{key}"] == pytest.approx(want, abs=1e-6), key
    assert m["truth/images"] == 19 and m["truth/no_verdict"] == 1 and m["truth/unscored_images"] == 3
    assert m["truth/exact_match_ci95_low"] <= m["truth/exact_match"] <= m["truth/exact_match_ci95_high"]
    report = (tmp_path / "r" / "truth_report.md").read_text()
    assert "AC-29" in report and "not scored" in report and "`truth/exact_match`" in report
    written = _rows(tmp_path / "r" / "truth_predictions.csv")
    assert len(written) == 15 and all(r["true"] in ("AC-1;AC-4", "AC-5") for r in written)
    for name in ("truth_per_class.csv", "truth_per_class_f1.png", "truth_off_by_n.png"):
        assert (tmp_path / "r" / name).is_file()


def test_truth_csv_of_label_sets_and_strict_tokens(multi_ckpt, hospital, tmp_path):
    """truth=<file.csv>: 'AC-1;AC-4' values; a titer in a value is an error naming its line unless
    truth_strict=false, which scores the same as without it."""
    files = sorted(p for p in hospital.rglob("*.png") if p.name != "broken.png" and p.parent.name != "AC-29")
    table = tmp_path / "labels.csv"
    lines = ["path,labels"] + [
        f"{f.relative_to(hospital).as_posix()},{'AC-1;AC-4' if f.parent.name.startswith('AC-1') else 'AC-5 1:160'}"
        for f in files
    ]
    table.write_text("\n".join(lines) + "\n")
    inp = tmp_path / "in"
    for f in files:
        (inp / f.relative_to(hospital)).parent.mkdir(parents=True, exist_ok=True)
        (inp / f.relative_to(hospital)).symlink_to(f)
    with pytest.raises(LabelError, match=r"labels\.csv:\d+: 'AC-5 1:160': '1:160' is not an AC code"):
        _predict(multi_ckpt, inp, tmp_path / "strict", f"truth={table}", "truth_column=labels")
    assert not (tmp_path / "strict" / "predictions.csv").exists()  # refused before predicting
    m = _predict(
        multi_ckpt, inp, tmp_path / "r", f"truth={table}", "truth_column=labels", "truth_strict=false"
    )
    rows = _rows(tmp_path / "r" / "predictions.csv")
    pairs = [
        ({"AC-1", "AC-4"} if "AC-1 + AC-4" in r["path"] else {"AC-5"}, {x for x in r["pred"].split(";") if x})
        for r in rows
    ]
    assert m["truth/scored_images"] == len(files) == 15
    assert m["truth/micro_f1"] == pytest.approx(_expected(pairs)["micro_f1"], abs=1e-6)


def test_truth_for_a_multi_label_model_refuses_what_it_cannot_score(multi_ckpt, hospital, tmp_path):
    with pytest.raises(ValueError, match="one class per cell"):
        _predict(multi_ckpt, hospital, tmp_path / "a", "truth=i3a2014")
    only_outside = tmp_path / "outside"
    write_class_images(only_outside / "patient00", {"AC-29": 2}, size=32)
    with pytest.raises(LabelError, match=r"none of the known codes \(AC-29\) is a class of this model"):
        _predict(multi_ckpt, only_outside, tmp_path / "b", "truth=folder")
    unlabelled = tmp_path / "unlabelled"
    write_class_images(unlabelled, {"patient00": 2}, size=32)
    with pytest.raises(
        ValueError,
        match=r"no known label set for 2 of 2 image\(s\) \(no folder up to input= names an AC code\)",
    ):
        _predict(multi_ckpt, unlabelled, tmp_path / "c", "truth=folder")
    # cells_out writes one class per cell (what data.extra_train reads): refused for a multi-label model
    with pytest.raises(
        ValueError, match=r"cells_out=.* one class of a single-label cell model.*'multi_label'"
    ):
        _predict(
            multi_ckpt,
            hospital,
            tmp_path / "d",
            "truth=folder",
            "model_kind=cell",
            f"cells_out={tmp_path / 'co'}",
        )
    assert not (tmp_path / "co").exists()


def test_truth_scores_the_specimens_of_a_multi_label_model(multi_ckpt, hospital, tmp_path):
    """Fields with group_by=folder: each specimen's written patterns against the set its fields share."""
    m = _predict(
        multi_ckpt,
        hospital,
        tmp_path / "r",
        "truth=folder",
        "group_by=folder",
        "model_nucleus_diameter_px=13",
    )
    known = {"AC-1 + AC-4": {"AC-1", "AC-4"}, "ac-5": {"AC-5"}}
    specimens = _rows(tmp_path / "r" / "specimens.csv")
    pairs = [
        (known[s["specimen"].split("/")[-1]], {x for x in s["patterns"].split(";") if x})
        for s in specimens
        if s["specimen"].split("/")[-1] in known and s["p_AC-1"]
    ]
    assert len(pairs) == 6 and m["specimen/scored_images"] == 6 and m["specimen/unscored_images"] == 3
    for key, want in _expected(pairs).items():
        assert m[f"specimen/{key}"] == pytest.approx(want, abs=1e-6), key
    assert "## Specimens (`group_by`)" in (tmp_path / "r" / "truth_report.md").read_text()


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_score_truth_multilabel_on_written_verdicts(tmp_path):
    """Handwritten field verdicts with varied sets: "insufficient cells" and an unreadable field are no
    verdict, a field known only by AC-29 is listed, one with AC-29 besides AC-5 is scored on AC-5, an empty
    set is a wrong answer; specimens: a mixed one left out, a negative one says AC-0, one without fields."""
    from ana_lightning.predict.truth_multilabel import score_truth_multilabel

    classes = ["AC-0", "AC-1", "AC-4", "AC-5"]
    p = ["0.1", "0.9", "0.8", "0.2"]
    fields = [  # path, status, verdict, probabilities, known set, specimen
        ("a.png", "ok", "AC-1;AC-4", p, ("AC-1", "AC-4"), "S1"),
        ("b.png", "ok", "AC-1", p, ("AC-1", "AC-4"), "S1"),
        ("c.png", "ok", "AC-5", p, ("AC-5", "AC-29"), "S2"),
        ("g.png", "ok", "", p, ("AC-5",), "S2"),
        ("d.png", "ok", "insufficient cells", p, ("AC-0",), "S3"),
        ("h.png", "ok", "AC-0", p, ("AC-0",), "S3"),
        ("e.png", "error", "", [""] * 4, ("AC-1",), "S4"),
        ("f.png", "ok", "AC-4", p, ("AC-29",), "S5"),
    ]
    pred = _write(
        tmp_path / "predictions.csv",
        ["path", "group", "status", "error", "verdict", *[f"p_{c}" for c in classes]],
        [[f, g, s, "truncated" if s == "error" else "", v, *ps] for f, s, v, ps, _, g in fields],
    )
    _write(
        tmp_path / "specimens.csv",
        [
            "specimen",
            "screening",
            "patterns",
            "top1",
            "n_fields",
            "n_fields_used",
            *[f"p_{c}" for c in classes],
        ],
        [
            ["S1", "positive", "AC-1;AC-4", "AC-1", "2", "2", *p],
            ["S2", "positive", "AC-5", "AC-5", "2", "2", *p],
            ["S3", "negative", "", "AC-0", "2", "1", *p],
            ["S4", "insufficient cells", "", "insufficient cells", "1", "0", "", "", "", ""],
            ["S5", "positive", "AC-4", "AC-4", "1", "1", *p],
        ],
    )
    truth = {f: known for f, *_, known, _ in fields}
    groups = {f: g for f, *_, g in fields}
    m = score_truth_multilabel(pred, truth, classes, [0.5] * 4, groups, specimens=True)
    # scored: a (exact), b (misses AC-4), c (exact on AC-5), g (misses AC-5), h (exact)
    assert m["truth/scored_images"] == 5 and m["truth/images"] == 8
    assert m["truth/no_verdict"] == 2 and m["truth/unscored_images"] == 1 and m["truth/partly_outside"] == 1
    assert m["truth/exact_match"] == pytest.approx(3 / 5)
    assert m["truth/hamming_loss"] == pytest.approx(2 / 20)
    assert m["truth/micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 0 + 2))  # tp 5, fp 0, fn 2
    assert m["truth/mca"] == pytest.approx(np.mean([1, 1, 0.5, 0.5]))  # AC-0, AC-1, AC-4, AC-5
    written = _rows(tmp_path / "truth_predictions.csv")
    assert [(r["path"], r["true"], r["pred"]) for r in written] == [
        ("a.png", "AC-1;AC-4", "AC-1;AC-4"),
        ("b.png", "AC-1;AC-4", "AC-1"),
        ("c.png", "AC-5", "AC-5"),
        ("g.png", "AC-5", ""),
        ("h.png", "AC-0", "AC-0"),
    ]
    # specimens: S1 and S3 (negative, so AC-0) right; S2 mixed; S4 no usable field; S5 only AC-29
    assert m["specimen/scored_images"] == 2 and m["specimen/exact_match"] == 1.0
    assert m["specimen/mixed"] == 1 and m["specimen/no_verdict"] == 1 and m["specimen/unscored_images"] == 1
    report = (tmp_path / "truth_report.md").read_text()
    assert "insufficient cells: 1" in report and "| AC-29 | AC-4 | 1 |" in report
    assert json.loads((tmp_path / "truth_metrics.json").read_text())["truth/at_least_3_correct"] is None
