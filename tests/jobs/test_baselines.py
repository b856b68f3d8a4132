"""Baselines: SVM on handcrafted texture features and on frozen CNN features."""

import json

import numpy as np
import pytest
import torch

from ana_lightning.baselines import FrozenCNNFeatures, TextureFeatures, fit_predict_svm, svm_job
from ana_lightning.data.synthetic import render_field

from conftest import TINY_BACKBONE, compose, write_class_images


@pytest.fixture(scope="module")
def fields():
    """Synthetic fields of two texture-wise different patterns: fine speckled (AC-4) vs centromere (AC-3)."""
    images, labels = [], []
    for k, code in enumerate(("AC-4", "AC-3")):
        for i in range(12):
            images.append(render_field(code, np.random.default_rng([k, i]), size=96))
            labels.append(k)
    return images, np.array(labels)


def test_texture_features_are_fixed_length_and_finite(fields):
    images, _ = fields
    tf = TextureFeatures(size=64)
    a, b = tf(images[0]), tf(images[0][:80, :90])  # any size in, same length out
    assert a.shape == b.shape and a.ndim == 1 and np.isfinite(a).all()
    assert np.array_equal(a, tf(images[0]))  # deterministic
    grey = tf(images[0][:, :, 1])
    assert grey.shape == a.shape


def test_svm_on_texture_features_separates_two_patterns(fields):
    images, labels = fields
    feats = TextureFeatures(size=64).transform(images)
    train = np.r_[0:6, 12:18]
    test = np.setdiff1d(np.arange(24), train)
    pred = fit_predict_svm(feats[train], labels[train], feats[test])
    assert (pred == labels[test]).mean() >= 0.8  # chance is 0.5
    assert (fit_predict_svm(feats[:3], labels[:3], feats[3:5]) == 0).all()  # one class only: predicts it


def test_frozen_cnn_features(fields):
    images, _ = fields
    fx = FrozenCNNFeatures.from_backbone({"name": TINY_BACKBONE}, image_size=32)
    before = [p.clone() for p in fx.network.parameters()]
    f = fx(images[:5])
    assert f.shape == (5, fx.network.num_features) and np.isfinite(f).all()
    assert all(torch.equal(a, b) for a, b in zip(before, fx.network.parameters(), strict=True))
    assert not any(p.requires_grad for p in fx.network.parameters())


def test_svm_job_on_a_folder(tmp_path):
    root = write_class_images(tmp_path / "d", {"AC-1": 8, "AC-2": 8, "AC-10": 8}, size=32)
    out = tmp_path / "run"
    cfg = compose(
        "train",
        ["experiment=svm_baseline", "data=single_label", f"data.root={root}", "data.image_size=32"],
        output_dir=out,
    )
    metrics, objs = svm_job(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert {"test/acc", "test/mca", "test/macro_f1"} <= set(saved) and saved["test/mca"] == pytest.approx(
        metrics["test/mca"]
    )
    assert (
        saved["test/mca_ci95_low"] <= saved["test/mca"] <= saved["test/mca_ci95_high"]
    )  # bootstrap interval
    assert (out / "test_predictions.csv").is_file()
    assert metrics["test/acc"] > 0.5  # the easy stripes of write_class_images
    assert (out / "test_confusion_matrix.png").exists() and (out / "split_manifest.csv").exists()
    cnn = compose(
        "train",
        [
            "experiment=svm_baseline",
            "data=single_label",
            f"data.root={root}",
            "data.image_size=32",
            "svm.features=cnn",
            f"svm.backbone.name={TINY_BACKBONE}",
        ],
        output_dir=tmp_path / "run_cnn",
    )
    m, _ = svm_job(cnn)
    assert 0.0 <= m["test/mca"] <= 1.0


def test_feature_sets_are_target_configs_and_the_older_strings_build_the_same(fields, tmp_path):
    from ana_lightning.baselines import feature_set

    images, _ = fields
    base = ["experiment=svm_baseline", "data=single_label", f"data.root={tmp_path}", "data.image_size=48"]
    new = compose("train", base, output_dir=tmp_path / "a").svm
    old = compose("train", [*base, "svm.features=texture"], output_dir=tmp_path / "b").svm
    a, b = feature_set(new, 48), feature_set(old, 48)
    assert type(a) is type(b) is TextureFeatures and a.size == b.size == 48
    assert np.array_equal(a.extract(images[:2]), b.extract(images[:2]))
    cnn_new = compose(
        "train",
        [*base, "svm/features=cnn", f"svm.features.backbone.name={TINY_BACKBONE}"],
        output_dir=tmp_path / "c",
    ).svm
    cnn_old = compose(
        "train", [*base, "svm.features=cnn", f"svm.backbone.name={TINY_BACKBONE}"], output_dir=tmp_path / "d"
    ).svm
    x, y = feature_set(cnn_new, 48), feature_set(cnn_old, 48)
    assert (
        type(x) is type(y) is FrozenCNNFeatures and x.extract(images[:2]).shape == y.extract(images[:2]).shape
    )
    with pytest.raises(ValueError, match="svm.features must be texture or cnn"):
        feature_set({"features": "hog"}, 48)
