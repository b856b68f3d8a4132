"""ana-predict: the Predictor, the CSV/JSON it writes, bad files, checkpoint loading, decision rules."""

from __future__ import annotations

import argparse
import csv
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ana_lightning import predict as predict_mod
from ana_lightning.models.classifier import SoftmaxClassifier
from ana_lightning.predict import (
    ModelInfo,
    Predictor,
    list_inputs,
    prediction_columns,
    run_predict,
)
from ana_lightning.taxonomy import Taxonomy
from ana_lightning.utils import CheckpointError

from conftest import TINY_BACKBONE, compose


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A few hundred bytes claiming ``width × height`` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def input_folder(trained_checkpoint, tmp_path_factory) -> tuple[Path, list[Path], dict[str, str]]:
    """The 36 training images in nested folders, plus bad files and their expected reasons."""
    import shutil

    root, _, _ = trained_checkpoint
    inp = tmp_path_factory.mktemp("inputs")
    good = []
    for f in sorted(root.rglob("*.png")):
        dest = inp / "slides" / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
        good.append(dest)
    data = good[0].read_bytes()
    (inp / "truncated.png").write_bytes(data[: len(data) // 2])
    (inp / "not_an_image.png").write_text("these are notes, not pixels\n")
    (inp / "empty.jpg").write_bytes(b"")
    _png_header_only(inp / "bomb.png", 40_000, 40_000)
    (inp / "README.txt").write_text("ignored: no image extension\n")
    (inp / ".hidden.png").write_bytes(data)
    bad = {
        "truncated.png": "truncated",
        "not_an_image.png": "not an image",
        "empty.jpg": "empty",
        "bomb.png": "pixels",
    }
    return inp, good, bad


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_list_inputs_takes_image_files_only(input_folder):
    inp, good, bad = input_folder
    files = list_inputs(inp)
    assert sorted(files) == sorted(good + [inp / n for n in bad])
    assert list_inputs(good[0]) == [good[0]]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_inputs(inp / "nowhere")


def test_microscope_files_are_named_with_how_to_export_them(tmp_path, caplog):
    """A folder of a microscope's own files (Zeiss CZI, Nikon ND2, …) is not silently empty: ana-predict names
    them and says to export them as TIFF, and a training folder lists them as bad files saying the same."""
    import logging

    from PIL import Image

    from ana_lightning.data.records import read_single_label_folder
    from ana_lightning.taxonomy import Taxonomy

    (tmp_path / "in").mkdir()
    for name in ("a.czi", "b.ND2", "notes.txt"):
        (tmp_path / "in" / name).write_bytes(b"\x00" * 64)
    with pytest.raises(FileNotFoundError, match=r"2 microscope file\(s\) \(Nikon ND2, Zeiss CZI.*OME-TIFF"):
        list_inputs(tmp_path / "in")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "c.png")
    with caplog.at_level(logging.INFO, logger="ana_lightning.predict.io"):
        assert list_inputs(tmp_path / "in") == [tmp_path / "in" / "c.png"]
    said = {r.levelname: r.getMessage() for r in caplog.records}
    assert (
        "2 microscope file(s)" in said["WARNING"] and "1 file(s) without an image extension" in said["INFO"]
    )
    (tmp_path / "ds" / "AC-1").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ds" / "AC-1" / "c.png")
    (tmp_path / "ds" / "AC-1" / "slide.lif").write_bytes(b"\x00" * 64)
    _, bad = read_single_label_folder(tmp_path / "ds", Taxonomy.load(), on_bad_file="skip")
    assert [b.reason for b in bad] == [
        "a Leica LIF microscope file, not read here: export it as TIFF, e.g. in Fiji with Bio-Formats "
        "(File > Save As > OME-TIFF keeps the channel names, by which DAPI and FITC are then read)"
    ]


def test_ana_predict_csv_json_and_bad_files(trained_checkpoint, input_folder, tmp_path):
    _, _, ckpt = trained_checkpoint
    inp, good, bad = input_folder
    cfg = compose(
        "predict",
        [f"ckpt_path={ckpt}", f"input={inp}", "progress=false", "batch_size=8"],
        output_dir=tmp_path / "run",
    )
    summary = run_predict(cfg)
    assert (summary.n_images, summary.n_failed, summary.exit_code) == (len(good) + len(bad), len(bad), 2)
    assert summary.csv_path == tmp_path / "run" / "predictions.csv"
    header, rows = _read_csv(summary.csv_path)
    classes = ["AC-1", "AC-2", "AC-10"]
    assert header == prediction_columns(classes)
    assert header[:3] == ["path", "status", "error"] and header[-3:] == [f"p_{c}" for c in classes]
    assert {"pred", "top1", "top2", "top3", "level1", "level2", "level3"} <= set(header)

    by_name = {Path(r["path"]).name if r["status"] == "error" else r["path"]: r for r in rows}
    for name, reason in bad.items():  # each bad file is one row with its reason; the run went on
        assert by_name[name]["status"] == "error" and reason in by_name[name]["error"], by_name[name]
    tree = Taxonomy.load()
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["path"] for r in ok) == sorted(map(str, good))
    for r in ok:
        p = np.array([float(r[f"p_{c}"]) for c in classes])
        assert p.sum() == pytest.approx(1.0, abs=1e-4)  # softmax
        assert r["pred"] == r["top1"] == classes[int(p.argmax())]
        assert float(r["top1_prob"]) >= float(r["top2_prob"]) >= float(r["top3_prob"])
        assert {r["top1"], r["top2"], r["top3"]} == set(classes)
        assert (r["level1"], r["level2"], r["level3"]) == (
            tree.level_of(r["pred"], 1),
            tree.level_of(r["pred"], 2),
            r["pred"],
        )

    doc = json.loads(summary.json_path.read_text())  # streamed piece by piece, still one valid document
    assert doc["summary"] == {"images": len(rows), "failed": len(bad)}
    assert doc["model"]["class_names"] == classes and doc["model"]["image_size"] == 32
    assert [p["path"] for p in doc["predictions"]] == [r["path"] for r in rows]
    first_ok = next(p for p in doc["predictions"] if p["status"] == "ok")
    row = next(r for r in rows if r["path"] == first_ok["path"])
    assert first_ok["labels"] == [row["pred"]]
    assert first_ok["probabilities"]["AC-10"] == pytest.approx(float(row["p_AC-10"]), abs=1e-6)


