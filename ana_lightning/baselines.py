"""Classical baselines: an SVM (scikit-learn) on handcrafted texture features or on frozen CNN features.

- :class:`TextureFeatures`: multi-scale uniform LBP histograms, grey-level co-occurrence (GLCM)
  properties averaged over four directions, and an intensity histogram with moments — all from
  scikit-image, on the grey image resized to a fixed size.
- :class:`FrozenCNNFeatures`: pooled features of a timm network (a trained checkpoint's, or a backbone
  config's), never updated.
- :func:`make_svm`: ``StandardScaler`` → ``SVC`` (RBF, class-balanced), the classical HEp-2 baseline.
- :func:`svm_job`: the job behind ``ana-train experiment=svm_baseline``: fit on the training split of
  any datamodule, report accuracy and MCA on the test split like the CNN runs do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

__all__ = ["TextureFeatures", "FrozenCNNFeatures", "make_svm", "fit_predict_svm", "svm_job"]

log = logging.getLogger(__name__)


class TextureFeatures:
    """Handcrafted texture descriptor of an ``H×W×3 uint8`` image (a 1-D float vector).

    Args:
        size: the grey image is resized to ``size × size`` first (comparable scales across images).
        lbp: ``(points, radius)`` pairs of uniform LBP histograms.
        glcm_distances: pixel offsets of the co-occurrence matrices (angles 0°, 45°, 90°, 135°, averaged).
        glcm_levels: grey levels the GLCM quantises to.
        hist_bins: bins of the intensity histogram.
    """

    GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")

    def __init__(self, size: int = 128, lbp: Sequence[tuple[int, int]] = ((8, 1), (16, 2), (24, 3)),
                 glcm_distances: Sequence[int] = (1, 2, 4, 8), glcm_levels: int = 32, hist_bins: int = 16):
        self.size, self.lbp, self.glcm_distances = int(size), [tuple(x) for x in lbp], list(glcm_distances)
        self.glcm_levels, self.hist_bins = int(glcm_levels), int(hist_bins)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2gray
        from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

        grey = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / 255.0
        grey = cv2.resize(grey.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_AREA)
        g8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
        feats = []
        for p, r in self.lbp:
            codes = local_binary_pattern(g8, p, r, method="uniform")
            hist, _ = np.histogram(codes, bins=p + 2, range=(0, p + 2), density=True)
            feats.append(hist)
        q = (g8.astype(np.int32) * self.glcm_levels // 256).astype(np.uint8)
        angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
        glcm = graycomatrix(q, self.glcm_distances, angles, levels=self.glcm_levels, symmetric=True, normed=True)
        feats += [graycoprops(glcm, prop).mean(axis=1) for prop in self.GLCM_PROPS]  # per distance, over angles
        hist, _ = np.histogram(grey, bins=self.hist_bins, range=(0.0, 1.0))
        feats.append(hist / max(1, grey.size))
        feats.append(np.array([grey.mean(), grey.std(), *np.percentile(grey, [10, 50, 90, 99])]))
        return np.concatenate(feats).astype(np.float32)

    def transform(self, images: Sequence[np.ndarray] | Sequence[str | Path], workers: int = 2) -> np.ndarray:
        """Features of many images (arrays, or paths read with :func:`~ana_lightning.data.images.load_image`)."""
        from .data.images import load_image

        def one(x):
            return self(load_image(x) if isinstance(x, str | Path) else x)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            return np.stack(list(pool.map(one, images)))


class FrozenCNNFeatures:
    """Pooled features of a frozen timm network: ``from_checkpoint`` (any ana-lightning checkpoint
    with a timm ``net``/``encoder``) or a ``backbone`` config of :func:`create_backbone`."""

    def __init__(self, network: torch.nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float],
                 batch_size: int = 64):
        from .data.transforms import build_transform

        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.transform = build_transform(image_size, None, mean, std)
        self.batch_size = batch_size

    @classmethod
    def from_backbone(cls, backbone: Mapping[str, Any], image_size: int = 224) -> FrozenCNNFeatures:
        from .models.backbones import create_backbone, normalization

        net = create_backbone(num_classes=0, **dict(backbone))
        mean, std = normalization(net)
        return cls(net, image_size, mean, std)

    @classmethod
    def from_checkpoint(cls, path: str | Path, trust_checkpoint: bool = False) -> FrozenCNNFeatures:
        from .utils import load_checkpoint_model

        model = load_checkpoint_model(path, trust_checkpoint=trust_checkpoint)
        net = model.net
        if hasattr(net, "members"):  # a Siamese ensemble: its first network's encoder
            net = net.members[0]
        net = getattr(net, "encoder", net)
        hp = model.hparams
        return cls(net, int(hp.image_size), hp.mean, hp.std)

    @torch.no_grad()
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network
        if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
            return net.forward_head(net.forward_features(x), pre_logits=True)
        return net(x)

    def transform_images(self, images: Sequence[np.ndarray] | Sequence[str | Path]) -> np.ndarray:
        from .data.images import load_image

        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = [load_image(x) if isinstance(x, str | Path) else x for x in images[start:start + self.batch_size]]
            out.append(self._embed(torch.stack([self.transform(im) for im in chunk])).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def __call__(self, images) -> np.ndarray:
        return self.transform_images(images)


def make_svm(C: float = 10.0, kernel: str = "rbf", gamma: str | float = "scale", seed: int = 0):
    """``StandardScaler`` → ``SVC`` with class-balanced weights."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(C=C, kernel=kernel, gamma=gamma, class_weight="balanced", random_state=seed))


