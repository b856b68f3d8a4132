"""Checkpoints are loaded with ``weights_only=True`` by every command: a file with a ``__reduce__``
payload is refused (naming the file) and its code never runs, unless ``trust_checkpoint=true``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ana_lightning.utils import CheckpointError, UnsafeCheckpointError, load_checkpoint_model, read_checkpoint

from conftest import compose, tiny_train_overrides


class _Payload:
    """Unpickling this writes ``marker``: proof that code in the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def malicious(trained_checkpoint, tmp_path) -> tuple[Path, Path, Path]:
    """A real, working checkpoint of the trained run with a code-running object in its hyperparameters,
    saved inside a copy of the run folder (so commands find its split manifest):
    ``(data root, checkpoint, marker file)``."""
    root, run, best = trained_checkpoint
    run2 = tmp_path / "runs" / "evil_run"
    (run2 / "checkpoints").mkdir(parents=True)
    for name in ("split_manifest.csv", "config_resolved.yaml"):
        (run2 / name).write_bytes((run / name).read_bytes())
    marker = tmp_path / "PWNED"
    ckpt = torch.load(best, weights_only=True)
    ckpt["hyper_parameters"]["note"] = _Payload(marker)
    path = run2 / "checkpoints" / "best-epoch001.ckpt"
    torch.save(ckpt, path)
    assert not marker.exists()
    return root, path, marker


def _refused(marker: Path, path: Path, excinfo: pytest.ExceptionInfo) -> None:
    assert isinstance(excinfo.value, UnsafeCheckpointError)
    assert str(path) in str(excinfo.value) and "trust_checkpoint=true" in str(excinfo.value)
    assert "builtins.exec" in str(excinfo.value)  # what the file asked for
    assert not marker.exists(), "the checkpoint's code ran"


def test_plain_checkpoints_load_weights_only(trained_checkpoint):
    _, _, best = trained_checkpoint
    torch.load(best, weights_only=True)  # what ana-lightning writes needs no allow-list at all
    assert load_checkpoint_model(best).class_names == ["AC-1", "AC-2", "AC-10"]


def test_old_checkpoint_with_omegaconf_hparams_still_loads(trained_checkpoint, tmp_path):
    from omegaconf import OmegaConf

    _, _, best = trained_checkpoint
    ckpt = torch.load(best, weights_only=True)
    ckpt["hyper_parameters"]["backbone"] = OmegaConf.create(ckpt["hyper_parameters"]["backbone"])
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert read_checkpoint(old)["hyper_parameters"]["backbone"]["name"] == "test_resnet"
    assert load_checkpoint_model(old).class_names == ["AC-1", "AC-2", "AC-10"]


def test_library_loader_refuses(malicious):
    _, path, marker = malicious
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_model(path)
    _refused(marker, path, e)


def test_ana_eval_refuses(malicious, tmp_path):
    from ana_lightning.pipeline import evaluate

    root, path, marker = malicious
    cfg = compose(
        "eval", ["data=single_label", f"data.root={root}", f"ckpt_path={path}"], output_dir=tmp_path / "e"
    )
    with pytest.raises(UnsafeCheckpointError) as e:
        evaluate(cfg)
    _refused(marker, path, e)


def test_ensemble_refuses_any_member(malicious, trained_checkpoint, tmp_path):
    from ana_lightning.pipeline import evaluate

    root, path, marker = malicious
    good = trained_checkpoint[2]
    cfg = compose(
        "eval",
        ["data=single_label", f"data.root={root}", "ckpt_path=null", f"ensemble.members=[{good},{path}]"],
        output_dir=tmp_path / "e",
    )
    with pytest.raises(UnsafeCheckpointError) as e:
        evaluate(cfg)
    _refused(marker, path, e)


def test_eval_hierarchy_refuses(malicious, tmp_path):
    from ana_lightning.hierarchy_jobs import evaluate_hierarchy

    _, path, marker = malicious
    cfg = compose("eval_hierarchy", [f"pipeline.multihead={path}"], output_dir=tmp_path / "h")
    with pytest.raises(UnsafeCheckpointError) as e:
        evaluate_hierarchy(cfg)
    _refused(marker, path, e)


