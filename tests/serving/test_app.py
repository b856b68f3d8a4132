"""ana-app without a browser: what the page computes for an upload, the threshold slider, the upload limit."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from ana_lightning.app import analyse, build_app, parse_size
from ana_lightning.models.classifier import SoftmaxClassifier
from ana_lightning.predict import Predictor

from conftest import TINY_BACKBONE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parse_size():
    assert (
        parse_size("25mb") == 25 * 2**20 and parse_size("500kb") == 500 * 2**10 and parse_size(1234) == 1234
    )
    with pytest.raises(ValueError, match="max_file_size='lots'"):
        parse_size("lots")


def test_upload_gives_label_hierarchy_and_every_probability(trained_checkpoint):
    root, _, ckpt = trained_checkpoint
    predictor = Predictor.load(ckpt)
    image = sorted(root.rglob("*.png"))[0]
    (want,) = predictor.predict_paths([image])
    preview, md, chart, probs = analyse(predictor, image.read_bytes())
    assert preview.shape == (48, 48, 3)
    np.testing.assert_allclose(probs, want.probabilities, atol=1e-6)
    (label,) = want.labels
    l1, l2, _ = predictor.hierarchy(label)
    assert predictor.display_name(label) in md
    # the ICAP path with a probability per level (sums of the classes under each node for a softmax model)
    p1, p2 = (
        sum(p for c, p in zip(predictor.class_names, probs, strict=True) if predictor.hierarchy(c)[j] == node)
        for j, node in ((0, l1), (1, l2))
    )
    assert f"{l1} (p = {p1:.3f}) › {l2} (p = {p2:.3f}) › {label} (p = {max(probs):.3f})" in md
    assert list(chart["pattern"]) == ["AC-1", "AC-2", "AC-10"]  # every class, in the model's order
    assert chart["probability"].sum() == pytest.approx(1.0, abs=1e-5)
    assert list(chart.loc[chart["decision"] == "predicted", "pattern"]) == [label]

    _, md, chart, _ = analyse(predictor, b"GIF89a this is not really an image")
    assert md.startswith("### Could not read this file") and chart is None
    _, md, _, _ = analyse(predictor, image.read_bytes(), max_bytes=100)
    assert "over the limit" in md


def test_threshold_slider_of_a_multi_label_model():
    torch.manual_seed(0)
    model = SoftmaxClassifier(
        backbone={"name": TINY_BACKBONE}, class_names=["AC-1", "AC-4", "AC-5"], image_size=32
    ).eval()
    model.predict_proba = lambda x: model(x).sigmoid()
    predictor = Predictor.from_model(model, {"task": "multi_label", "thresholds": [0.5, 0.5, 0.5]})
    import cv2

    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    data = png.tobytes()
    _, md_all, chart, probs = analyse(predictor, data, threshold=0.0)
    assert md_all.startswith("### Predicted patterns") and set(chart["decision"]) == {"predicted"}
    _, md_none, chart, _ = analyse(predictor, data, threshold=1.0)
    assert "No pattern reaches the threshold" in md_none and set(chart["decision"]) == {"not predicted"}
    mid = float(np.sort(probs)[1])  # between the two smaller probabilities: exactly two classes pass
    _, md, chart, _ = analyse(predictor, data, threshold=mid)
    assert (chart["decision"] == "predicted").sum() == 2


def test_page_refuses_oversized_uploads(trained_checkpoint):
    httpx = pytest.importorskip("httpx")
    _, _, ckpt = trained_checkpoint
    demo = build_app(Predictor.load(ckpt), max_file_size="20kb")
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        share=False,
        quiet=True,
        max_file_size=parse_size("20kb"),
    )
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        small = httpx.post(url, files={"files": ("a.png", b"\x89PNG" + b"0" * 1000, "image/png")}, timeout=30)
        big = httpx.post(url, files={"files": ("b.png", b"\x89PNG" + b"0" * 50_000, "image/png")}, timeout=30)
        assert small.status_code == 200, small.text
        assert big.status_code == 413, big.text
    finally:
        demo.close()


@pytest.mark.parametrize("name", ["predict", "export", "app"])
def test_configs_compose_and_name_their_job(name, tmp_path):
    from hydra.utils import get_method

    from conftest import compose

    cfg = compose(
        name, ["ckpt_path=model.ckpt"] + (["input=x"] if name == "predict" else []), output_dir=tmp_path
    )
    assert callable(get_method(cfg.job)) and cfg.task_name == name
    if name == "app":  # localhost only unless the user opens it
        assert cfg.server_name == "127.0.0.1" and parse_size(cfg.max_file_size) == 25 * 2**20
