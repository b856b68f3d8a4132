"""End-to-end training on tiny folders: outputs, checkpoints, resume, evaluation."""

import csv
import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch

from ana_lightning.data.records import DatasetError
from ana_lightning.models.classifier import SoftmaxClassifier
from ana_lightning.pipeline import evaluate, train
from ana_lightning.utils import CheckpointError, load_checkpoint_model

from conftest import compose, tiny_train_overrides


def test_fast_dev_run(tiny_folder, tmp_path):
    cfg = compose("train", tiny_train_overrides(tiny_folder) + ["debug=fdr"], output_dir=tmp_path / "run")
    metrics, objs = train(cfg)
    assert objs["datamodule"].class_names == ["AC-1", "AC-2", "AC-10"]
    # fast_dev_run tests one batch: the logged MCA is scikit-learn's on that batch's predictions
    from sklearn.metrics import recall_score

    pred = objs["model"].test_predictions
    y, p = pred["target"].numpy(), pred["prob"].argmax(1).numpy()
    assert len(y) == min(8, len(objs["datamodule"].splits["test"]))  # one batch (data.batch_size=8)
    assert metrics["test/mca"] == pytest.approx(
        recall_score(y, p, labels=sorted(set(y)), average="macro"), abs=1e-6
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import write_class_images

    base = tmp_path_factory.mktemp("trained")
    root = write_class_images(base / "data", {"AC-1": 12, "ac-2": 12, "AC10": 12})
    run = base / "runs" / "r1"
    cfg = compose(
        "train", tiny_train_overrides(root, epochs=10) + ["callbacks.early_stopping=null"], output_dir=run
    )
    metrics, _ = train(cfg)
    return root, run, metrics


def test_run_folder_outputs(trained_run):
    root, run, metrics = trained_run
    for name in (
        "config_resolved.yaml",
        "split_manifest.csv",
        "metrics.json",
        "test_confusion_matrix.png",
        "test_per_class.csv",
        "test_report.md",
        "test_predictions.csv",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).exists(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert {"test/mca", "test/acc", "test/macro_f1", "test/loss"} <= set(saved)
    assert saved["test/mca"] == pytest.approx(metrics["test/mca"])
    assert list((run / "checkpoints").glob("best-epoch*.ckpt"))
    # These classes are easy: a few epochs of a tiny network must beat chance clearly.
    assert saved["test/acc"] > 0.5


def test_load_from_checkpoint_alone(trained_run):
    _, run, _ = trained_run
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    model = SoftmaxClassifier.load_from_checkpoint(best)
    assert model.class_names == ["AC-1", "AC-2", "AC-10"]
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    p = model.predict_proba(x)
    assert p.shape == (2, 3) and torch.allclose(p.sum(-1), torch.ones(2))
    generic = load_checkpoint_model(best)
    assert torch.allclose(generic(x), model(x))


def test_eval_reproduces_test_metrics(trained_run, tmp_path, caplog):
    caplog.set_level("INFO", logger="ana_lightning.jobs.evaluate")
    root, run, metrics = trained_run
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    cfg = compose(
        "eval",
        ["data=single_label", f"data.root={root}", f"ckpt_path={best}", "callbacks.rich_progress_bar=null"],
        output_dir=tmp_path / "eval",
    )
    m, objs = evaluate(cfg)
    assert objs["split"] == "test"
    assert m["test/mca"] == pytest.approx(metrics["test/mca"], abs=1e-6)
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "test_report.md").exists()
    said = caplog.records[-1].getMessage()  # the job's last line: the figure with its interval, and on what
    assert f"(split=test): test/mca {m['test/mca']:.3f} [{m['test/mca_ci95_low']:.3f}, " in said, said
    assert f"on {len(objs['datamodule'].splits['test'])} images" in said and "training split" not in said
    assert said.endswith(f"report: {tmp_path / 'eval' / 'test_report.md'}")
    cfg = compose(
        "eval",
        [
            "data=single_label",
            f"data.root={root}",
            f"ckpt_path={best}",
            "split=all",
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=tmp_path / "eval_all",
    )
    _, objs = evaluate(cfg)
    assert len(objs["datamodule"].splits["test"]) < 36
    rows = (tmp_path / "eval_all" / "test_predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 36
    said = caplog.records[-1].getMessage()  # the whole folder holds the run's training images: said so
    n_seen = int(
        json.loads((tmp_path / "eval_all" / "metrics.json").read_text())["test/images_in_training_split"]
    )
    assert n_seen > 0 and "on 36 images" in said
    assert (
        f", {n_seen} of them in the training split of the model's run: not a figure on unseen images" in said
    )


def test_eval_of_a_whole_folder_from_one_slide_is_not_refused_for_its_split(trained_run, tmp_path, caplog):
    """A lab's folder whose images nearly all come from one slide cannot be split by group: training on it
    is refused (one group holds most images). ``ana-eval split=all`` scores every image as one set, so it
    reads such a folder; it was refused with the training error before."""
    import shutil

    root, run, _ = trained_run
    lab = tmp_path / "lab"
    for k, cls in enumerate(("AC-1", "ac-2", "AC10")):
        for i, f in enumerate(sorted((root / cls).glob("*.png"))[:4]):
            slide = "slide_b" if (k, i) == (2, 3) else "slide_a"
            (lab / cls / slide).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, lab / cls / slide / f.name)
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    over = ["data=single_label", f"data.root={lab}", f"ckpt_path={best}", "callbacks.rich_progress_bar=null"]
    with caplog.at_level(logging.WARNING):
        metrics, objs = evaluate(compose("eval", [*over, "split=all"], output_dir=tmp_path / "all"))
    assert objs["split"] == "all" and "test/mca" in metrics
    assert len((tmp_path / "all" / "test_predictions.csv").read_text().strip().splitlines()) == 1 + 12
    assert "split(s) are empty" not in caplog.text
    with pytest.raises(DatasetError, match="One group, 'slide_a', holds 11 of the 12 images"):
        train(compose("train", tiny_train_overrides(lab, epochs=1), output_dir=tmp_path / "train"))


def test_eval_of_the_validation_split_names_its_figures_val(trained_run, tmp_path):
    """``split=val`` reads the cells the run chose its checkpoint on: its figures are ``val/*`` and its report
    ``val_*``, never ``test/*``, and they are the validation MCA the checkpoint was kept for."""
    root, run, _ = trained_run
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    cfg = compose(
        "eval",
        [
            "data=single_label",
            f"data.root={root}",
            f"ckpt_path={best}",
            "split=val",
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=tmp_path / "eval_val",
    )
    m, objs = evaluate(cfg)
    out = tmp_path / "eval_val"
    saved = json.loads((out / "metrics.json").read_text())
    assert objs["split"] == "val" and not [k for k in saved if k.startswith("test/")]
    assert {"val/mca", "val/acc", "val/mca_ci95_low", "val/images_in_training_split"} <= set(saved)
    assert saved["val/images_in_training_split"] == 0.0
    assert (out / "val_report.md").is_file() and (out / "val_predictions.csv").is_file()
    assert not list(out.glob("test_*"))
    kept_for = torch.load(best, map_location="cpu", weights_only=False)["callbacks"]
    score = next(v["best_model_score"] for k, v in kept_for.items() if k.startswith("ModelCheckpoint"))
    assert m["val/mca"] == pytest.approx(float(score), abs=1e-6)
    assert "split: val" in (out / "evaluated.txt").read_text()
    # what the test loop logged reaches the loggers under val/ too (csv/…/metrics.csv; a W&B run's charts)
    logged = next(out.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert "val/mca" in logged and not [k for k in logged if k.startswith("test/")]
    # and inside the process: what callbacks read during the loop, and what stays on the trainer after it
    inside = list(objs["trainer"].callback_metrics)
    assert "val/mca" in inside and not [k for k in inside if k.startswith("test/")], inside
    assert objs["model"].test_logged_as == "test"  # the model logs test/* again in a later test loop


class _ScriptedMetric(L.Callback):
    """Records the weights at each validation; the test module below scripts val/mca per epoch."""

    def __init__(self):
        self.weights = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


class _Scripted(SoftmaxClassifier):
    SCORES = [0.2, 0.9, 0.5, 0.3]

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("val/mca_scripted", self.SCORES[self.current_epoch])


def test_best_checkpoint_is_the_best_epoch_not_the_last(tiny_folder, tmp_path):
    """The reference repository saved the last weights as "best" (bug B1)."""
    from hydra.utils import instantiate

    from ana_lightning.pipeline import build_datamodule

    cfg = compose(
        "train",
        tiny_train_overrides(tiny_folder, epochs=4)
        + ["monitor=val/mca_scripted", "callbacks.early_stopping=null", "model.optimizer.lr=0.05"],
        output_dir=tmp_path / "run",
    )
    dm = build_datamodule(cfg)
    dm.setup()
    model = _Scripted(
        backbone=dict(cfg.model.backbone),
        class_names=dm.class_names,
        image_size=32,
        optimizer=instantiate(cfg.model.optimizer),
    )
    recorder = _ScriptedMetric()
    ckpt_cb = instantiate(cfg.callbacks.model_checkpoint)
    last_cb = instantiate(cfg.callbacks.last_checkpoint)
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[ckpt_cb, last_cb, recorder],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    assert Path(ckpt_cb.best_model_path).name == "best-epoch001.ckpt"
    best = torch.load(ckpt_cb.best_model_path, weights_only=False)["state_dict"]
    last = torch.load(Path(ckpt_cb.dirpath) / "last.ckpt", weights_only=False)["state_dict"]
    key = "net.fc.weight" if "net.fc.weight" in best else next(k for k in best if k.endswith("weight"))
    assert torch.equal(best[key], recorder.weights[1][key])
    assert not torch.equal(best[key], last[key])
    assert torch.equal(last[key], recorder.weights[3][key])


def test_resume_from_last(tiny_folder, tmp_path):
    run = tmp_path / "outputs" / "train" / "runs" / "a"
    cfg = compose("train", tiny_train_overrides(tiny_folder, epochs=2) + ["test=false"], output_dir=run)
    train(cfg)
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    run2 = tmp_path / "outputs" / "train" / "runs" / "b"
    cfg = compose("train", tiny_train_overrides(tiny_folder, epochs=3) + ["ckpt_path=last"], output_dir=run2)
    metrics, objs = train(cfg)
    assert objs["trainer"].current_epoch == 3  # resumed after epoch index 1, ran one more epoch
    # The resumed run continues in the interrupted run's folder.
    assert objs["run_dir"] == run
    assert torch.load(last, weights_only=False)["epoch"] == 2
    assert (run2 / "resumed_into.txt").exists() and not (run2 / "checkpoints").exists()
    assert "test/mca" in metrics and (run / "metrics.json").exists()


def test_truncated_checkpoint_is_a_clear_error(trained_run, tmp_path):
    _, run, _ = trained_run
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_checkpoint_model(bad)


def _card_and_retest(run: Path, kept: Path, overrides: list[str], metrics: dict, tmp_path: Path) -> str:
    """The model card exported from the run's kept checkpoint; then the finished run is resumed without its
    metrics.json and must test that same checkpoint (not a best-*.ckpt it never wrote, nor fresh weights)."""
    from ana_lightning.export import export_model

    card = export_model(
        kept, format="torchscript", output=tmp_path / "m.torchscript.pt"
    ).card_path.read_text()
    (run / "metrics.json").unlink()
    again, _ = train(
        compose("train", overrides + [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], output_dir=run)
    )
    assert again["test/mca"] == pytest.approx(metrics["test/mca"])
    assert again["test/loss"] == pytest.approx(metrics["test/loss"])  # the same weights, not untrained ones
    return card


def test_a_run_without_validation_split_keeps_the_last_epoch(tiny_folder, tmp_path, caplog):
    """data.split_fractions=[0.8,0,0.2]: the refit of a chosen recipe on every labelled group. No
    validation loop, no early stopping or epoch selection: the last epoch is kept, tested and named."""
    caplog.set_level("INFO", logger="ana_lightning.jobs.train")
    run = tmp_path / "run"
    overrides = tiny_train_overrides(tiny_folder, epochs=3) + ["data.split_fractions=[0.8,0,0.2]"]
    metrics, objs = train(compose("train", overrides, output_dir=run))
    dm, trainer = objs["datamodule"], objs["trainer"]
    assert not dm.splits["val"] and dm.splits["test"]
    assert not any("early" in type(cb).__name__.lower() for cb in trainer.callbacks)
    assert (
        "the validation split is empty" in caplog.text and "left out: callbacks.early_stopping" in caplog.text
    )
    assert not any(k.startswith("val/") for k in trainer.callback_metrics)  # no validation loop ran
    kept = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in kept] == ["final-epoch002.ckpt", "last.ckpt"]
    final = torch.load(kept[0], weights_only=False)
    assert final["epoch"] == 2 and torch.equal(
        next(iter(final["state_dict"].values())),
        next(iter(torch.load(kept[1], weights_only=False)["state_dict"].values())),
    )
    assert Path((run / "best_checkpoint.txt").read_text().strip()) == kept[0].resolve()
    assert "test/mca" in metrics and "val/temperature" not in metrics
    # the run ends with one line saying its figure, with its interval, on what, and where the report is
    n_test = len(dm.splits["test"])
    end = caplog.records[-1].getMessage()
    assert end.startswith(
        f"test/mca {metrics['test/mca']:.3f} [{metrics['test/mca_ci95_low']:.3f}, "
        f"{metrics['test/mca_ci95_high']:.3f}], test/acc {metrics['test/acc']:.3f} ["
    ), end
    assert f" on {n_test} images" in end and f"report: {run / 'test_report.md'}" in end
    assert end.endswith(f"model: {kept[0].resolve()}"), end
    assert "final-epoch" in (run / "config_resolved.yaml").read_text()
    card = _card_and_retest(run, kept[0], overrides, metrics, tmp_path)
    assert "**No validation split**" in card and "belong to" not in card


def test_keep_epoch_last_keeps_the_last_epoch_and_still_validates(tiny_folder, tmp_path):
    """keep_epoch=last (experiment=icpr2012_cells, round 12): with a validation split, the last epoch is
    kept, tested, named and exported; validation is still scored every epoch and calibrates it."""
    run = tmp_path / "run"
    overrides = tiny_train_overrides(tiny_folder, epochs=3) + ["keep_epoch=last", "logger=csv"]
    metrics, objs = train(compose("train", overrides, output_dir=run))
    assert objs["datamodule"].splits["val"] and "val/mca" in metrics
    # metrics.json still holds the best validation score over the epochs (ana-compare 'metrics=[val/mca_best]')
    with open(run / "csv" / "metrics.csv", newline="") as f:
        curve = [float(r["val/mca"]) for r in csv.DictReader(f) if r.get("val/mca")]
    assert len(curve) == 3
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["val/mca_best"] == pytest.approx(max(curve), abs=1e-6)
    # the fixed schedule's last epoch: early stopping would cut it at "best + patience"
    assert not any("early" in type(cb).__name__.lower() for cb in objs["trainer"].callbacks)
    kept = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in kept] == ["final-epoch002.ckpt", "last.ckpt"]
    assert torch.load(kept[0], weights_only=False)["epoch"] == 2
    assert Path((run / "best_checkpoint.txt").read_text().strip()) == kept[0].resolve()
    # calibrated on validation, as the best epoch would be
    assert "test/mca" in metrics and "val/temperature" in metrics
    card = _card_and_retest(run, kept[0], overrides, metrics, tmp_path)
    assert "**Last epoch kept**" in card and "No validation split" not in card
    with pytest.raises(ValueError, match="keep_epoch='newest'"):
        train(
            compose(
                "train", tiny_train_overrides(tiny_folder) + ["keep_epoch=newest"], output_dir=tmp_path / "x"
            )
        )
    assert not (tmp_path / "x").exists()  # refused before anything is written
    # a finished run kept under the other setting is re-tested on the checkpoint it kept, not on fresh weights
    (run / "metrics.json").unlink()
    best_run, _ = train(
        compose(
            "train",
            overrides[:-1] + ["keep_epoch=best", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
            output_dir=run,
        )
    )
    assert best_run["test/loss"] == pytest.approx(metrics["test/loss"])


def test_a_run_without_test_split_names_the_model_it_trained(tiny_folder, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_train_overrides(tiny_folder, epochs=2) + ["data.split_fractions=[1,0,0]"]
    metrics, _ = train(compose("train", overrides, output_dir=run))
    assert not any(k.startswith("test/") for k in metrics) and not (run / "metrics.json").exists()
    assert Path((run / "best_checkpoint.txt").read_text().strip()).name == "final-epoch001.ckpt"


def test_a_plateau_schedule_without_validation_split_is_a_clear_error(tiny_folder, tmp_path):
    overrides = tiny_train_overrides(tiny_folder) + [
        "data.split_fractions=[0.8,0,0.2]",
        "model.scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
    ]
    with pytest.raises(ValueError, match="ReduceLROnPlateau.*data.split_fractions"):
        train(compose("train", overrides, output_dir=tmp_path / "run"))


def test_best_of_monitor_tracks_the_best_validation_of_fit_only():
    """keep_epoch=last: BestOfMonitor gives val/mca_best, the best of fit's validation passes (not the
    sanity check, not trainer.validate), and carries it through a resume (its state)."""
    from types import SimpleNamespace

    from ana_lightning.jobs.train import BestOfMonitor

    def passes(cb, values, fn="fit", sanity=False):
        for v in values:
            t = SimpleNamespace(
                callback_metrics={"val/mca": torch.tensor(v)},
                sanity_checking=sanity,
                state=SimpleNamespace(fn=fn),
            )
            cb.on_validation_end(t, None)

    cb = BestOfMonitor("val/mca", "max")
    passes(cb, [0.99], sanity=True)  # the sanity check's score is not an epoch's
    passes(cb, [0.5, 0.8, 0.6, float("nan")])  # not monotone: the best is not the last
    passes(cb, [0.95], fn="validate")  # trainer.validate after fit (the temperature check)
    assert cb.best == pytest.approx(0.8)
    resumed = BestOfMonitor("val/mca", "max")
    resumed.load_state_dict(cb.state_dict())
    passes(resumed, [0.7])
    assert resumed.best == pytest.approx(0.8) and resumed.state_key == cb.state_key
    low = BestOfMonitor("val/mca", "min")
    passes(low, [0.5, 0.3, 0.4])
    assert low.best == pytest.approx(0.3)
    other = BestOfMonitor("val/loss", "min")
    passes(other, [0.5])
    assert other.best is None  # it watches val/loss, which these passes did not log
    with pytest.raises(ValueError, match="monitor_mode must be max or min, got 'up'"):
        BestOfMonitor("val/mca", "up")


def test_a_hyperparameter_search_on_val_without_a_validation_split_is_refused(monkeypatch):
    """A trial with no validation split would train in full and hand the sweeper nothing: refused first,
    naming the fix; a plain run without validation (experiment=i3a_cells) is not."""
    from omegaconf import OmegaConf

    from ana_lightning.jobs import train as train_mod

    cfg = OmegaConf.create(
        {"optimized_metric": "val/mca", "data": {"split_fractions": [0.8, 0, 0.2]}, "callbacks": {}}
    )
    sizes = {"train": 8, "val": 0, "test": 2}
    assert train_mod._without_validation(cfg, sizes).optimized_metric == "val/mca"  # not a sweep: runs
    monkeypatch.setattr(train_mod, "_sweeping_hyperparameters", lambda: True)
    with pytest.raises(ValueError, match=r"optimized_metric=val/mca.*split_fractions=\[0.6,0.2,0.2\]"):
        train_mod._without_validation(cfg, sizes)


@pytest.mark.parametrize("model", ["default", "cell_resnet10t", "siamese"])
def test_the_model_summary_counts_flops_on_an_input_of_the_datamodules_size(model, tiny_folder, tmp_path):
    """The summary at the start of a fit ran no input through the model, so it showed 0 FLOPs: the model now
    takes one blank image of data.image_size as its example input. A Siamese model, which scores against a
    support set embedded after training, keeps none (and still trains)."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    overrides = [o for o in tiny_train_overrides(tiny_folder) if "enable_model_summary" not in o]
    cfg = compose(
        "train",
        overrides + ["debug=fdr", f"model={model}", "trainer.enable_model_summary=true"],
        output_dir=tmp_path / "run",
    )
    _, objs = train(cfg)
    net = objs["model"]
    if model == "siamese":
        assert net.example_input_array is None
        return
    assert tuple(net.example_input_array.shape) == (1, 3, 32, 32)
    assert ModelSummary(net).total_flops > 0
