"""Hand-written checks of config values. That every YAML in conf/ composes, resolves and instantiates is
tested by tests/config/test_config_matrix.py, generated from the config folders."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import REPO, compose

CONF = REPO / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_reference_experiments_match_the_reference_repository(tmp_path):
    for name, backbone in (("single_resnet50", "resnet50"), ("single_efficientnet_b0", "efficientnet_b0")):
        cfg = compose("train", [f"experiment={name}", "data.root=/x"], output_dir=tmp_path)
        assert cfg.model.backbone.name == backbone
        assert cfg.data.image_size == 224 and cfg.data.batch_size == 32
        assert cfg.model.optimizer._target_ == "torch.optim.AdamW" and cfg.model.optimizer.lr == 1e-4
        assert cfg.class_weighted_loss is True
        assert cfg.monitor == "val/loss" and cfg.callbacks.early_stopping.monitor == "val/loss"
        assert cfg.model.backbone.pretrained is False


@pytest.mark.parametrize("option", _options("generator"))
def test_synth_generators_instantiate(option, tmp_path):
    """ana-synth's writers (conf/generator/) compose and instantiate as partials: nothing is written."""
    cfg = compose("synth", [f"generator={option}", f"generator.root={tmp_path / 'out'}"], output_dir=tmp_path)
    write = instantiate(cfg.generator)
    assert callable(write) and write.keywords["root"] == str(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_all_yaml_files_are_covered():
    groups = {p.parent.name for p in CONF.rglob("*.yaml")} - {"conf"}
    assert groups <= {
        "data",
        "model",
        "augmentation",
        "callbacks",
        "logger",
        "trainer",
        "paths",
        "hydra",
        "experiment",
        "debug",
        "hparams_search",
        "local",
        "launcher",
        "generator",
        "features",
    }, groups
    assert Path(CONF / "train.yaml").exists()
