"""Sigmoid ensemble: combining members, ensembles from checkpoints, training, thresholds, ana-eval."""

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from ana_lightning.models.classifier import SoftmaxClassifier
from ana_lightning.models.multilabel import (
    AverageEnsemble,
    SigmoidEnsemble,
    decide,
    ensemble_from_checkpoints,
    tune_thresholds,
)
from ana_lightning.pipeline import evaluate, train
from ana_lightning.utils import CheckpointError, load_checkpoint_model

from conftest import TINY_BACKBONE, compose, write_class_images

CODES = ["AC-1", "AC-3", "AC-5", "AC-8"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny networks on a small shared CPU: one thread (OpenMP oversubscription costs 100x); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _save(model: L.LightningModule, path: Path) -> Path:
    """A real Lightning checkpoint of an untrained model (no training needed for equality tests)."""
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def _net(k: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, k))


def test_average_ensemble_combines_logits_or_probabilities():
    a, b = _net(3, 0), _net(3, 1)
    x = torch.randn(5, 3, 4, 4)
    za, zb = a(x), b(x)
    torch.testing.assert_close(AverageEnsemble([a, b], "logits")(x), (za + zb) / 2)
    torch.testing.assert_close(
        AverageEnsemble([a, b], "probs")(x).sigmoid(), (za.sigmoid() + zb.sigmoid()) / 2
    )
    torch.testing.assert_close(
        AverageEnsemble([a, b], "probs", "softmax")(x).softmax(-1), (za.softmax(-1) + zb.softmax(-1)) / 2
    )
    # a member trained with another normalisation sees the input in its own normalisation
    n0, n1 = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ens = AverageEnsemble([a, b], "logits", norms=[n0, n1], input_norm=n0)
    raw = x * 0.25 + 0.5
    mean1, std1 = torch.tensor(n1[0]).view(1, 3, 1, 1), torch.tensor(n1[1]).view(1, 3, 1, 1)
    torch.testing.assert_close(ens(x), (za + b((raw - mean1) / std1)) / 2)


def _sigmoid_member(backbone: str, seed: int, **kw) -> SigmoidEnsemble:
    torch.manual_seed(seed)
    return SigmoidEnsemble(class_names=CODES, backbones=[{"name": backbone}], image_size=32, **kw).eval()


def test_ensemble_from_two_checkpoints_equals_the_average_of_its_members(tmp_path):
    pa = _save(_sigmoid_member(TINY_BACKBONE, 0), tmp_path / "a.ckpt")
    pb = _save(_sigmoid_member("test_efficientnet", 1), tmp_path / "b.ckpt")
    a, b = load_checkpoint_model(pa), load_checkpoint_model(pb)
    x = torch.randn(
        4, 3, 32, 32
    )  # normalised for the first member; the second was trained with other mean/std
    assert a.hparams.mean != b.hparams.mean
    raw = x * torch.tensor(a.hparams.std).view(1, 3, 1, 1) + torch.tensor(a.hparams.mean).view(1, 3, 1, 1)
    xb = (raw - torch.tensor(b.hparams.mean).view(1, 3, 1, 1)) / torch.tensor(b.hparams.std).view(1, 3, 1, 1)
    probs = ensemble_from_checkpoints([pa, pb], combine="probs")
    torch.testing.assert_close(probs.predict_proba(x), (a.predict_proba(x) + b.predict_proba(xb)) / 2)
    logits = ensemble_from_checkpoints([pa, pb], combine="logits")
    torch.testing.assert_close(logits(x), (a(x) + b(xb)) / 2)
    ref = ensemble_from_checkpoints([pa, pb], decision_rule="reference_repo")
    p = ref.predict_proba(x)
    assert torch.equal(ref.predict(x), decide(p, 0.3, top1_fallback=True))
    # the same mechanism averages single-label softmax checkpoints' probabilities
    torch.manual_seed(2)
    sa = _save(
        SoftmaxClassifier(backbone={"name": TINY_BACKBONE}, class_names=CODES, image_size=32),
        tmp_path / "sa.ckpt",
    )
    torch.manual_seed(3)
    sb = _save(
        SoftmaxClassifier(backbone={"name": TINY_BACKBONE}, class_names=CODES, image_size=32),
        tmp_path / "sb.ckpt",
    )
    ma, mb = load_checkpoint_model(sa), load_checkpoint_model(sb)
    soft = ensemble_from_checkpoints([sa, sb])
    assert isinstance(soft, SoftmaxClassifier)
    torch.testing.assert_close(soft.predict_proba(x), (ma.predict_proba(x) + mb.predict_proba(x)) / 2)
    with pytest.raises(CheckpointError, match="different tasks"):
        ensemble_from_checkpoints([pa, sa])
    torch.manual_seed(4)
    other = _save(
        SigmoidEnsemble(class_names=CODES[:3], backbones=[{"name": TINY_BACKBONE}], image_size=32),
        tmp_path / "c.ckpt",
    )
    with pytest.raises(CheckpointError, match="members must share classes"):
        ensemble_from_checkpoints([pa, other])