def test_truth_from_folders_scores_whole_images_and_rows_without_a_verdict(trained_checkpoint, tmp_path):
    """truth=folder with a model of AC-code classes on plain images: the score is recomputed from
    predictions.csv and the folder names (AC10 and ac-2 spelled as the user did), and an unreadable
    image of a scored class counts in truth/no_verdict and as wrong in truth/mca_all."""
    import shutil

    root, _, ckpt = trained_checkpoint
    inp = tmp_path / "in"
    shutil.copytree(root, inp)
    (inp / "AC10" / "broken.png").write_bytes(b"not a png")
    cfg = compose(
        "predict",
        [f"ckpt_path={ckpt}", f"input={inp}", "progress=false", "truth=folder"],
        output_dir=tmp_path / "r",
    )
    run_predict(cfg)
    m = json.loads((tmp_path / "r" / "truth_metrics.json").read_text())
    _, rows = _read_csv(tmp_path / "r" / "predictions.csv")
    code = {"AC-1": "AC-1", "ac-2": "AC-2", "AC10": "AC-10"}
    ok = [r for r in rows if r["status"] == "ok"]
    truth = [code[Path(r["path"]).parent.name] for r in ok]
    right = [r["pred"] == t for r, t in zip(ok, truth, strict=True)]
    assert m["truth/acc"] == pytest.approx(np.mean(right)) and m["truth/scored_images"] == len(ok)
    recall = {c: [x for x, t in zip(right, truth, strict=True) if t == c] for c in code.values()}
    assert m["truth/mca"] == pytest.approx(np.mean([np.mean(v) for v in recall.values()]))
    assert m["truth/no_verdict"] == 1 and m["truth/images"] == len(ok) + 1
    recall["AC-10"].append(False)
    assert m["truth/mca_all"] == pytest.approx(np.mean([np.mean(v) for v in recall.values()]))


