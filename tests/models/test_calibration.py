"""Temperature scaling: fitted on validation, lowers ECE, never changes a decision, travels with the checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from ana_lightning.calibration import (
    calibrate_run,
    choose_scope,
    expected_calibration_error,
    fit_temperature,
    report_test_calibration,
)
from ana_lightning.models.classifier import SoftmaxClassifier
from ana_lightning.models.multilabel import SigmoidEnsemble
from ana_lightning.predict import Predictor

from conftest import TINY_BACKBONE, compose, tiny_train_overrides, write_class_images


def _overconfident(n: int, k: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the model reports ``scale · z`` (over-confident for scale > 1)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 1.5
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z * scale, y


def test_temperature_lowers_ece_of_an_overconfident_model_and_keeps_the_argmax():
    val_z, val_y = _overconfident(3000, 5, 4.0, seed=0)
    test_z, test_y = _overconfident(3000, 5, 4.0, seed=1)
    t = fit_temperature(val_z, val_y)
    assert 3.0 < float(t) < 5.0  # recovers the factor the logits were inflated by
    before = expected_calibration_error(test_z.softmax(-1), test_y)
    after = expected_calibration_error((test_z / t).softmax(-1), test_y)
    assert before > 0.15 and after < before / 3
    assert torch.equal((test_z / t).argmax(-1), test_z.argmax(-1))


def test_underconfident_model_is_sharpened_and_a_calibrated_one_left_alone():
    z, y = _overconfident(4000, 4, 0.3, seed=2)
    assert float(fit_temperature(z, y)) < 0.5
    z, y = _overconfident(4000, 4, 1.0, seed=3)
    assert 0.85 < float(fit_temperature(z, y)) < 1.15


def test_multilabel_scope_per_class_only_when_it_helps():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 3, generator=g) * 2
    y = torch.bernoulli(z.sigmoid(), generator=g)
    same = z * 3.0  # every class equally over-confident: one temperature is enough
    assert choose_scope(same, y)[0] == "global"
    mixed = z * torch.tensor([0.3, 1.0, 6.0])  # under-, well- and over-confident classes
    scope, nll = choose_scope(mixed, y)
    assert scope == "per_class" and nll["per_class"] < nll["global"]
    t = fit_temperature(mixed, y, multilabel=True, per_class=True)
    assert t[0] < 0.5 and 0.8 < t[1] < 1.25 and t[2] > 4


class _Split(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "target": self.y[i], "index": i}


class _DM:
    """The two things calibration needs from a datamodule: its splits and a dataset per split."""

    def __init__(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.data = data
        self.splits = {k: list(range(len(v[0]))) for k, v in data.items()}
        self.hparams = SimpleNamespace(batch_size=64)

    def make_dataset(self, records, train=False):
        for x, y in self.data.values():
            if len(x) == len(records):
                return _Split(x, y)
        raise AssertionError


class _LinearNet(torch.nn.Module):
    """Logits = scale · (mean pixel of each channel … tiled) — a deterministic, over-confident stand-in."""

    def __init__(self, k: int, scale: float):
        super().__init__()
        self.k, self.scale = k, scale

    def forward(self, x):
        return self.scale * x.flatten(1)[:, : self.k]


def _images(n, k, scale_truth, seed):
    z, y = _overconfident(n, k, 1.0, seed)
    x = torch.zeros(n, 3, 4, 4)
    x.view(n, -1)[:, :k] = z
    return x, y


def test_calibrate_run_stores_the_temperature_in_the_checkpoint_and_predictions_use_it(tmp_path):
    model = SoftmaxClassifier(
        backbone={"name": TINY_BACKBONE}, class_names=["AC-1", "AC-2", "AC-4"], image_size=4
    )
    model.net = _LinearNet(3, 5.0)
    dm = _DM({"val": _images(1500, 3, 1.0, 0), "test": _images(1200, 3, 1.0, 1)})
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    model.on_save_checkpoint(ckpt)
    path = tmp_path / "m.ckpt"
    torch.save(ckpt, path)
    x_test = dm.data["test"][0][:50]
    raw = model.predict_proba(x_test)
    val = calibrate_run(model, dm, path, tmp_path)
    assert 4.0 < val["val/temperature"] < 6.0 and val["val/ece"] < val["val/ece_uncalibrated"]
    test = report_test_calibration(model, dm, dm.splits["test"], tmp_path)
    assert test["test/ece"] < test["test/ece_uncalibrated"] / 2
    assert (tmp_path / "test_reliability_diagram.png").stat().st_size > 5000
    cal = model.predict_proba(x_test)
    assert (
        torch.equal(cal.argmax(-1), raw.argmax(-1)) and cal.max(-1).values.mean() < raw.max(-1).values.mean()
    )
    stored = torch.load(path, weights_only=True)
    assert (
        stored["ana_lightning"]["temperature"]
        == stored["hyper_parameters"]["temperature"]
        == model.hparams.temperature
    )
    reloaded = SoftmaxClassifier(
        backbone={"name": TINY_BACKBONE}, class_names=["AC-1", "AC-2", "AC-4"], image_size=4
    )
    reloaded.on_load_checkpoint(stored)
    reloaded.net = _LinearNet(3, 5.0)
    torch.testing.assert_close(reloaded.predict_proba(x_test), cal)
    served = Predictor.from_model(reloaded, stored["ana_lightning"]).predict_proba(x_test)
    assert abs(served - cal.numpy()).max() < 1e-5
    # calibrate=false: nothing stored, raw probabilities served
    calibrate_run(model, dm, path, tmp_path, enabled=False)
    assert torch.load(path, weights_only=True)["ana_lightning"]["temperature"] is None
    torch.testing.assert_close(model.predict_proba(x_test), raw)


@pytest.mark.parametrize("kind", ["softmax", "multilabel", "multihead"])
def test_the_report_after_a_test_reads_the_tested_logits_without_a_second_pass(tmp_path, kind):
    """After ``trainer.test`` the calibration report uses the logits the test computed (the same ECE as a fresh
    pass); before, it ran the model over the test images again (with TTA eight views each: on the I3A training
    folder, ``ana-eval split=all`` spent 2.5 of its 6 minutes there)."""
    from ana_lightning.models.hierarchical import MultiHeadClassifier

    torch.manual_seed(0)  # the untrained network's weights, hence its ECE: not whatever earlier tests left
    names = ["AC-1", "AC-2", "AC-4"]
    x, y = _images(300, 3, 1.0, 0)
    if kind == "multilabel":
        model = SigmoidEnsemble(class_names=names, backbones=[{"name": TINY_BACKBONE}], image_size=4)
        y = torch.nn.functional.one_hot(y, 3)
    elif kind == "softmax":
        model = SoftmaxClassifier(backbone={"name": TINY_BACKBONE}, class_names=names, image_size=4)
    else:  # three heads, one temperature each: the real tiny network on 32 px images
        model = MultiHeadClassifier({"name": TINY_BACKBONE}, ["AC-1", "AC-4", "AC-22"], image_size=32)
        x = torch.rand(120, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        y = y[:120]
    if kind != "multihead":
        model.net = _LinearNet(3, 4.0)
    dm = _DM({"test": (x, y)})
    fresh = report_test_calibration(model, dm, dm.splits["test"], tmp_path)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(
        model, dataloaders=torch.utils.data.DataLoader(dm.make_dataset(dm.splits["test"]), batch_size=64)
    )
    calls = []
    real = model.calibration_logits
    model.calibration_logits = lambda x: calls.append(1) or real(x)  # what a second pass would call
    after_test = report_test_calibration(model, dm, dm.splits["test"], tmp_path)
    assert not calls
    assert after_test.keys() == fresh.keys() and fresh["test/ece"] > 0.01
    assert ("test/level1_ece" in fresh) == (kind == "multihead")
    for k, v in fresh.items():
        assert after_test[k] == pytest.approx(v, abs=1e-6), k


def test_multilabel_thresholds_move_with_the_temperature_so_decisions_do_not_change(tmp_path):
    model = SigmoidEnsemble(
        class_names=["AC-1", "AC-4", "AC-5"],
        backbones=[{"name": TINY_BACKBONE}],
        image_size=4,
        decision_rule="per_class",
    )
    model.net = _LinearNet(3, 4.0)
    model.thresholds.copy_(torch.tensor([0.3, 0.5, 0.8]))
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1200, 3, 4, 4)
    z = torch.randn(1200, 3, generator=g)
    x.view(1200, -1)[:, :3] = z
    y = torch.bernoulli(z.sigmoid(), generator=g)
    dm = _DM({"val": (x[:800], y[:800]), "test": (x[800:], y[800:])})
    before = model.decide(model.predict_proba(x))
    calibrate_run(model, dm, None, tmp_path)
    assert float(model.temperature.mean()) > 2.5
    assert torch.equal(model.decide(model.predict_proba(x)), before)
    test = report_test_calibration(model, dm, dm.splits["test"], tmp_path)
    assert test["test/ece"] < test["test/ece_uncalibrated"]


@pytest.mark.slow
def test_training_run_reports_ece_and_reliability_diagram_and_calibrate_false_turns_it_off(tmp_path):
    from ana_lightning.pipeline import train

    root = write_class_images(tmp_path / "data", {"AC-1": 10, "ac-2": 10, "AC10": 10})
    for calibrate in (True, False):
        run = tmp_path / "runs" / f"cal_{calibrate}"
        train(
            compose(
                "train", [*tiny_train_overrides(root, epochs=2), f"calibrate={calibrate}"], output_dir=run
            )
        )
        metrics = json.loads((run / "metrics.json").read_text())
        assert {"test/ece", "test/ece_uncalibrated"} <= set(metrics)
        assert (run / "test_reliability_diagram.png").is_file()
        best = (run / "best_checkpoint.txt").read_text().strip()
        t = torch.load(best, weights_only=True)["ana_lightning"]["temperature"]
        if calibrate:
            assert t and t[0] > 0 and "val/temperature" in metrics
            assert Predictor.load(best).info.extra["temperature"] == t
        else:
            assert t is None and metrics["test/ece"] == metrics["test/ece_uncalibrated"]


def _grouped_dm(scales: dict[str, float], n: int = 1000) -> _DM:
    """Validation images in groups whose logits are inflated (or shrunk) by each group's own factor."""
    xs, ys, records = [], [], []
    for i, (group, scale) in enumerate(scales.items()):
        z, y = _overconfident(n, 3, scale, seed=10 + i)
        x = torch.zeros(n, 3, 4, 4)
        x.view(n, -1)[:, :3] = z
        xs.append(x)
        ys.append(y)
        records += [SimpleNamespace(group=group)] * n
    dm = _DM({"val": (torch.cat(xs), torch.cat(ys))})
    dm.splits["val"] = records
    return dm


@pytest.mark.parametrize(
    "scales,carried",
    [
        ({"specimen-1": 4.0, "specimen-2": 4.0}, True),  # the same over-confidence in every group
        ({"specimen-1": 4.0, "specimen-2": 0.25}, False),  # one group over-, the other under-confident
    ],
)
def test_a_temperature_is_kept_only_when_it_carries_across_validation_groups(
    tmp_path, scales, carried, caplog
):
    model = SoftmaxClassifier(
        backbone={"name": TINY_BACKBONE}, class_names=["AC-1", "AC-2", "AC-4"], image_size=4
    )
    model.net = _LinearNet(3, 1.0)
    with caplog.at_level("WARNING"):
        val = calibrate_run(model, _grouped_dm(scales), None, tmp_path)
    helped = val["val/heldout_group_nll"] < val["val/heldout_group_nll_uncalibrated"]
    assert helped == carried
    if carried:
        assert 3.0 < val["val/temperature"] < 5.0 and model.hparams.temperature is not None
    else:
        assert val["val/temperature"] == 1.0 and model.hparams.temperature is None
        assert val["val/ece"] == val["val/ece_uncalibrated"] and "did not lower a group's NLL" in caplog.text
