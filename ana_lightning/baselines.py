"""Classical baselines: an SVM (scikit-learn) on handcrafted texture features or on frozen CNN features.

- :class:`TextureFeatures`: multi-scale uniform LBP histograms, grey-level co-occurrence (GLCM)
  properties averaged over four directions, and an intensity histogram with moments — all from
  scikit-image, on the grey image resized to a fixed size.
- :class:`FrozenCNNFeatures`: pooled features of a timm network (a trained checkpoint's, or a backbone
  config's), never updated.
- :func:`make_svm`: ``StandardScaler`` → ``SVC`` (RBF, class-balanced), the classical HEp-2 baseline.
- :func:`feature_set`: the feature set a config names (a ``_target_`` config, or the older
  ``svm.features=texture|cnn`` strings).

Both feature sets answer ``extract(images) -> (N, D) array``. The job behind ``ana-train
experiment=svm_baseline`` is :func:`ana_lightning.jobs.svm.svm_job` (``svm_job`` is still importable
from here: a lazy re-export, so this module does not import the jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = ["TextureFeatures", "FrozenCNNFeatures", "feature_set", "make_svm", "fit_predict_svm"]

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

    name = "texture"
    GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")

    def __init__(
        self,
        size: int = 128,
        lbp: Sequence[tuple[int, int]] = ((8, 1), (16, 2), (24, 3)),
        glcm_distances: Sequence[int] = (1, 2, 4, 8),
        glcm_levels: int = 32,
        hist_bins: int = 16,
    ):
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
        glcm = graycomatrix(
            q, self.glcm_distances, angles, levels=self.glcm_levels, symmetric=True, normed=True
        )
        feats += [
            graycoprops(glcm, prop).mean(axis=1) for prop in self.GLCM_PROPS
        ]  # per distance, over angles
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

    def extract(self, images: Sequence[np.ndarray] | Sequence[str | Path]) -> np.ndarray:
        """``(N, D)`` features of images or image paths (the interface the SVM job uses)."""
        return self.transform(images)


class FrozenCNNFeatures:
    """Pooled features of a frozen timm network: ``from_checkpoint`` (any ana-lightning checkpoint
    with a timm ``net``/``encoder``) or a ``backbone`` config of :func:`create_backbone`; from a config,
    :meth:`build` (``conf/svm/features/cnn.yaml``)."""

    name = "cnn"

    def __init__(
        self,
        network: torch.nn.Module,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 64,
    ):
        from .data.transforms import build_transform

        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.transform = build_transform(image_size, None, mean, std)
        self.batch_size = batch_size

    @classmethod
    def build(
        cls,
        checkpoint: str | Path | None = None,
        backbone: Mapping[str, Any] | None = None,
        image_size: int = 224,
        trust_checkpoint: bool = False,
    ) -> FrozenCNNFeatures:
        """The features of ``checkpoint`` (a trained ana-lightning model, frozen) or, without one, of
        ``backbone`` (a :func:`create_backbone` config) at ``image_size``: the keys of the CNN feature config."""
        if checkpoint:
            return cls.from_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
        if not backbone:
            raise ValueError("svm.features: the CNN features need a checkpoint or a backbone config")
        return cls.from_backbone(backbone, image_size=image_size)

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
            chunk = [
                load_image(x) if isinstance(x, str | Path) else x
                for x in images[start : start + self.batch_size]
            ]
            out.append(self._embed(torch.stack([self.transform(im) for im in chunk])).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def __call__(self, images: Sequence[np.ndarray] | Sequence[str | Path]) -> np.ndarray:
        return self.transform_images(images)

    def extract(self, images: Sequence[np.ndarray] | Sequence[str | Path]) -> np.ndarray:
        """``(N, D)`` features of images or image paths (the interface the SVM job uses)."""
        return self.transform_images(images)


#: The older ``svm.features`` strings and the ``_target_`` each stands for.
LEGACY_FEATURES = {
    "texture": "ana_lightning.baselines.TextureFeatures",
    "cnn": "ana_lightning.baselines.FrozenCNNFeatures.build",
}


def feature_set(
    svm: Mapping[str, Any], image_size: int, trust_checkpoint: bool = False
) -> TextureFeatures | FrozenCNNFeatures:
    """The feature extractor ``svm.features`` names: a ``_target_`` config (``conf/svm/features/*.yaml``),
    built with ``hydra.utils.instantiate``; or one of the strings the config took before
    (``svm.features=texture`` with ``svm.size``; ``svm.features=cnn`` with ``svm.checkpoint`` /
    ``svm.backbone``), built into the same objects."""
    from omegaconf import DictConfig, OmegaConf

    from .utils import build

    features = svm.get("features")
    if isinstance(features, str):
        if features not in LEGACY_FEATURES:
            raise ValueError(f"svm.features must be texture or cnn (or a _target_ config), got {features!r}")
        if features == "texture":
            spec: dict[str, Any] = {"size": int(svm.get("size") or image_size)}
        else:
            backbone = svm.get("backbone")
            spec = {
                "checkpoint": svm.get("checkpoint"),
                "image_size": int(image_size),
                "trust_checkpoint": trust_checkpoint,
                "backbone": OmegaConf.to_container(backbone)
                if isinstance(backbone, DictConfig)
                else backbone,
            }
        return build({"_target_": LEGACY_FEATURES[features], **spec})
    if not isinstance(features, Mapping | DictConfig) or "_target_" not in features:
        raise ValueError(
            f"svm.features must be a _target_ config (svm/features=texture|cnn) or texture|cnn, got {features!r}"
        )
    return build(features)


def __getattr__(name: str) -> Any:
    """``svm_job`` (the job of ``experiment=svm_baseline``) now lives in :mod:`ana_lightning.jobs.svm`."""
    if name == "svm_job":
        from .jobs.svm import svm_job

        return svm_job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_svm(C: float = 10.0, kernel: str = "rbf", gamma: str | float = "scale", seed: int = 0) -> Pipeline:
    """``StandardScaler`` → ``SVC`` with class-balanced weights."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(
        StandardScaler(), SVC(C=C, kernel=kernel, gamma=gamma, class_weight="balanced", random_state=seed)
    )


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
