"""Hand-written checks of config values. That every YAML in conf/ composes, resolves and instantiates is
tested by tests/test_config_matrix.py, generated from the config folders."""

from pathlib import Path

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


def test_all_yaml_files_are_covered():
    groups = {p.parent.name for p in CONF.rglob("*.yaml")} - {"conf"}
    assert groups <= {"data", "model", "augmentation", "callbacks", "logger", "trainer", "paths", "hydra",
                      "experiment", "debug", "hparams_search", "local", "launcher"}, groups
    assert Path(CONF / "train.yaml").exists()
