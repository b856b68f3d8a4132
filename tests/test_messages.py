"""Mistakes a new user makes get a message naming the key or file, not a Python traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ana_lightning.data.records import DatasetError, read_single_label_folder
from ana_lightning.pipeline import train
from ana_lightning.taxonomy import Taxonomy
from ana_lightning.utils import CheckpointError

from conftest import compose, tiny_train_overrides, write_class_images


def test_hospital_data_with_the_softmax_model_says_which_model(tmp_path):
    root = tmp_path / "export"
    for patient, code in [(f"p{i}", "AC-1" if i % 2 else "AC-4") for i in range(8)]:
        write_class_images(root / patient, {code: 3}, size=24, seed=int(patient[1:]))
    overrides = tiny_train_overrides(root)[2:] + [
        "data=hospital",
        f"data.hospital_root={root}",
        "data.near_duplicates=false",
    ]
    with pytest.raises(ValueError, match=r"multi-label.*single-label softmax.*model=sigmoid_ensemble"):
        train(compose("train", overrides, output_dir=tmp_path / "run"))


def test_resume_with_another_architecture_names_the_file(trained_checkpoint, tmp_path):
    root, _, best = trained_checkpoint
    cfg = compose(
        "train",
        tiny_train_overrides(root) + [f"ckpt_path={best}", "model.backbone.name=test_efficientnet"],
        output_dir=tmp_path / "runs" / "r",
    )
    with pytest.raises(CheckpointError, match=rf"{best}.*another model.*backbone"):
        train(cfg)


def test_negative_learning_rate_stops_before_anything_is_written(tiny_folder, tmp_path):
    run = tmp_path / "run"
    cfg = compose("train", tiny_train_overrides(tiny_folder) + ["model.optimizer.lr=-0.1"], output_dir=run)
    with pytest.raises(ValueError, match=r"model.optimizer.lr=-0.1: must be positive"):
        train(cfg)
    assert not (run / "split_manifest.csv").exists()


def test_non_ascii_data_root_is_accepted_on_the_command_line(tmp_path):
    exe = Path(sys.executable).parent / "ana-train"
    if not exe.is_file():
        pytest.skip("the ana-train console script is not installed beside this Python")
    out = subprocess.run(
        [str(exe), "--cfg", "job", "data=single_label", "data.root=/data/Größe/Bilder"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "/data/Größe/Bilder" in out.stdout


def test_code_outside_the_tree_in_a_hospital_folder_is_one_line(tmp_path):
    from ana_lightning.data.hospital import read_hospital_folder

    root = tmp_path / "export"
    write_class_images(root / "p1", {"AC-1": 3, "AC-99": 6}, size=16)
    with pytest.raises(DatasetError) as e:
        read_hospital_folder(root, Taxonomy.load())
    lines = [line for line in str(e.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == 1  # not one line per image
    assert "AC-99" in lines[0] and "not a code of the ICAP tree" in lines[0] and "6 image(s)" in lines[0]


@pytest.mark.parametrize("kind", ["dangling", "looping"])
def test_broken_symlinks_are_reported_like_bad_files(tmp_path, kind):
    root = write_class_images(tmp_path / "d", {"AC-1": 3, "AC-2": 3}, size=16)
    link = root / "AC-1" / "broken.jpg"
    os.symlink(tmp_path / "nowhere.jpg" if kind == "dangling" else link, link)
    with pytest.raises(DatasetError, match=r"broken\.jpg: cannot read file"):
        read_single_label_folder(root, Taxonomy.load())
    records, bad = read_single_label_folder(root, Taxonomy.load(), on_bad_file="skip")
    assert len(records) == 6 and [Path(b.path).name for b in bad] == ["broken.jpg"]


def test_predict_reports_a_broken_symlink_and_refuses_to_overwrite(trained_checkpoint, tmp_path):
    from ana_lightning.predict import run_predict

    root, _, best = trained_checkpoint
    images = write_class_images(tmp_path / "in", {"x": 2}, size=24)
    os.symlink(tmp_path / "nowhere.png", images / "x" / "gone.png")
    out = tmp_path / "preds.csv"
    summary = run_predict(
        compose(
            "predict",
            [f"ckpt_path={best}", f"input={images}", f"output={out}", "progress=false"],
            output_dir=tmp_path / "p1",
        )
    )
    assert summary.n_images == 3 and summary.n_failed == 1
    assert "gone.png" in out.read_text() and "cannot read file" in out.read_text()
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match=r"preds.csv.*already exist.*overwrite=true"):
        run_predict(
            compose(
                "predict",
                [f"ckpt_path={best}", f"input={images}", f"output={out}", "progress=false"],
                output_dir=tmp_path / "p2",
            )
        )
    assert out.read_bytes() == before  # untouched
    run_predict(
        compose(
            "predict",
            [f"ckpt_path={best}", f"input={images}", f"output={out}", "progress=false", "overwrite=true"],
            output_dir=tmp_path / "p3",
        )
    )


def test_export_into_a_read_only_folder_names_it(trained_checkpoint, tmp_path, monkeypatch):
    from ana_lightning.export import ExportError, export_model

    _, _, best = trained_checkpoint
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # the tests run as root, which may write anywhere: the folder is made unwritable for the check
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    with pytest.raises(ExportError, match=rf"{locked} is not writable"):
        export_model(best, "onnx", output=locked)


def _console(name: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / name
    if not exe.is_file():
        pytest.skip(f"the {name} console script is not installed beside this Python")
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | env
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd, env=environ, timeout=300
    )


def test_a_command_given_a_missing_folder_prints_the_message_not_a_traceback(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    missing = tmp_path / "no such folder"
    args = ["experiment=i3a_cells", f"data.root={missing}", "trainer.max_epochs=1"]
    runs = [(args, {}), (args, {"HYDRA_FULL_ERROR": "1"}), (["data=single_label"], {})]
    with ThreadPoolExecutor(len(runs)) as pool:  # three commands at once: each mostly imports torch
        out, full, unset = pool.map(lambda r: _console("ana-train", r[0], tmp_path, **r[1]), runs)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"FileNotFoundError: dataset folder {missing} does not exist" in out.stderr
    assert "HYDRA_FULL_ERROR=1" in out.stderr
    # the traceback is one variable away, for a bug report
    assert full.returncode == 1 and "Traceback" in full.stderr and "read_i3a2014" in full.stderr
    assert unset.returncode == 1 and "Traceback" not in unset.stderr, unset.stderr[-3000:]
    assert "data.root is not set: give it on the command line, e.g. data.root=<value>" in unset.stderr


_FAKE_MODULE = """
import os