def test_predictions_match_the_training_runs_test_split(trained_checkpoint):
    """Same preprocessing as training/evaluation, read from the checkpoint: the probabilities that the
    training run wrote for its test images are reproduced."""
    _, run, ckpt = trained_checkpoint
    _, rows = _read_csv(run / "test_predictions.csv")
    predictor = Predictor.load(ckpt)
    preds = list(predictor.predict_paths([r["path"] for r in rows], batch_size=4))
    for r, p in zip(rows, preds, strict=True):
        want = np.array([float(r[f"p_{c}"]) for c in predictor.class_names])
        np.testing.assert_allclose(p.probabilities, want, atol=2e-5)
        assert p.labels == (r["pred"],)


def test_prediction_streams_one_batch_at_a_time(trained_checkpoint, input_folder, monkeypatch):
    _, _, ckpt = trained_checkpoint
    _, good, _ = input_folder
    reads = []
    import ana_lightning.predict.predictor as predictor_mod  # where the Predictor reads images

    real = predictor_mod.load_image
    monkeypatch.setattr(predictor_mod, "load_image", lambda p: reads.append(p) or real(p))
    stream = Predictor.load(ckpt).predict_paths(good, batch_size=4)
    assert reads == []  # nothing is read before it is asked for
    first = next(stream)
    # the first batch, and at most the next one being read ahead while the model runs: not the whole folder
    assert first.ok and 4 <= len(reads) <= 8
    assert len(list(stream)) == len(good) - 1 and len(reads) == len(good)


def test_output_option_and_console_exit_status(trained_checkpoint, input_folder, tmp_path):
    _, _, ckpt = trained_checkpoint
    inp, good, _ = input_folder
    exe = [sys.executable, "-m", "ana_lightning.cli.predict"]
    r = subprocess.run(
        exe
        + [f"ckpt_path={ckpt}", f"input={inp}", f"output={tmp_path / 'out' / 'mine.csv'}", "progress=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr[-2000:]  # some files could not be read
    assert (tmp_path / "out" / "mine.csv").is_file() and (tmp_path / "out" / "mine.json").is_file()
    assert "could not be read" in r.stdout + r.stderr
    assert not list((tmp_path / "outputs" / "predict" / "runs").glob("*/predictions.csv"))  # output= was used
    # Every file readable: exit status 0 (the console command exits with summary.exit_code).
    cfg = compose(
        "predict", [f"ckpt_path={ckpt}", f"input={good[0]}", "progress=false"], output_dir=tmp_path / "run"
    )
    summary = run_predict(cfg)
    assert (summary.n_images, summary.n_failed, summary.exit_code) == (1, 0, 0)


def test_file_size_limit_is_reported(trained_checkpoint, input_folder):
    _, _, ckpt = trained_checkpoint
    _, good, _ = input_folder
    (pred,) = Predictor.load(ckpt).predict_paths(good[:1], max_file_mb=1e-6)
    assert not pred.ok and "over the limit" in pred.error


# ------------------------------------------------------------------------------------- loading
def test_files_that_are_not_models_give_clear_errors(trained_checkpoint, input_folder, tmp_path):
    _, _, ckpt = trained_checkpoint
    _, good, _ = input_folder
    with pytest.raises(CheckpointError, match="does not exist"):
        Predictor.load(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"img_000\.png.*not an ana-lightning checkpoint"):
        Predictor.load(good[0])
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        Predictor.load(cut)
    plain = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, plain)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        Predictor.load(plain)
    fake_onnx = tmp_path / "model.onnx"
    fake_onnx.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="model.onnx"):
        Predictor.load(fake_onnx)


