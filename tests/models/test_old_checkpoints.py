"""Checkpoints written before the LightningModule base (``models/base.py``) still load, and new ones
keep their layout.

``LAYOUTS`` is what the pre-refactor code (main at fe1b8fc) wrote for each LightningModule, read from
checkpoints it saved: the hyperparameters, the ``ana_lightning`` metadata and the state-dict keys
(the timm parts listed by prefix, the rest with shape and dtype). The fixture writes such a file from
plain timm networks and random tensors, without this package's model classes.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from ana_lightning.utils import load_checkpoint_model

# fmt: off
LAYOUTS = {'softmax': {'timm': [('net.', 3)],
             'extra': [],
             'hparams': {'backbone': {'name': 'test_resnet', 'pretrained': False, 'weights': None},
                         'class_names': ['AC-1', 'AC-2', 'AC-3'],
                         'scheduler_interval': 'epoch',
                         'class_weights': None,
                         'label_smoothing': 0.0,
                         'image_size': 32,
                         'mean': [0.5, 0.5, 0.5],
                         'std': [0.5, 0.5, 0.5],
                         'temperature': [1.5]},
             'meta': {'class_path': 'ana_lightning.models.classifier.SoftmaxClassifier',
                      'task': 'single_label',
                      'class_names': ['AC-1', 'AC-2', 'AC-3'],
                      'temperature': [1.5]}},
 'sigmoid': {'timm': [('net.members.0.', 3), ('net.members.1.', 3)],
             'extra': [('thresholds', (3,), 'float32')],
             'hparams': {'class_names': ['AC-1', 'AC-2', 'AC-3'],
                         'backbones': [{'name': 'test_resnet', 'pretrained': False, 'weights': None},
                                       {'name': 'test_resnet', 'pretrained': False, 'weights': None}],
                         'scheduler_interval': 'epoch',
                         'pos_weight': None,
                         'combine': 'logits',
                         'decision_rule': 'per_class',
                         'threshold': 0.5,
                         'image_size': 32,
                         'mean': [0.5, 0.5, 0.5],
                         'std': [0.5, 0.5, 0.5],
                         'temperature': [1.5]},
             'meta': {'class_path': 'ana_lightning.models.multilabel.SigmoidEnsemble',
                      'task': 'multi_label',
                      'class_names': ['AC-1', 'AC-2', 'AC-3'],
                      'decision_rule': 'per_class',
                      'thresholds': [0.3, 0.4, 0.6],
                      'temperature': [1.5]}},
 'siamese': {'timm': [('net.members.0.encoder.', 0), ('net.members.1.encoder.', 0)],
             'extra': [('net.members.0.support_embeddings', (8, 128), 'float32'),
                       ('net.members.0.support_labels', (8,), 'int64'),
                       ('net.members.0.projection.1.weight', (128, 96), 'float32'),
                       ('net.members.0.projection.1.bias', (128,), 'float32'),
                       ('net.members.0.head.raw_weight', (128,), 'float32'),
                       ('net.members.0.head.bias', (), 'float32'),
                       ('net.members.1.support_embeddings', (8, 128), 'float32'),
                       ('net.members.1.support_labels', (8,), 'int64'),
                       ('net.members.1.projection.1.weight', (128, 96), 'float32'),
                       ('net.members.1.projection.1.bias', (128,), 'float32'),
                       ('net.members.1.head.raw_weight', (128,), 'float32'),
                       ('net.members.1.head.bias', (), 'float32')],
             'hparams': {'backbone': {'name': 'test_resnet', 'pretrained': False, 'weights': None},
                         'class_names': ['AC-1', 'AC-2'],
                         'dropout_rates': [0.1, 0.3],
                         'embed_dim': 128,
                         'loss': 'bce',
                         'margin': 1.0,
                         'hard_negatives': False,
                         'self_pairs': True,
                         'scoring': 'mean',
                         'scheduler_interval': 'epoch',
                         'image_size': 32,
                         'mean': [0.5, 0.5, 0.5],
                         'std': [0.5, 0.5, 0.5],
                         'temperature': [1.5]},
             'meta': {'class_path': 'ana_lightning.models.siamese.SiameseClassifier',
                      'task': 'single_label',
                      'class_names': ['AC-1', 'AC-2'],
                      'temperature': [1.5],
                      'support_size': 8}},
 'multihead': {'timm': [('net.encoder.', 0)],
               'extra': [('net.heads.0.weight', (1, 96), 'float32'),
                         ('net.heads.0.bias', (1,), 'float32'),
                         ('net.heads.1.weight', (2, 96), 'float32'),
                         ('net.heads.1.bias', (2,), 'float32'),
                         ('net.heads.2.weight', (3, 96), 'float32'),
                         ('net.heads.2.bias', (3,), 'float32')],
               'hparams': {'backbone': {'name': 'test_resnet', 'pretrained': False, 'weights': None},
                           'class_names': ['AC-1', 'AC-4', 'AC-5'],
                           'level1_names': ['nuclear'],
                           'level2_names': ['homogeneous', 'speckled'],
                           'tree': None,
                           'consistency_weight': 0.5,
                           'routing': 'product',
                           'scheduler_interval': 'epoch',
                           'class_weights': None,
                           'label_smoothing': 0.0,
                           'image_size': 32,
                           'mean': [0.5, 0.5, 0.5],
                           'std': [0.5, 0.5, 0.5],
                           'temperature': [1.5, 1.5, 1.5]},
               'meta': {'class_path': 'ana_lightning.models.hierarchical.MultiHeadClassifier',
                        'task': 'hierarchical',
                        'class_names': ['AC-1', 'AC-4', 'AC-5'],
                        'level1_names': ['nuclear'],
                        'level2_names': ['homogeneous', 'speckled'],
                        'groups': [['homogeneous', ['AC-1']], ['speckled', ['AC-4', 'AC-5']]],
                        'routing': 'product',
                        'temperature': [1.5, 1.5, 1.5]}}}
# fmt: on

_NOT_ARGS = ("mean", "std", "temperature")


def _old_state_dict(kind: str) -> dict[str, torch.Tensor]:
    spec = LAYOUTS[kind]
    torch.manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for prefix, k in spec["timm"]:
        sd.update(
            {prefix + n: v for n, v in timm.create_model("test_resnet", num_classes=k).state_dict().items()}
        )
    for key, shape, dtype in spec["extra"]:
        if dtype == "int64":
            sd[key] = torch.arange(shape[0]) % len(spec["hparams"]["class_names"])
        elif key == "thresholds":
            sd[key] = torch.tensor(spec["meta"]["thresholds"])
        else:
            sd[key] = torch.randn(shape)
    return sd


@pytest.fixture(params=list(LAYOUTS))
def old_checkpoint(request, tmp_path):
    kind = request.param
    spec = LAYOUTS[kind]
    path = tmp_path / f"{kind}.ckpt"
    torch.save(
        {
            "state_dict": _old_state_dict(kind),
            "hyper_parameters": copy.deepcopy(spec["hparams"]),
            "ana_lightning": copy.deepcopy(spec["meta"]),
            "hparams_name": "kwargs",
            "pytorch-lightning_version": "2.6.0",
            "epoch": 0,
            "global_step": 1,
        },
        path,
    )
    return kind, path


def test_an_old_checkpoint_loads_strictly_and_predicts(old_checkpoint):
    kind, path = old_checkpoint
    spec = LAYOUTS[kind]
    model = load_checkpoint_model(path)  # load_from_checkpoint is strict: every saved tensor has its place
    assert f"{type(model).__module__}.{type(model).__name__}" == spec["meta"]["class_path"]
    assert model.class_names == spec["hparams"]["class_names"]
    assert model.hparams["temperature"] == spec["meta"]["temperature"]
    x = torch.randn(4, 3, 32, 32)
    p = model.predict_proba(x)
    assert p.shape == (4, len(model.class_names)) and torch.isfinite(p).all()
    if kind == "softmax":  # the same numbers as the plain timm network at the stored temperature
        net = timm.create_model("test_resnet", num_classes=3).eval()
        net.load_state_dict({k.removeprefix("net."): v for k, v in _old_state_dict(kind).items()})
        with torch.no_grad():
            assert torch.allclose(p, (net(x) / 1.5).softmax(-1), atol=1e-6)
    if kind == "sigmoid":
        assert model.thresholds.tolist() == pytest.approx(spec["meta"]["thresholds"])
        assert model.hparams.decision_rule == "per_class"
    if kind == "siamese":
        assert all(len(m.support_labels) == spec["meta"]["support_size"] for m in model.net.members)
        assert torch.allclose(p.sum(1), torch.ones(4))
    if kind == "multihead":
        assert [q.shape[1] for q in model.predict_level_proba(x)] == [1, 2, 3]


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_a_new_checkpoint_has_the_old_layout(kind):
    """Same hyperparameters, metadata and state-dict keys as before: old code could read it too."""
    from hydra.utils import get_class

    spec = LAYOUTS[kind]
    cls = get_class(spec["meta"]["class_path"])
    model = cls(**{k: v for k, v in spec["hparams"].items() if k not in _NOT_ARGS})
    model.set_temperature(spec["meta"]["temperature"])
    if kind == "siamese":
        n = spec["meta"]["support_size"]
        model.net.set_support([torch.randn(n, 128) for _ in model.net.members], torch.arange(n) % 2)
    if kind == "sigmoid":
        model.thresholds.copy_(torch.tensor(spec["meta"]["thresholds"]))
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    assert ckpt["ana_lightning"] == spec["meta"]
    assert dict(model.hparams) == spec["hparams"]
    own = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    old = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in _old_state_dict(kind).items()}
    assert own == old
