"""ana-app without a browser: what the page computes for an upload, the threshold slider, the upload limit."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from ana_lightning.app import MAX_FIELDS, analyse, analyse_many, build_app, parse_size
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


def test_several_fields_of_one_specimen_give_each_fields_verdict_and_the_specimens(trained_checkpoint):
    """ana-app with several uploads: a row per field (an unreadable file is a row, not an error) and the
    specimen's probabilities, the normalised geometric mean of the readable fields' (ana-predict's
    group_by combine=mean_log)."""
    root, _, ckpt = trained_checkpoint
    predictor = Predictor.load(ckpt)
    images = sorted(root.rglob("*.png"))[:2]
    want = [p.probabilities for p in predictor.predict_paths(images)]
    broken = b"GIF89a this is not really an image"
    gallery, md, chart, state = analyse_many(
        predictor, [images[0].read_bytes(), broken, images[1].read_bytes()]
    )
    z = np.log(np.clip(np.stack(want), 1e-6, 1.0)).mean(axis=0)
    combined = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(state["probs"], combined, atol=1e-6)
    np.testing.assert_allclose(chart["probability"], combined, atol=1e-6)
    top = predictor.class_names[int(np.argmax(combined))]
    assert "## Specimen: 2 of 3 fields combined (mean_log)" in md
    assert (
        "**Not a screen for negatives:** this model has no negative class (AC-0)" in md
    )  # AC-1, AC-2, AC-10
    assert f"**{predictor.display_name(top)}** (p = {combined.max():.3f})" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| Field ")]
    assert [ln.split(" | ")[0] for ln in table] == ["| Field 1", "| Field 2", "| Field 3"]
    assert "no verdict" in table[1] and "Could not read" not in table[1] and "image" in table[1].lower()
    for row, p in zip((table[0], table[2]), want, strict=True):
        assert f"{predictor.display_name(predictor.class_names[int(np.argmax(p))])} | {p.max():.3f}" in row
    assert [c for _, c in gallery] == [
        f"Field {i}: {predictor.display_name(predictor.class_names[int(np.argmax(p))])}"
        for i, p in zip((1, 3), want, strict=True)
    ]
    # one upload reads as before
    one = analyse_many(predictor, [images[0].read_bytes()])
    single = analyse(predictor, images[0].read_bytes())
    assert one[1] == single[1] and one[3]["fields"] is None
    np.testing.assert_allclose(one[3]["probs"], single[3])
    _, md, chart, state = analyse_many(predictor, [broken, broken])
    assert "No field could be read" in md and chart is None and state["probs"] is None
    _, md, _, state = analyse_many(predictor, [broken] * (MAX_FIELDS + 1))
    assert md.startswith("### Too many files") and state is None
    assert f"{MAX_FIELDS + 1} files were uploaded; up to {MAX_FIELDS} fields" in md
    _, md, _, _ = analyse_many(predictor, [broken] * 3, max_fields=2)
    assert md.startswith("### Too many files") and "up to 2 fields" in md
    with pytest.raises(ValueError, match="max_fields=0"):
        build_app(predictor, max_fields=0)
    assert analyse_many(predictor, None) == ([], "", None, None)


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
    # two fields of one specimen: the slider re-decides the specimen and each field (geometric mean, no renormalising)
    _, md2, chart2, state = analyse_many(predictor, [data, data], threshold=1.0)
    np.testing.assert_allclose(state["probs"], probs, atol=1e-6)
    assert set(chart2["decision"]) == {"not predicted"} and md2.count("none reaches the threshold") == 2
    _, md2, chart2, _ = analyse_many(predictor, [data, data], threshold=0.0)
    assert set(chart2["decision"]) == {"predicted"} and "none reaches" not in md2


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


def test_served_page_reads_several_fields_of_one_specimen(trained_checkpoint, tmp_path):
    """The launched page (its upload event, as a browser sends it) takes several files at once."""
    client_mod = pytest.importorskip("gradio_client")
    root, _, ckpt = trained_checkpoint
    predictor = Predictor.load(ckpt)
    images = sorted(root.rglob("*.png"))[:3]
    demo = build_app(predictor)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    try:
        client = client_mod.Client(f"http://127.0.0.1:{port}/", verbose=False)
        gallery, md, _ = client.predict(
            [client_mod.handle_file(str(p)) for p in images], 0.5, False, api_name="/on_upload"
        )
    finally:
        demo.close()
    _, want, _, _ = analyse_many(predictor, [p.read_bytes() for p in images])
    assert md == want and "## Specimen: 3 of 3 fields combined" in md
    assert len(gallery) == 3


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


def test_an_overexposed_upload_is_read_with_a_warning(trained_checkpoint):
    """A field with many saturated pixels still gets its verdict, and a note that it may be unreliable;
    a normal one gets no such note."""
    import io

    from PIL import Image

    root, _, ckpt = trained_checkpoint
    predictor = Predictor.load(ckpt)
    image = sorted(root.rglob("*.png"))[0]
    _, md, _, probs = analyse(predictor, image.read_bytes())
    assert "overexposed" not in md
    arr = np.asarray(Image.open(image).convert("RGB")).copy()
    arr[: arr.shape[0] // 3] = 255  # a third of the field clipped
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    _, md, chart, probs = analyse(predictor, buf.getvalue())
    assert probs is not None and chart is not None  # still read
    assert "**Warning: overexposed: 33% of its pixels are saturated" in md


def test_only_a_model_without_a_negative_class_is_said_not_to_screen():
    import cv2

    ok, png = cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    said = {}
    for names in (["AC-0", "AC-1"], ["AC-1", "AC-4"]):
        torch.manual_seed(0)
        model = SoftmaxClassifier(backbone={"name": TINY_BACKBONE}, class_names=names, image_size=32).eval()
        _, md, _, _ = analyse(Predictor.from_model(model, {}), png.tobytes())
        said[names[0]] = "**Not a screen for negatives:**" in md
    assert said == {"AC-0": False, "AC-1": True}
