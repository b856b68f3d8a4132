"""The low-data experiment (experiments/low_data/run.py) end to end at a tiny size."""

import csv
import importlib.util
import sys

import numpy as np
import pytest

from conftest import REAL_DATA, REPO, TINY_BACKBONE

SCRIPT = REPO / "experiments" / "low_data" / "run.py"


@pytest.fixture(scope="module")
def low_data():
    spec = importlib.util.spec_from_file_location("low_data_run", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _tiny(tmp_path, *extra):
    return ["--groups", "discrete nuclear dots", "--repeats", "1", "--steps", "2", "--batch-size", "4",
            "--backbone", TINY_BACKBONE, "--image-size", "32", "--render-size", "64", "--n-test", "2",
            "--synthetic-root", str(tmp_path / "synth"), "--out", str(tmp_path / "out"), *extra]


def test_low_data_study_runs_end_to_end_on_synthetic_fields(low_data, tmp_path):
    res = low_data.main(_tiny(tmp_path, "--datasets", "synthetic", "--k", "1", "2"))
    rows = res["rows"]
    assert {(r["k"], r["method"]) for r in rows} == {(k, m) for k in (1, 2) for m in low_data.METHODS}
    for r in rows:
        assert r["n_train"] == 2 * r["k"] and r["n_test"] == 4
        # 2 classes × 2 test images: the MCA is a mean of two recalls in {0, 1/2, 1}
        assert r["mca"] * 4 == pytest.approx(round(r["mca"] * 4)) and 0 <= r["mca"] <= 1
    out = tmp_path / "out"
    assert len(list(csv.DictReader(open(out / "results.csv")))) == len(rows)
    table = (out / "table.md").read_text()
    assert "| synthetic | 1 |" in table and "| synthetic | 2 |" in table
    assert all(m in table.splitlines()[0] for m in low_data.METHODS)


def test_draws_keep_train_and_test_apart(low_data, tmp_path):
    from ana_lightning.data.records import ImageRecord

    cfg = low_data.StudyConfig(n_test=3)
    by_class = {c: [ImageRecord(f"/{c}/{i}.png", (c,), sha256=f"{c}{i}") for i in range(8)] for c in ("AC-6", "AC-7")}
    tests = set()
    for rep in range(3):
        train, test = low_data._draws(cfg, "synthetic", by_class, 5, rep)
        assert not {r.path for r in train} & {r.path for r in test}
        assert len(train) == 10 and len(test) == 6
        tests.add(tuple(r.path for r in test))
    assert len(tests) == 1  # synthetic: one fixed test set for every K and repeat
    assert low_data._draws(cfg, "synthetic", by_class, 6, 0) is None  # 8 - 3 held out < 6
    train, test = low_data._draws(cfg, "real", by_class, 7, 0)  # real: the rest is the test set
    assert len(train) == 14 and len(test) == 2
    assert low_data._draws(cfg, "real", by_class, 8, 0) is None  # nothing left to test on


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA / "patterns").is_dir(), reason=f"{REAL_DATA} is absent")
def test_low_data_study_on_the_real_images(low_data, tmp_path):
    res = low_data.main(_tiny(tmp_path, "--datasets", "real", "--k", "1", "5", "--real-root", str(REAL_DATA / "patterns"),
                              "--methods", "svm_texture", "softmax_cnn"))
    by_k = {r["k"]: r for r in res["rows"] if r["method"] == "svm_texture"}
    assert by_k[1]["mca"] is not None and by_k[1]["n_train"] == 2
    # AC-7's two byte-identical files count once: 4 unique AC-7 images, so K=5 cannot be tested
    assert by_k[5]["mca"] is None
    assert "n/a" in res["table"]


def test_summary_sd_is_the_sample_sd_over_repeats(low_data):
    rows = [dict(dataset="d", group=g, k=1, repeat=rep, method="m", mca=v)
            for rep, vals in enumerate([(0.2, 0.4), (0.6, 0.6), (0.9, 0.7)]) for g, v in zip("ab", vals, strict=True)]
    (line,) = low_data.summarize(rows, ["m"])
    per_repeat = [0.3, 0.6, 0.8]
    assert line["m"][0] == pytest.approx(sum(per_repeat) / 3)
    assert line["m"][1] == pytest.approx(float(np.std(per_repeat, ddof=1)))  # not the population sd
    (one,) = low_data.summarize([r for r in rows if r["repeat"] == 0], ["m"])
    assert np.isnan(one["m"][1]) and "± n/a" in low_data.markdown_table([one], ["m"])
