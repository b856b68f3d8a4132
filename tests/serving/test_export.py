"""ana-export: ONNX parity with PyTorch (dynamic batch), TorchScript, metadata round trip, model card."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ana_lightning.data.images import load_image
from ana_lightning.data.splits import load_manifest
from ana_lightning.export import export_model, run_export
from ana_lightning.models.classifier import SoftmaxClassifier
from ana_lightning.predict import Predictor, run_predict
from ana_lightning.taxonomy import Taxonomy

from conftest import TINY_BACKBONE, compose


@pytest.fixture(scope="module")
def onnx_export(trained_checkpoint, tmp_path_factory):
    _, _, ckpt = trained_checkpoint
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_export(compose("export", [f"ckpt_path={ckpt}", "format=onnx"], output_dir=out))
    return result


def _batch(predictor: Predictor, root: Path) -> np.ndarray:
    files = sorted(root.rglob("*.png"))
    return torch.stack([predictor.preprocess(load_image(f)) for f in files]).numpy()


def test_onnx_parity_with_pytorch_at_any_batch_size(trained_checkpoint, onnx_export):
    import onnx

    root, _, ckpt = trained_checkpoint
    assert onnx_export.model_path.name == "model.onnx" and onnx_export.model_path.is_file()
    assert onnx_export.max_abs_diff <= 1e-4
    ref, ort = Predictor.load(ckpt), Predictor.load(onnx_export.model_path)
    assert (ref.backend_name, ort.backend_name) == ("pytorch", "onnxruntime")
    assert ort.info == ref.info  # classes, size, normalisation travel inside the .onnx file
    x = _batch(ref, root)
    for n in (1, 7, len(x)):  # dynamic batch size
        got, want = ort.predict_proba(x[:n]), ref.predict_proba(x[:n])
        assert got.shape == want.shape == (n, 3)
        assert np.abs(got - want).max() <= 1e-4
    dim = onnx.load(str(onnx_export.model_path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic, not a fixed batch


def test_ana_predict_runs_the_onnx_file_like_the_checkpoint(trained_checkpoint, onnx_export, tmp_path):
    root, _, ckpt = trained_checkpoint
    rows = {}
    for name, model in (("ckpt", ckpt), ("onnx", onnx_export.model_path)):
        s = run_predict(
            compose(
                "predict",
                [f"ckpt_path={model}", f"input={root}", "progress=false"],
                output_dir=tmp_path / name,
            )
        )
        with open(s.csv_path, newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["onnx"]) == len(rows["ckpt"]) == 36
    for a, b in zip(rows["ckpt"], rows["onnx"], strict=True):
        assert a["path"] == b["path"] and a["pred"] == b["pred"]
        assert max(abs(float(a[k]) - float(b[k])) for k in a if k.startswith("p_")) <= 1e-4
    doc = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert doc["model"]["backend"] == "onnxruntime"


def test_model_card_lists_the_right_classes_and_the_run(trained_checkpoint, onnx_export):
    _, run, ckpt = trained_checkpoint
    card = onnx_export.card_path
    assert card == onnx_export.model_path.with_name("model_card.md")
    text = card.read_text()
    tree = Taxonomy.load()
    classes = re.findall(r"^\| (\d+) \| (AC-\d+) \| ([^|]+) \|", text, flags=re.M)
    assert [c for _, c, _ in classes] == list(Predictor.load(ckpt).class_names) == ["AC-1", "AC-2", "AC-10"]
    assert [int(i) for i, _, _ in classes] == [0, 1, 2]
    assert all(name.strip() == tree.names[c] for _, c, name in classes)
    assert "research and diagnostic aid" in text and "confirmed by" in text and "expert" in text
    assert "## Intended use" in text and "## Decision rule and thresholds" in text
    for k, v in json.loads((run / "metrics.json").read_text()).items():  # the run's test metrics, as measured
        assert f"| `{k}` | {v:.4f} |" in text
    splits = load_manifest(run / "split_manifest.csv", taxonomy=tree)
    for c in ("AC-1", "AC-2", "AC-10"):
        counts = [sum(c in r.codes for r in splits[s]) for s in ("train", "val", "test")]
        assert f"| {c} | {' | '.join(map(str, counts))} |" in text
    assert f"max abs difference {onnx_export.max_abs_diff:.2e}" in text
    assert (
        "wrong verdict can name one pattern" in text and "`combine=vote`" in text
    )  # single-label: specimens
    assert "Centromere against speckled" not in text  # AC-2 is speckled, but no centromere class
    assert (
        f"ckpt_path={onnx_export.model_path.name} input=<folders named by class, e.g. `ac-3/`> truth=folder"
        in text
    )


def test_torchscript_export(trained_checkpoint, tmp_path):
    root, _, ckpt = trained_checkpoint
    result = export_model(ckpt, format="torchscript", output=tmp_path)
    assert result.model_path == tmp_path / "model.torchscript.pt" and result.card_path.is_file()
    ts, ref = Predictor.load(result.model_path), Predictor.load(ckpt)
    assert ts.backend_name == "torchscript" and ts.info == ref.info
    x = _batch(ref, root)
    assert np.abs(ts.predict_proba(x) - ref.predict_proba(x)).max() <= 1e-5
    # an exported file where a training checkpoint is needed (ana-eval, ana-export) is named as such
    from ana_lightning.utils import CheckpointError, read_checkpoint

    for exported in (result.model_path, result.model_path.with_suffix(".onnx")):
        if exported.suffix == ".onnx":
            exported.write_bytes(b"not read: the name says it")
        with pytest.raises(
            CheckpointError,
            match="exported by ana-export, not a training checkpoint.*ana-predict ckpt_path=<it> input=<folder> truth=",
        ):
            read_checkpoint(exported)
    assert read_checkpoint(ckpt)["state_dict"]


def test_bad_export_requests(trained_checkpoint, tmp_path):
    _, _, ckpt = trained_checkpoint
    with pytest.raises(ValueError, match="format='tflite'"):
        export_model(ckpt, format="tflite", output=tmp_path)
    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("hello")
    from ana_lightning.utils import CheckpointError

    with pytest.raises(CheckpointError, match="notes.ckpt"):
        export_model(not_ckpt, output=tmp_path)


class SigmoidToy(SoftmaxClassifier):
    """A stand-in multi-label model: sigmoid outputs and per-class thresholds in its checkpoint."""

    THRESHOLDS = [0.2, 0.45, 0.7]

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).sigmoid()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ana_lightning"].update(
            task="multi_label", thresholds=self.THRESHOLDS, decision_rule="per_class"
        )


def write_multi_label_checkpoint(path: Path) -> Path:
    """An untrained :class:`SigmoidToy` saved as a checkpoint (also used by the browser test)."""
    torch.manual_seed(0)
    model = SigmoidToy(backbone={"name": TINY_BACKBONE}, class_names=["AC-1", "AC-4", "AC-5"], image_size=32)
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_multi_label_export_keeps_its_thresholds(tmp_path):
    path = write_multi_label_checkpoint(tmp_path / "multi.ckpt")
    result = export_model(path, format="torchscript", output=tmp_path / "multi.torchscript.pt")
    exported = Predictor.load(result.model_path)
    assert exported.task == "multi_label" and exported.info.thresholds == tuple(SigmoidToy.THRESHOLDS)
    text = result.card_path.read_text()
    assert result.card_path.name == "multi_card.md"
    for c, t in zip(["AC-1", "AC-4", "AC-5"], SigmoidToy.THRESHOLDS, strict=True):
        assert f"| {c} | {t:.3f} |" in text
    assert "Training data" in text and "Not available" in text  # no run folder around this checkpoint
    assert "e.g. `AC-1 + AC-4/`> truth=folder" in text  # how a hospital checks it on its own label sets


def test_the_cell_recipe_model_exports_to_onnx(tmp_path):
    # experiment=i3a_cells's network (CellInput: per-cell normalisation with background subtraction, and the
    # round-6 options) through the default exporter (torch.export): no branch on the data may stop the trace
    torch.manual_seed(0)
    cell_input = {
        "mask": "channel",
        "background": True,
        "tta": True,  # the recipe's default since round 14: the exported graph averages the 8 views
        "tophat": 2,
        "mixstyle": {"p": 0.5, "layers": ["features.0"]},
    }
    model = SoftmaxClassifier(
        backbone={"name": "cellnet", "width": 8, "cell_input": cell_input},
        class_names=["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"],
        image_size=32,
    )
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    model.on_save_checkpoint(ckpt)
    ckpt["datamodule_hyper_parameters"] = {"reader": "i3a2014", "mask": "channel", "crop_fraction": 0.7}
    torch.save(ckpt, tmp_path / "cell.ckpt")
    result = export_model(tmp_path / "cell.ckpt", format="onnx", output=tmp_path / "cell.onnx")
    assert result.max_abs_diff < 1e-4
    card = result.card_path.read_text()  # a lab with the ONNX file learns how to cut its cells
    assert "mask's bounding box spans 0.7 of the side" in card and "mask in the blue channel" in card
    assert "8 flips and 90° rotations and averages the logits itself" in card  # a lab must not do TTA twice
    # cells as the datamodule gives them: [0, 1] intensity, the mask in blue; one cell without mask pixels
    cells = torch.rand(4, 3, 32, 32) * 0.2
    cells[:, 2] = 0.0
    cells[:3, 2, 8:24, 8:24] = 1.0
    with torch.inference_mode():
        want = model.eval()(cells).softmax(-1).numpy()
    got = Predictor.load(result.model_path).predict_proba(cells.numpy())
    assert np.abs(got - want).max() < 1e-4


def test_export_never_replaces_a_model_silently(trained_checkpoint, tmp_path):
    """output= naming an existing model file (or its card) is refused unless overwrite=true."""
    _, _, ckpt = trained_checkpoint
    args = [f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path / 'lab' / 'm.torchscript.pt'}"]
    first = run_export(compose("export", args, output_dir=tmp_path / "r1"))
    before = first.model_path.read_bytes()
    with pytest.raises(
        FileExistsError, match=r"m\.torchscript\.pt and .*m_card\.md already exist.*overwrite=true"
    ):
        run_export(compose("export", args, output_dir=tmp_path / "r2"))
    assert first.model_path.read_bytes() == before
    again = run_export(compose("export", [*args, "overwrite=true"], output_dir=tmp_path / "r3"))
    assert again.model_path == first.model_path and again.card_path.is_file()


def test_card_warns_of_centromere_against_speckled_only_when_both_are_outputs():
    from ana_lightning.model_card import _names_centromere_and_speckled

    tree = Taxonomy.load()
    assert _names_centromere_and_speckled(["Homogeneous", "Speckled", "Centromere", "Golgi"], tree)  # contest
    assert _names_centromere_and_speckled(["AC-1", "AC-3", "AC-4"], tree)  # ICAP codes
    assert _names_centromere_and_speckled(["speckled", "centromere", "nucleolar"], tree)  # level-2 nodes
    assert not _names_centromere_and_speckled(["AC-1", "AC-2", "AC-10"], tree)
    assert not _names_centromere_and_speckled(["Centromere", "Homogeneous"], tree)