def test_thresholds_are_stored_in_the_checkpoint(tmp_path):
    m = _sigmoid_member(TINY_BACKBONE, 0, decision_rule="per_class")
    m.thresholds.copy_(torch.tensor([0.2, 0.4, 0.6, 0.8]))
    back = load_checkpoint_model(_save(m, tmp_path / "t.ckpt"))
    assert back.thresholds.tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8])
    meta = torch.load(tmp_path / "t.ckpt", weights_only=False)["ana_lightning"]
    assert (
        meta["task"] == "multi_label"
        and meta["decision_rule"] == "per_class"
        and meta["thresholds"][3] == 0.8
    )


def _tiny_experiment(cache: Path, epochs: int) -> list[str]:
    return [
        "experiment=mixed_ensemble",
        f"data.cache_dir={cache}",
        f"data.synthetic_codes=[{','.join(CODES)}]",
        "data.n_per_class=8",
        "data.n_hospital=60",
        "data.n_patients=15",
        "data.render_size=32",
        "data.image_size=32",
        "data.batch_size=8",
        f"trainer.max_epochs={epochs}",
        "+trainer.enable_model_summary=false",
        "callbacks.rich_progress_bar=null",
    ]


def test_fast_dev_run_mixed_ensemble(tmp_path):
    cfg = compose(
        "train", _tiny_experiment(tmp_path / "cache", 1) + ["debug=fdr"], output_dir=tmp_path / "run"
    )
    assert [b.name for b in cfg.model.backbones] == ["test_resnet", "test_efficientnet"]
    metrics, objs = train(cfg)
    assert isinstance(objs["model"], SigmoidEnsemble) and len(objs["model"].net.members) == 2
    # the logged metrics are scikit-learn's on the predictions the model made on that test batch
    from sklearn import metrics as skm

    pred, tgt = (objs["model"].test_predictions[k].numpy().astype(int) for k in ("pred", "target"))
    present = np.flatnonzero(tgt.sum(0) > 0)
    assert metrics["test/exact_match"] == pytest.approx(skm.accuracy_score(tgt, pred), abs=1e-6)
    assert metrics["test/hamming_loss"] == pytest.approx(skm.hamming_loss(tgt, pred), abs=1e-6)
    assert metrics["test/micro_f1"] == pytest.approx(
        skm.f1_score(tgt, pred, average="micro", zero_division=0), abs=1e-6
    )
    assert metrics["test/macro_f1"] == pytest.approx(
        skm.f1_score(tgt, pred, labels=present, average="macro", zero_division=0), abs=1e-6
    )
    assert metrics["test/mca"] == pytest.approx(
        skm.recall_score(tgt, pred, labels=present, average="macro"), abs=1e-6
    )


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixed_run")
    run = base / "runs" / "r1"
    cfg = compose(
        "train", _tiny_experiment(base / "cache", 3) + ["callbacks.early_stopping=null"], output_dir=run
    )
    metrics, objs = train(cfg)
    return run, metrics, objs


def test_run_folder_report(mixed_run):
    run, metrics, objs = mixed_run
    saved = json.loads((run / "metrics.json").read_text())
    for key in (
        "test/exact_match",
        "test/hamming_loss",
        "test/micro_f1",
        "test/macro_f1",
        "test/weighted_f1",
        "test/mean_ap",
        "test/off_by_0",
        "test/at_least_1_correct",
        "test/label_cardinality_pred",
        "test/loss",
    ):
        assert key in saved, key
    assert saved["test/off_by_0"] == pytest.approx(saved["test/exact_match"])
    for name in (
        "test_report.md",
        "test_per_class.csv",
        "test_predictions.csv",
        "test_per_class_f1.png",
        "test_off_by_n.png",
        "test_pr_curves.png",
        "test_error_cooccurrence.png",
        "split_manifest.csv",
    ):
        assert (run / name).exists(), name
    md = (run / "test_report.md").read_text()
    assert "per-class thresholds tuned on the validation split" in md and "## Off-by-N errors" in md
    # the report's predictions are the ones the metrics were computed from
    rows = list(csv.DictReader(open(run / "test_predictions.csv")))
    assert len(rows) == len(objs["datamodule"].splits["test"])
    exact = np.mean([r["true"] == r["pred"] for r in rows])
    assert exact == pytest.approx(saved["test/exact_match"])