class _Pickled:
    """A harmless class: loading it needs full unpickling, which weights_only=True refuses."""

    def __init__(self, lr: float):
        self.lr = lr


def test_weights_only_loading(trained_checkpoint, tmp_path, caplog):
    _, _, ckpt = trained_checkpoint
    assert Predictor.load(ckpt).class_names == ("AC-1", "AC-2", "AC-10")
    # Old Lightning stored argparse Namespaces: allow-listed, they load with weights_only=True.
    data = torch.load(ckpt, weights_only=True)
    data["legacy_args"] = argparse.Namespace(lr=0.1)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(data, legacy)
    assert Predictor.load(legacy).class_names == ("AC-1", "AC-2", "AC-10")
    # Any other pickled object is refused by default, naming the file and the class it asks for.
    data["legacy_args"] = _Pickled(0.1)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(data, unsafe)
    with pytest.raises(
        CheckpointError, match=r"unsafe\.ckpt was NOT loaded.*_Pickled.*trust_checkpoint=true"
    ):
        Predictor.load(unsafe)
    with caplog.at_level("WARNING"):
        p = Predictor.load(unsafe, trust_checkpoint=True)  # the explicit opt-in: loads, loudly
    assert p.class_names == ("AC-1", "AC-2", "AC-10") and "only do this for files you trust" in caplog.text
    assert str(unsafe) in caplog.text


# ------------------------------------------------------------------------------------- tasks
def _toy_model(k: int = 4) -> SoftmaxClassifier:
    torch.manual_seed(0)
    return SoftmaxClassifier(
        backbone={"name": TINY_BACKBONE}, class_names=[f"AC-{i}" for i in (1, 4, 5, 8)][:k], image_size=32
    ).eval()


def test_multi_label_rule_uses_the_stored_thresholds():
    info = ModelInfo(
        task="multi_label",
        class_names=("AC-1", "AC-4", "AC-5"),
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        thresholds=(0.3, 0.6, 0.5),
    )
    rule = predict_mod.decision_rule(info)
    probs = np.array([0.35, 0.55, 0.9])
    assert rule.decide(probs) == [2, 0]  # most probable first; AC-4 misses its own 0.6
    assert rule.decide(probs, thresholds=(0.5,) * 3) == [2, 1]
    assert rule.decide(np.array([0.1, 0.2, 0.3])) == []
    ref = predict_mod.decision_rule(ModelInfo(**{**info.__dict__, "decision_rule": "reference_repo"}))
    assert ref.decide(np.array([0.1, 0.2, 0.25])) == [2]  # the reference repository's top-1 fallback


def test_predictor_follows_the_checkpoint_task():
    model = _toy_model()
    x = torch.randn(3, 3, 32, 32)
    single = Predictor.from_model(model, {"task": "single_label"})
    assert np.allclose(single.predict_proba(x).sum(1), 1, atol=1e-5)
    # A multi-label model: sigmoid outputs and the thresholds stored with it.
    model.predict_proba = lambda t: model(t).sigmoid()
    multi = Predictor.from_model(model, {"task": "multi_label", "thresholds": [0.5, 0.5, 0.5, 0.99]})
    probs = multi.predict_proba(x)
    assert probs.shape == (3, 4) and not np.allclose(probs.sum(1), 1)
    expected = tuple(
        c
        for c, p in sorted(zip(multi.class_names, probs[0], strict=True), key=lambda t: -t[1])
        if p >= (0.99 if c == "AC-8" else 0.5)
    )
    assert multi.decide(probs[0]) == expected
    with pytest.raises(CheckpointError, match="'segmentation'.*register a DecisionRule"):
        Predictor.from_model(model, {"task": "segmentation"})


