"""The low-data experiment (experiments/low_data/run.py) end to end at a tiny size."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

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
    return [
        "--groups",
        "discrete nuclear dots",
        "--repeats",
        "1",
        "--steps",
        "2",
        "--epochs",
        "0",  # a fixed 2 steps, whatever K
        "--batch-size",
        "4",
        "--backbone",
        TINY_BACKBONE,
        "--image-size",
        "32",
        "--render-size",
        "64",
        "--n-test",
        "2",
        "--synthetic-root",
        str(tmp_path / "synth"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


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
    assert "| synthetic | 1 | softmax_cnn | 1 |" in (out / "paired.md").read_text()


def test_paired_differences_between_methods(low_data):
    # a scores 0.1 above b in every (group, repeat) cell; c scores exactly like a.
    rows = []
    for i, g in enumerate(("g1", "g2")):
        for rep in range(3):
            base = 0.5 + 0.05 * rep + 0.01 * i
            for m, v in (("a", base + 0.1), ("b", base), ("c", base + 0.1)):
                rows.append(dict(dataset="real", group=g, k=3, repeat=rep, method=m, mca=v))
    table = low_data.paired_differences(rows, ["a", "b", "c"], reference="a").splitlines()
    line_b = next(x for x in table if "| b |" in x)
    line_c = next(x for x in table if "| c |" in x)
    assert "| 6 | +0.100 | [+0.100, +0.100] |" in line_b
    assert line_c.endswith(
        "| 6 | +0.000 | [+0.000, +0.000] | 1 |"
    )  # a method against its copy: no difference


def test_draws_keep_train_and_test_apart(low_data, tmp_path):
    from ana_lightning.data.records import ImageRecord

    cfg = low_data.StudyConfig(n_test=3)
    by_class = {
        c: [ImageRecord(f"/{c}/{i}.png", (c,), sha256=f"{c}{i}") for i in range(8)] for c in ("AC-6", "AC-7")
    }
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
    res = low_data.main(
        _tiny(
            tmp_path,
            "--datasets",
            "real",
            "--k",
            "1",
            "5",
            "--real-root",
            str(REAL_DATA / "patterns"),
            "--methods",
            "svm_texture",
            "softmax_cnn",
        )
    )
    by_k = {r["k"]: r for r in res["rows"] if r["method"] == "svm_texture"}
    assert by_k[1]["mca"] is not None and by_k[1]["n_train"] == 2
    # AC-7's two byte-identical files count once: 4 unique AC-7 images, so K=5 cannot be tested
    assert by_k[5]["mca"] is None
    assert "n/a" in res["table"]


@pytest.mark.slow
def test_low_data_study_runs_on_i3a_cells(low_data, tmp_path):
    from contest_fixtures import write_i3a2014_cells

    root = write_i3a2014_cells(tmp_path / "i3a", per_class=6, specimens_per_class=3)
    args = _tiny(
        tmp_path,
        "--datasets",
        "i3a",
        "--k",
        "1",
        "2",
        "--i3a-root",
        str(root),
        "--n-test-cells",
        "2",
        "--methods",
        "svm_texture",
        "--repeats",
        "2",
    )  # the CNN methods: the synthetic test above
    res = low_data.main(args)
    rows = res["rows"]
    assert {(r["k"], r["repeat"], r["method"]) for r in rows} == {
        (k, rep, "svm_texture") for k in (1, 2) for rep in (0, 1)
    }
    assert all(r["group"] == "i3a6" and r["n_train"] == 6 * r["k"] and r["n_test"] == 12 for r in rows)
    assert "| i3a | 1 |" in res["table"]


def test_i3a_split_holds_out_whole_specimens(low_data, tmp_path):
    from contest_fixtures import write_i3a2014_cells

    root = write_i3a2014_cells(tmp_path / "i3a", per_class=6, specimens_per_class=3)
    # whole specimens (the CSV's Specimen ID) on one side only
    cfg = low_data.StudyConfig(i3a_root=str(root), n_test_cells=2)
    records, _, _ = low_data._i3a_records(cfg)
    pool, test = low_data._i3a_split(cfg, records)
    assert not {r.group for v in pool.values() for r in v} & {r.group for r in test}
    assert len(pool) == 6 and len(test) == 12
    copies = low_data._normalised_copies(test, {}, tmp_path / "cache")
    assert [c.group for c in copies] == [r.group for r in test] and all(
        Path(c.path).is_file() for c in copies
    )


def test_dev_split_never_reads_the_test_specimens(low_data, tmp_path):
    from contest_fixtures import write_i3a2014_cells

    root = write_i3a2014_cells(tmp_path / "i3a", per_class=4, specimens_per_class=6)
    cfg = low_data.StudyConfig(datasets=["i3a"], i3a_root=str(root), n_test_cells=2)
    records, _, _ = low_data._i3a_records(cfg)
    pool, test = low_data._i3a_split(cfg, records)
    dev_pool, dev_test = low_data._i3a_split(low_data.StudyConfig(**{**vars(cfg), "dev": True}), records)
    groups = lambda by_class: {r.group for v in by_class.values() for r in v}  # noqa: E731
    test_groups, pool_groups = {r.group for r in test}, groups(pool)
    dev_test_groups, dev_pool_groups = {r.group for r in dev_test}, groups(dev_pool)
    # the development cells come from the training pool's specimens only, split again by specimen
    assert dev_test_groups and dev_pool_groups
    assert (
        dev_test_groups | dev_pool_groups <= pool_groups
        and not (dev_test_groups | dev_pool_groups) & test_groups
    )
    assert not dev_test_groups & dev_pool_groups
    # every class on both sides
    assert set(dev_pool) == set(pool) and {r.label for r in dev_test} == set(pool)


def test_settings_are_checked_when_the_study_is_built(low_data):
    with pytest.raises(ValueError, match="siamese_loss must be one of"):
        low_data.StudyConfig(siamese_loss="triplet")
    with pytest.raises(ValueError, match="siamese_scoring must be one of"):
        low_data.StudyConfig(siamese_scoring="max")
    with pytest.raises(ValueError, match="siamese_lr must be > 0"):
        low_data.StudyConfig(siamese_lr=-1e-3)
    with pytest.raises(ValueError, match="use it with datasets \\['i3a'\\] only"):
        low_data.StudyConfig(datasets=["synthetic"], dev=True)
    with pytest.raises(SystemExit):
        low_data.main(["--dev", "--datasets", "synthetic"])


def test_siamese_settings_reach_the_model(low_data, tmp_path, monkeypatch):
    import ana_lightning.models.siamese as siamese

    seen = []

    class Recording(siamese.SiameseClassifier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.hparams.loss, self.hparams.scoring, self.configure_optimizers()))

    monkeypatch.setattr(siamese, "SiameseClassifier", Recording)
    args = ["--datasets", "synthetic", "--k", "1", "--methods", "siamese_ensemble", "--siamese-loss"]
    low_data.main(
        _tiny(tmp_path, *args, "contrastive", "--siamese-scoring", "prototype", "--siamese-lr", "0.003")
    )
    ((loss, scoring, opt),) = seen
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    assert (loss, scoring) == ("contrastive", "prototype")
    assert opt.param_groups[0]["lr"] == pytest.approx(0.003)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (cfg["siamese_loss"], cfg["siamese_scoring"], cfg["siamese_lr"], cfg["lr"]) == (
        "contrastive",
        "prototype",
        0.003,
        0.001,
    )


def test_per_cell_normalisation(low_data):
    import numpy as np

    img = np.zeros((6, 6, 3), np.uint8)
    img[1:5, 1:5] = 20
    img[2, 2] = 40
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 1:5] = 255
    out = low_data.normalise_cell(img, mask)
    assert out.shape == (6, 6, 3) and out[0, 0, 0] == 0 and out[2, 2, 1] == 255
    assert 120 <= out[1, 1, 0] <= 140  # a dim cell is stretched: 20 / p99 (~39) * 255


def test_summary_sd_is_the_sample_sd_over_repeats(low_data):
    rows = [
        dict(dataset="d", group=g, k=1, repeat=rep, method="m", mca=v)
        for rep, vals in enumerate([(0.2, 0.4), (0.6, 0.6), (0.9, 0.7)])
        for g, v in zip("ab", vals, strict=True)
    ]
    (line,) = low_data.summarize(rows, ["m"])
    per_repeat = [0.3, 0.6, 0.8]
    assert line["m"][0] == pytest.approx(sum(per_repeat) / 3)
    assert line["m"][1] == pytest.approx(float(np.std(per_repeat, ddof=1)))  # not the population sd
    (one,) = low_data.summarize([r for r in rows if r["repeat"] == 0], ["m"])
    assert np.isnan(one["m"][1]) and "± n/a" in low_data.markdown_table([one], ["m"])


def test_epochs_set_the_training_steps_by_the_number_of_images(low_data):
    cfg = low_data.StudyConfig(steps=30, batch_size=16, epochs=20)
    assert low_data.train_steps(cfg, 300) == 375  # K = 50 of 6 classes: 20 passes of 300 in batches of 16
    assert low_data.train_steps(cfg, 6) == 30  # K = 1: 20 passes of 6 (one batch each) < the 30-step floor
    assert low_data.train_steps(cfg, 30) == 38  # batches of 16 (not 30): ceil(20 * 30 / 16)
    for off in (None, 0):  # a fixed number of steps, the study's budget before round 28
        assert low_data.train_steps(low_data.StudyConfig(steps=30, epochs=off), 300) == 30
    assert low_data.StudyConfig().epochs == 20  # the default trains by epochs
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        low_data.train_steps(low_data.StudyConfig(epochs=-1), 10)
    with pytest.raises(SystemExit):
        low_data.main(["--epochs", "-1"])


def test_rows_record_each_networks_steps(low_data, tmp_path):
    res = low_data.main(_tiny(tmp_path, "--datasets", "synthetic", "--k", "1", "3", "--epochs", "2"))
    for r in res["rows"]:  # 2 classes: K=1 -> 2 images, max(2, ceil(2*2/2)); K=3 -> 6 images, ceil(2*6/4)
        want = {1: 2, 3: 3}[r["k"]]
        assert r["steps"] == (None if r["method"] == "svm_texture" else want), r
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["steps"] == 2


def _write_run(folder, rows):
    folder.mkdir(parents=True)
    cols = [
        "dataset",
        "group",
        "k",
        "repeat",
        "method",
        "acc",
        "mca",
        "n_train",
        "n_test",
        "steps",
        "seconds",
    ]
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def test_compare_pairs_two_runs_by_draw(tmp_path):
    spec = importlib.util.spec_from_file_location("low_data_compare", SCRIPT.parent / "compare.py")
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)

    def rows(mcas, steps):
        return [
            dict(
                dataset="i3a",
                group="i3a6",
                k=k,
                repeat=rep,
                method=m,
                mca=v,
                n_train=6 * k,
                n_test=360,
                steps=steps if m != "svm_texture" else "",
            )
            for (k, m), vals in mcas.items()
            for rep, v in enumerate(vals)
        ]

    a = {(50, "softmax_cnn"): [0.4, 0.5, 0.45], (50, "svm_texture"): [0.5, 0.5, 0.5]}
    b = {(50, "softmax_cnn"): [0.6, 0.6, 0.65], (50, "svm_texture"): [0.5, 0.5, 0.5]}
    _write_run(
        tmp_path / "steps30",
        rows(a, 30)
        + [dict(dataset="i3a", group="i3a6", k=1, repeat=0, method="softmax_cnn", n_train=6, n_test=360)],
    )
    _write_run(tmp_path / "epochs20", rows(b, 375))
    table = cmp.main(
        [str(tmp_path / "steps30"), str(tmp_path / "epochs20"), "--out-md", str(tmp_path / "d.md")]
    )
    line = next(x for x in table.splitlines() if "softmax_cnn" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:10] == ["50", "30", "375", "3", "0.450", "0.617", "+0.167"]  # B - A, steps of each run
    assert "| svm_texture | 50 | – | – | 3 | 0.500 | 0.500 | +0.000 | [+0.000, +0.000] | 1 |" in table
    assert (tmp_path / "d.md").read_text().strip() == table
    ks = {[c.strip() for c in x.strip("|").split("|")][3] for x in table.splitlines()[2:]}
    assert ks == {"50"}  # the K=1 row has no MCA (no draw): left out

    other = rows({(50, "softmax_cnn"): [0.6, 0.6, 0.6]}, 375)
    other[0]["n_train"] = 60
    _write_run(tmp_path / "other", other)
    with pytest.raises(ValueError, match="n_train 300 in steps30 but 60 in other"):
        cmp.main([str(tmp_path / "steps30"), str(tmp_path / "other")])
    with pytest.raises(FileNotFoundError, match="no results.csv"):
        cmp.main([str(tmp_path / "steps30"), str(tmp_path / "nowhere")])


def test_round29_claim_rule():
    spec = importlib.util.spec_from_file_location(
        "round29_tables", REPO / "experiments" / "low_data" / "round29" / "tables.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reps = range(4)
    ahead = {
        "siamese_ensemble": {r: 0.6 + 0.01 * r for r in reps},
        "svm_cnn": {r: 0.5 + 0.012 * r for r in reps},
    }
    assert mod.verdict(ahead)[0] == "reproduced"  # highest mean, interval against the runner-up above zero
    behind = {"siamese_ensemble": ahead["svm_cnn"], "svm_cnn": ahead["siamese_ensemble"]}
    assert mod.verdict(behind)[0] == "not reproduced"
    noisy = {
        "siamese_ensemble": {0: 0.6, 1: 0.4, 2: 0.6, 3: 0.4},
        "svm_cnn": {0: 0.45, 1: 0.55, 2: 0.45, 3: 0.5},
    }
    assert mod.verdict(noisy)[0] == "a tie"  # means 0.5 vs 0.4875, the interval across zero
