"""Every YAML in conf/ composes, and every group option instantiates (tests find new YAMLs by glob)."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import REPO, compose

CONF = REPO / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", ["train", "eval"])
def test_top_level_composes(name, tmp_path):
    cfg = compose(name, ["ckpt_path=x.ckpt"] if name == "eval" else [], output_dir=tmp_path)
    assert cfg.paths.output_dir == str(tmp_path)


@pytest.mark.parametrize("option", _options("model"))
def test_models_instantiate(option, tmp_path):
    cfg = compose("train", [f"model={option}"], output_dir=tmp_path)
    model = instantiate(cfg.model, class_names=["AC-1", "AC-2"], image_size=64)
    assert model.net(__import__("torch").zeros(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("group", ["augmentation", "callbacks", "logger", "trainer"])
def test_group_options_instantiate(group, tmp_path):
    for option in _options(group):
        cfg = compose("train", [f"{group}={option}"], output_dir=tmp_path)
        node = cfg[group]
        if group == "trainer":
            if option in ("gpu", "ddp", "multinode"):  # no GPU here: check the composed values only
                assert node.accelerator == "gpu"
                continue
            instantiate(node)
        elif group == "augmentation":
            if node.train:
                assert all(callable(t) for t in instantiate(node.train))
        else:
            objs = [instantiate(v) for v in node.values() if v is not None and "_target_" in v]
            assert objs, f"{group}={option} instantiates nothing"


@pytest.mark.parametrize("option", _options("data"))
def test_data_options_compose(option, tmp_path):
    cfg = compose("train", [f"data={option}", "data.root=/somewhere"] if option != "synthetic" else [], output_dir=tmp_path)
    assert cfg.data._target_.startswith("ana_lightning.data.")


@pytest.mark.parametrize("option", _options("experiment") + [f"debug/{d}" for d in _options("debug")])
def test_experiments_and_debug_compose(option, tmp_path):
    key = "debug" if option.startswith("debug/") else "experiment"
    cfg = compose("train", [f"{key}={option.split('/')[-1]}"], output_dir=tmp_path)
    assert cfg.trainer._target_


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
    assert groups <= {"data", "model", "augmentation", "callbacks", "logger", "trainer", "paths", "hydra",
                      "experiment", "debug", "hparams_search", "local", "launcher", "generator"}, groups
    assert Path(CONF / "train.yaml").exists()