def test_sigmoid_ensemble_contract():
    """The multi-label model of this project stores what the predictor needs (an import error fails here)."""
    from ana_lightning.models import multilabel

    model = multilabel.SigmoidEnsemble(
        class_names=["AC-1", "AC-4", "AC-5"],
        backbones=[{"name": TINY_BACKBONE}],
        decision_rule="reference_repo",
        image_size=32,
    ).eval()
    meta: dict = {}
    model.on_save_checkpoint(meta)
    p = Predictor.from_model(model, meta["ana_lightning"])
    assert (
        p.task == "multi_label"
        and p.info.thresholds == (0.3, 0.3, 0.3)
        and p.info.decision_rule == "reference_repo"
    )
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    pred = p.predict_image(image)
    want = model.decide(model.predict_proba(p.preprocess(image)[None]))[0]
    assert set(pred.labels) == {c for c, v in zip(p.class_names, want.tolist(), strict=True) if v}


def test_whole_images_that_are_overexposed_are_named_in_one_warning(trained_checkpoint, tmp_path, caplog):
    """Image mode: every image is predicted; the overexposed one (a third of it clipped) is named once."""
    import logging
    import shutil

    from PIL import Image

    root, _, ckpt = trained_checkpoint
    inp = tmp_path / "in"
    shutil.copytree(root / "AC-1", inp)
    first = sorted(inp.glob("*.png"))[0]
    arr = np.asarray(Image.open(first).convert("RGB")).copy()
    arr[: arr.shape[0] // 3] = 255
    Image.fromarray(arr).save(first)
    share = (arr.max(axis=2) >= 255).mean()
    cfg = compose(
        "predict", [f"ckpt_path={ckpt}", f"input={inp}", "progress=false"], output_dir=tmp_path / "r"
    )
    with caplog.at_level(logging.WARNING, logger="ana_lightning.data.images"):
        summary = run_predict(cfg)
    assert summary.n_failed == 0 and summary.n_images == len(list(inp.glob("*.png")))
    (said,) = [r.getMessage() for r in caplog.records if "overexposed" in r.getMessage()]
    assert said.startswith("1 image(s) overexposed") and f"{first} ({share:.0%} saturated)" in said


def test_ana_predict_reads_a_tiff_of_channels_as_its_rgb_composite(trained_checkpoint, tmp_path):
    """A field saved as a TIFF of channels (DAPI page, FITC page) predicts as the same field saved as one RGB
    image, FITC green and DAPI blue: read by the channel names an OME-TIFF carries, or by channels=[…] for a
    stack without names, which without it is an error row naming channels=, not a read of its first page."""
    import tifffile
    from PIL import Image

    root, _, ckpt = trained_checkpoint
    inp = tmp_path / "in"
    inp.mkdir()
    for i, f in enumerate(sorted((root / "AC-1").glob("*.png"))[:2]):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        green, blue = rgb[..., 1], np.roll(rgb[..., 1], 7, axis=1) // 2  # a DAPI unlike the FITC
        Image.fromarray(np.stack([np.zeros_like(green), green, blue], -1)).save(inp / f"{i}_rgb.png")
        tifffile.imwrite(inp / f"{i}_plain.tif", np.stack([blue, green]))
        tifffile.imwrite(
            inp / f"{i}_named.ome.tif",
            np.stack([green, blue]),
            ome=True,
            metadata={"axes": "CYX", "Channel": {"Name": ["FITC", "DAPI"]}},
        )

    def rows(*extra: str) -> dict[str, dict[str, str]]:
        cfg = compose(
            "predict",
            [f"ckpt_path={ckpt}", f"input={inp}", "progress=false", *extra],
            output_dir=tmp_path / f"out_{ckpt.stem}_{len(extra)}",
        )
        _, found = _read_csv(run_predict(cfg).csv_path)
        return {Path(r["path"]).name: r for r in found}

    def p(r: dict[str, str]) -> np.ndarray:
        return np.array([float(r[k]) for k in r if k.startswith("p_")])

    by_names = rows()
    given = rows("channels=[dapi,fitc]")
    for i in range(2):
        assert by_names[f"{i}_plain.tif"]["status"] == "error"
        assert "2 channels with no channel names" in by_names[f"{i}_plain.tif"]["error"]
        assert "channels=[fitc,dapi]" in by_names[f"{i}_plain.tif"]["error"]
        assert np.allclose(p(by_names[f"{i}_named.ome.tif"]), p(by_names[f"{i}_rgb.png"]), atol=1e-6)
        assert np.allclose(p(given[f"{i}_plain.tif"]), p(given[f"{i}_rgb.png"]), atol=1e-6)
    # an order given for all files never overrules a file's own channel names: a file it contradicts is an error
    assert all(given[f"{i}_named.ome.tif"]["status"] == "error" for i in range(2))
    assert "channels=dapi,fitc says otherwise" in given["0_named.ome.tif"]["error"]
    # a model trained with data.channels reads such files as its run did (channels=auto), unless told otherwise
    from ana_lightning.fields.mode import export_scale

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["datamodule_hyper_parameters"]["channels"] = ["dapi", "fitc"]
    ckpt = tmp_path / "stacks.ckpt"
    torch.save(state, ckpt)
    assert export_scale(ckpt) == {"channels": ["dapi", "fitc"]}
    auto, named = rows(), rows("channels=null")
    for i in range(2):
        assert np.allclose(p(auto[f"{i}_plain.tif"]), p(by_names[f"{i}_rgb.png"]), atol=1e-6)
        assert (
            auto[f"{i}_named.ome.tif"]["status"] == "error"
        )  # the model's order does not overrule names either
        assert named[f"{i}_plain.tif"]["status"] == "error"
        assert np.allclose(p(named[f"{i}_named.ome.tif"]), p(by_names[f"{i}_rgb.png"]), atol=1e-6)
    # an export carries it: its model card says so, and ana-predict's auto reads it from the metadata
    from ana_lightning.export import run_export

    result = run_export(compose("export", [f"ckpt_path={ckpt}", "format=onnx"], output_dir=tmp_path / "x"))
    assert "`data.channels=[dapi,fitc]`" in result.card_path.read_text()
    ckpt = result.model_path
    exported = rows()
    assert np.allclose(p(exported["0_plain.tif"]), p(by_names["0_rgb.png"]), atol=1e-5)
    with pytest.raises(ValueError, match=r"channels=.*exactly one fitc"):
        run_predict(
            compose(
                "predict",
                [f"ckpt_path={ckpt}", f"input={inp}", "channels=[dapi]"],
                output_dir=tmp_path / "bad",
            )
        )


def test_ana_predict_reads_16_bit_files_at_the_models_bit_depth(trained_checkpoint, tmp_path, caplog):
    """A model trained with data.bit_depth=12 reads a 12-bit camera's 16-bit TIFF as the same field in 8 bits
    (bit_depth=auto, from its checkpoint, and through its export's metadata); bit_depth=null reads the file's
    own range (a dim image, other probabilities)."""
    import logging

    from PIL import Image

    from ana_lightning.fields.mode import export_scale

    root, _, ckpt = trained_checkpoint
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["datamodule_hyper_parameters"]["bit_depth"] = 12
    ck12 = tmp_path / "m12.ckpt"
    torch.save(state, ck12)
    assert export_scale(ck12) == {"bit_depth": 12} and "bit_depth" not in export_scale(ckpt)
    inp = tmp_path / "in"
    inp.mkdir()
    for i, f in enumerate(sorted((root / "AC-1").glob("*.png"))[:3]):
        grey = np.asarray(Image.open(f).convert("L"))
        Image.fromarray(grey).save(inp / f"{i}_8bit.png")
        Image.fromarray(np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)).save(
            inp / f"{i}_cam.tif"
        )

    def probs(depth: str, name: str) -> dict[str, np.ndarray]:
        cfg = compose(
            "predict",
            [f"ckpt_path={ck12}", f"input={inp}", "progress=false", f"bit_depth={depth}"],
            output_dir=tmp_path / name,
        )
        summary = run_predict(cfg)
        assert summary.n_failed == 0
        _, rows = _read_csv(summary.csv_path)
        return {Path(r["path"]).name: np.array([float(r[k]) for k in r if k.startswith("p_")]) for r in rows}

    with caplog.at_level(logging.INFO, logger="ana_lightning.fields.mode"):
        auto = probs("auto", "auto")
    assert "read as 12-bit camera data: 0-4095 is the full range (the model's data.bit_depth)" in caplog.text
    own = probs("null", "own")
    for i in range(3):
        assert np.allclose(auto[f"{i}_cam.tif"], auto[f"{i}_8bit.png"], atol=1e-6)
        assert np.allclose(own[f"{i}_8bit.png"], auto[f"{i}_8bit.png"], atol=1e-6)  # 8-bit files: no effect
    assert max(np.abs(own[f"{i}_cam.tif"] - auto[f"{i}_cam.tif"]).max() for i in range(3)) > 1e-3
    Image.fromarray(np.full((16, 16), 9000, np.uint16)).save(inp / "other_camera.tif")
    cfg = compose(
        "predict", [f"ckpt_path={ck12}", f"input={inp}", "progress=false"], output_dir=tmp_path / "o"
    )
    summary = run_predict(cfg)
    _, rows = _read_csv(summary.csv_path)
    (bad,) = [r for r in rows if r["status"] == "error"]
    assert bad["path"].endswith("other_camera.tif") and "above the 12-bit range" in bad["error"]
    # the exported file carries it: its card says so, and ana-predict's auto reads it from the metadata
    from omegaconf import OmegaConf

    from ana_lightning.export import run_export
    from ana_lightning.fields.mode import model_bit_depth

    result = run_export(compose("export", [f"ckpt_path={ck12}", "format=onnx"], output_dir=tmp_path / "x"))
    assert "Trained on 12-bit camera data (`data.bit_depth=12`)" in result.card_path.read_text()
    onnx_model = Predictor.load(result.model_path, device="cpu")
    assert model_bit_depth(OmegaConf.create({"bit_depth": "auto"}), onnx_model) == 12
    assert model_bit_depth(OmegaConf.create({"bit_depth": None}), onnx_model) is None
    # a pipeline's models must agree (each checkpoint's data.bit_depth); a support folder is read after it is set
    state["datamodule_hyper_parameters"]["bit_depth"] = 14
    ck14 = tmp_path / "m14.ckpt"
    torch.save(state, ck14)

    def pipe(a, b):
        return OmegaConf.create({"bit_depth": "auto", "pipeline": {"level1": str(a), "level2": str(b)}})

    assert model_bit_depth(pipe(ck12, ck12)) == 12
    with pytest.raises(ValueError, match=r"different data.bit_depth \(\[12, 14\]\)"):
        model_bit_depth(pipe(ck12, ck14))


@pytest.mark.parametrize("value", [-1, 1.5, "two"])
def test_num_workers_is_checked_before_the_model_loads(tmp_path, value):
    """A negative count used to mean no workers without a word (image mode); every mode now refuses it, naming
    the value, before the slow part: the model file here does not even exist."""
    from ana_lightning.predict import run_predict

    (tmp_path / "in").mkdir()
    cfg = compose(
        "predict",
        [f"ckpt_path={tmp_path / 'none.ckpt'}", f"input={tmp_path / 'in'}", f"num_workers={value}"],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(ValueError, match=f"num_workers={value!r}: the number of worker processes"):
        run_predict(cfg)