def fit_predict_svm(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, **svm_kwargs) -> np.ndarray:
    """Fit :func:`make_svm` and predict; with a single training class, predicts that class."""
    classes = np.unique(train_y)
    if len(classes) == 1:
        return np.full(len(test_x), classes[0])
    return make_svm(**svm_kwargs).fit(train_x, train_y).predict(test_x)


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``acc``, ``mca`` and ``macro_f1`` by the house's one definition (:mod:`ana_lightning.metrics`)."""
    from .metrics import confusion_details, confusion_matrix

    labels = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    d = confusion_details(confusion_matrix(np.asarray(y_true).tolist(), np.asarray(y_pred).tolist(), labels))
    return {"acc": float(d["acc"]), "mca": float(d["mca"]), "macro_f1": float(d["macro_f1"])}


def svm_job(cfg) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the SVM baseline on the training split (+ val) of ``cfg.data`` and test it.

    ``cfg.svm``: ``features`` (``texture`` or ``cnn``), ``checkpoint`` (CNN features of a trained model;
    else ``backbone`` of :func:`create_backbone`, frozen at its initial/local weights), ``C``, ``kernel``.
    """
    from .pipeline import build_datamodule
    from .reports import plot_confusion_matrix, write_metrics_json

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(cfg, cache_images=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.write_reports(run_dir)
    svm_cfg = cfg.svm
    extractor: Callable
    if svm_cfg.features == "texture":
        extractor = TextureFeatures(size=int(svm_cfg.get("size") or cfg.data.image_size)).transform
    elif svm_cfg.features == "cnn":
        extractor = (FrozenCNNFeatures.from_checkpoint(svm_cfg.checkpoint, bool(cfg.get("trust_checkpoint"))) if svm_cfg.get("checkpoint")
                     else FrozenCNNFeatures.from_backbone(dict(svm_cfg.backbone), int(cfg.data.image_size)))
    else:
        raise ValueError(f"svm.features must be texture or cnn, got {svm_cfg.features!r}")
    fit_records = dm.splits["train"] + dm.splits["val"]  # no model selection here: val is training data
    test_records = dm.splits["test"]
    y_fit = dm.make_targets(fit_records).numpy()
    y_test = dm.make_targets(test_records).numpy()
    x_fit = extractor([r.path for r in fit_records])
    x_test = extractor([r.path for r in test_records])
    pred = fit_predict_svm(x_fit, y_fit, x_test, C=float(svm_cfg.C), kernel=str(svm_cfg.kernel))
    metrics = {f"test/{k}": v for k, v in _scores(y_test, pred).items()}
    # Per-image predictions (one-hot "probabilities") and bootstrap intervals, as for every other model:
    # a cross-validation sweep pools them (oof_predictions.csv).
    from types import SimpleNamespace

    from .reports import write_predictions
    from .stats import run_intervals

    onehot = torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), dm.num_classes).float()
    target = torch.as_tensor(y_test, dtype=torch.long)
    fake = SimpleNamespace(test_predictions={"index": torch.arange(len(pred)), "prob": onehot, "target": target})
    metrics.update(run_intervals(fake, test_records, metrics))
    write_predictions([r.path for r in test_records], onehot, target, dm.class_names, run_dir / "test_predictions.csv")
    write_metrics_json(metrics, run_dir / "metrics.json")
    from .metrics import confusion_matrix

    cm = confusion_matrix(y_test.tolist(), np.asarray(pred).tolist(), labels=list(range(dm.num_classes)))
    plot_confusion_matrix(cm, dm.class_names, run_dir / "test_confusion_matrix.png",
                          title=f"SVM ({svm_cfg.features}): MCA {metrics['test/mca']:.3f}")
    log.info("SVM on %s features: %s", svm_cfg.features, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics, {"datamodule": dm, "run_dir": run_dir, "prediction": pred}