def test_eval_episodes_refuses(malicious, tmp_path):
    from ana_lightning.episodes import evaluate_episodes_job

    root, path, marker = malicious
    cfg = compose(
        "eval_episodes",
        ["data=single_label", f"data.root={root}", f"ckpt_path={path}"],
        output_dir=tmp_path / "ep",
    )
    with pytest.raises(UnsafeCheckpointError) as e:
        evaluate_episodes_job(cfg)
    _refused(marker, path, e)


def test_svm_baseline_refuses(malicious):
    from ana_lightning.baselines import FrozenCNNFeatures

    _, path, marker = malicious
    with pytest.raises(UnsafeCheckpointError) as e:
        FrozenCNNFeatures.from_checkpoint(path)
    _refused(marker, path, e)


def test_resume_refuses(malicious, tmp_path):
    from ana_lightning.pipeline import train

    root, path, marker = malicious
    cfg = compose(
        "train",
        tiny_train_overrides(root, epochs=3) + [f"ckpt_path={path}"],
        output_dir=tmp_path / "runs" / "r",
    )
    with pytest.raises(UnsafeCheckpointError) as e:
        train(cfg)
    _refused(marker, path, e)
    assert "ckpt_path=" in str(e.value)


@pytest.mark.parametrize("command", ["predict", "export", "app"])
def test_predict_export_app_refuse(malicious, tmp_path, command):
    from ana_lightning.app import run_app
    from ana_lightning.export import run_export
    from ana_lightning.predict import run_predict

    root, path, marker = malicious
    extra = {"predict": [f"input={root}"], "export": [], "app": []}[command]
    cfg = compose(command, [f"ckpt_path={path}", *extra], output_dir=tmp_path / command)
    job = {"predict": run_predict, "export": run_export, "app": run_app}[command]
    with pytest.raises(UnsafeCheckpointError) as e:
        job(cfg)
    _refused(marker, path, e)


def test_opt_in_loads_with_a_warning_naming_the_file(malicious, tmp_path, caplog):
    from ana_lightning.predict import run_predict

    root, path, marker = malicious
    cfg = compose(
        "predict",
        [f"ckpt_path={path}", f"input={root}", "trust_checkpoint=true", "progress=false"],
        output_dir=tmp_path / "p",
    )
    with caplog.at_level(logging.WARNING):
        summary = run_predict(cfg)
    assert summary.n_images == 36 and summary.n_failed == 0
    assert marker.exists()  # the opt-in really unpickles in full: that is why it is an opt-in
    assert any(
        str(path) in r.getMessage() and "trust_checkpoint=true" in r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
    )


def test_text_file_as_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.ckpt.*not a readable checkpoint"):
        load_checkpoint_model(bad)


def test_app_warns_loudly_on_every_interface(caplog):
    from ana_lightning.app import warn_if_exposed

    with caplog.at_level(logging.WARNING):
        assert warn_if_exposed("0.0.0.0", 7860)
    msg = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert (
        "WARNING" in msg
        and "0.0.0.0" in msg
        and "every network interface" in msg
        and "NO authentication" in msg
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not warn_if_exposed("127.0.0.1", 7860)
        assert not warn_if_exposed("localhost", 7860)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_load_model_reads_the_file_once_and_matches_lightnings_loader(trained_checkpoint, monkeypatch):
    from ana_lightning.predict import load_model
    from ana_lightning.utils import checkpoint_class

    _, _, best = trained_checkpoint
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    model, meta = load_model(best)
    assert reads == [str(best)], f"the checkpoint was read {len(reads)} times: {reads}"
    monkeypatch.setattr(torch, "load", real_load)
    assert not model.training and meta["class_path"].endswith(type(model).__name__)
    cls = checkpoint_class(best, torch.load(best, weights_only=True))
    ref = cls.load_from_checkpoint(str(best), map_location="cpu", weights_only=True)
    mine, theirs = model.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert model.hparams == ref.hparams