def deliberate(x):
    if x < 0:
        raise ValueError(
            f"x={x}: must not be negative"
        )


def accidental(text):
    return int(text)


def rethrown(text):
    try:
        return int(text)
    except ValueError as err:
        raise err


def opens(path):
    with open(path) as f:
        return f.read()
"""


def test_only_errors_raised_on_purpose_lose_their_traceback(tmp_path, monkeypatch):
    import importlib.util

    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from ana_lightning.cli.errors import UserError, is_user_error, user_errors

    path = tmp_path / "fakepkg_mod.py"
    path.write_text(_FAKE_MODULE)
    spec = importlib.util.spec_from_file_location("fakepkg.mod", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def caught(fn, *args):
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            return err
        raise AssertionError("no error")

    assert is_user_error(caught(mod.deliberate, -1), package="fakepkg")
    assert not is_user_error(caught(mod.deliberate, -1), package="otherpkg")  # raised outside the package
    assert not is_user_error(caught(mod.accidental, "x"), package="fakepkg")  # a line of ours ran into it
    assert not is_user_error(caught(mod.rethrown, "x"), package="fakepkg")
    assert is_user_error(caught(mod.opens, tmp_path / "missing.csv"), package="fakepkg")  # names the file
    assert not is_user_error(caught(lambda: {}["key"]), package="fakepkg")
    missing = caught(lambda: OmegaConf.create({"a": "???"}).a)
    assert isinstance(missing, MissingMandatoryValue) and is_user_error(missing)

    # the command's wrapper: a bug keeps its type and traceback; a user error becomes one message
    with pytest.raises(ValueError, match="invalid literal"):
        user_errors(mod.accidental)("x")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(UserError, match=r"^FileNotFoundError: .*missing\.csv") as e:
        user_errors(mod.opens)(tmp_path / "missing.csv")
    assert isinstance(e.value.__cause__, FileNotFoundError)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(FileNotFoundError):
        user_errors(mod.opens)(tmp_path / "missing.csv")


def test_messages_name_the_first_few_files_then_how_many_more():
    from ana_lightning.data.images import first_few

    assert first_few(["a.png", "b.png", "c.png", "d.png"], 2) == "a.png, b.png and 2 more"
    assert first_few([Path("x/a.png")], 3, "; ") == "x/a.png"
    assert first_few(["p", "q", "r"], 3, "; ") == "p; q; r"


def test_a_key_the_command_lacks_gets_a_hint_with_the_key_it_likely_meant(monkeypatch, capsys):
    """Hydra refuses an unknown key with "Could not override 'model'" and suggests adding it (+model=…), which
    would run with the key ignored; after its message, each command names the keys it likely meant."""
    from ana_lightning.cli.errors import unknown_key_hints
    from ana_lightning.cli.predict import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr("sys.argv", ["ana-predict", "model=/models/best.ckpt", "input=fields", "tta=false"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "Could not override 'model'" in err  # Hydra's message first, then the hint
    assert "hint: ana-predict has no key model: did you mean ckpt_path" in err
    assert "input" not in err.split("hint:")[1]  # a mandatory key (input: ???) is a key it has

    # nested keys, keys a group choice brings, the same key deeper down; nothing for keys that exist
    (hint,) = unknown_key_hints("train", ["trainer.max_epoch=3", "data.root=x"])
    assert "no key trainer.max_epoch: did you mean trainer.max_epochs" in hint
    assert unknown_key_hints("train", ["data=hierarchy", "data.level=2", "+mine=1"]) == []
    # without data=hierarchy the key is not there
    assert "no key data.level" in unknown_key_hints("train", ["data.level=2"])[0]
    assert "did you mean model.optimizer.lr" in unknown_key_hints("train", ["lr=0.1"])[0]
    # a wrong group option is Hydra's to explain; the other keys are still checked
    (hint,) = unknown_key_hints("train", ["model=nonexistent", "trainer.max_epoch=3"])
    assert "trainer.max_epoch" in hint