def test_thresholds_tuned_on_validation_never_on_test(mixed_run):
    run, _, objs = mixed_run
    dm, model = objs["datamodule"], objs["model"]
    best = Path((run / "best_checkpoint.txt").read_text().strip())
    stored = load_checkpoint_model(best)
    # the model was tested with the checkpoint's thresholds, unchanged by the test
    assert torch.equal(model.thresholds.cpu(), stored.thresholds)
    # … and they are the F1-maximising thresholds of that checkpoint on the validation split (tuned on its
    # raw probabilities, then moved with the temperature fitted after training, which keeps every decision)
    raw = load_checkpoint_model(best)
    temperature = raw.temperature.clone()
    raw.set_temperature(None)
    prob, tgt = raw.predict_dataset(dm.make_dataset(dm.splits["val"], train=False))
    tuned = tune_thresholds(prob, tgt, 0.5)
    assert stored.is_calibrated
    torch.testing.assert_close(
        stored.thresholds, torch.sigmoid(torch.logit(tuned.double()) / temperature.double()).float()
    )
    # the test decisions are those thresholds applied to the test probabilities
    test_prob, _ = stored.predict_dataset(dm.make_dataset(dm.splits["test"], train=False))
    assert model.test_predictions["index"].tolist() == list(range(len(test_prob)))
    assert torch.equal(model.test_predictions["pred"], decide(test_prob, stored.thresholds))


def test_eval_on_hospital_folder_uses_the_hospital_test_split(mixed_run, tmp_path):
    run, metrics, objs = mixed_run
    dm = objs["datamodule"]
    best = (run / "best_checkpoint.txt").read_text().strip()
    cfg = compose(
        "eval",
        [
            f"ckpt_path={best}",
            "data=hospital",
            f"data.hospital_root={dm.hospital_root}",
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=tmp_path / "eval",
    )
    m, eobjs = evaluate(cfg)
    assert eobjs["split"] == "test"
    hosp_test = {r.sha256 for r in dm.splits["test"] if r.path in dm._hospital_paths}
    assert {r.sha256 for r in eobjs["datamodule"].splits["test"]} == hosp_test  # no training image evaluated
    assert (tmp_path / "eval" / "test_report.md").exists() and "test/micro_f1" in m


def test_eval_ensemble_of_checkpoints_tunes_on_val_only(mixed_run, tmp_path):
    run, _, objs = mixed_run
    best = (run / "best_checkpoint.txt").read_text().strip()
    last = str(run / "checkpoints" / "last.ckpt")
    over = [
        "data=mixed",
        f"data.cache_dir={objs['datamodule'].single_root.parent}",
        f"data.synthetic_codes=[{','.join(CODES)}]",
        "data.n_per_class=8",
        "data.n_hospital=60",
        "data.n_patients=15",
        "data.render_size=32",
        f"ensemble.members=[{best},{last}]",
        "ensemble.decision_rule=per_class",
        "callbacks.rich_progress_bar=null",
    ]
    m, eobjs = evaluate(compose("eval", over, output_dir=tmp_path / "ens"))
    model, dm = eobjs["model"], eobjs["datamodule"]
    assert eobjs["split"] == "test" and model.assembled_from == [best, last]
    prob, tgt = model.predict_dataset(dm.make_dataset(dm.splits["val"], train=False))
    assert torch.equal(model.thresholds.cpu(), tune_thresholds(prob, tgt, 0.5))
    assert "ensemble of 2 checkpoints" in (tmp_path / "ens" / "test_report.md").read_text()
    with pytest.raises(ValueError, match="part of the evaluated split=all"):
        evaluate(compose("eval", over + ["split=all"], output_dir=tmp_path / "ens_all"))


def test_eval_single_label_softmax_ensemble(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 6, "AC-3": 6})
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = SoftmaxClassifier(backbone={"name": TINY_BACKBONE}, class_names=["AC-1", "AC-3"], image_size=32)
        paths.append(str(_save(m, tmp_path / f"s{seed}.ckpt")))
    cfg = compose(
        "eval",
        [
            "data=single_label",
            f"data.root={root}",
            f"ensemble.members=[{paths[0]},{paths[1]}]",
            "callbacks.rich_progress_bar=null",
        ],
        output_dir=tmp_path / "ev",
    )
    m, objs = evaluate(cfg)
    assert objs["split"] == "all" and "test/mca" in m
    rows = list(csv.DictReader(open(tmp_path / "ev" / "test_predictions.csv")))
    members = [load_checkpoint_model(p) for p in paths]
    ds = objs["datamodule"].make_dataset(
        [r for s in ("train", "val", "test") for r in objs["datamodule"].splits[s]]
    )
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    want = sum(mm.predict_proba(x) for mm in members) / 2
    got = torch.tensor([[float(r["p_AC-1"]), float(r["p_AC-3"])] for r in rows])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
