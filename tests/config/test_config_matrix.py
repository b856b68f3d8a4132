"""Tests generated from the config folders: a new YAML is tested without writing a test.

Every option of every config group (``conf/<group>/*.yaml``, ``conf/hydra/launcher/*.yaml``) and every
top-level config is found by listing the folders, then:

- **composes** (a group option with the top-level config that lists the group, ``train.yaml`` for most;
  ``generator`` with ``synth.yaml``), every value **resolves** (interpolations and
  resolvers), every ``_target_`` and ``job`` names something importable;
- the group's node **instantiates** (models build and run a forward pass, datamodules are constructed
  on a fixture folder when they need one, augmentations transform a batch, trainers, callbacks,
  loggers, launchers and the sweeper are built). A GPU trainer is composed only (no CUDA here): that
  case is a ``skip`` that says so;
- every ``conf/experiment/*.yaml`` composes, resolves, builds its datamodule and sets only model keys
  its model class takes (default suite), and runs its job with ``trainer.fast_dev_run=true``
  (``slow``), with CPU-sized overrides applied generically from the composed data node (image size,
  batch size, renders per class, …) and a fixture folder (tests/contest_fixtures.py) when the
  experiment needs a folder it cannot render itself.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from contest_fixtures import write_i3a2014_cells, write_icpr2012_contest
from hydra._internal.utils import _locate
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from conftest import REPO, write_class_images

CONF = REPO / "conf"
TOP_LEVEL = sorted(p.stem for p in CONF.glob("*.yaml"))
# group (as Hydra names it) -> its options, found by listing the folders
GROUP_OPTIONS = sorted(
    (p.parent.relative_to(CONF).as_posix(), p.stem)
    for p in CONF.rglob("*.yaml")
    if p.parent != CONF and p.parent.name != "local"
)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# fixture writers by the data node's `reader` (a layout a datamodule cannot render itself)
FIXTURES = {
    "folder": lambda root: write_class_images(root, {"AC-1": 8, "AC-2": 8, "AC-3": 8}, size=40),
    "icpr2012": lambda root: write_icpr2012_contest(root),
    "i3a2014": lambda root: write_i3a2014_cells(root, per_class=6, specimens_per_class=3),
}
# CPU sizes, applied to whichever of these keys the composed data node has
CPU_DATA = {
    "image_size": 32,
    "batch_size": 4,
    "num_workers": 0,
    "n_per_class": 6,
    "render_size": 64,
    "n_hospital": 24,
    "n_patients": 8,
    "cells_per_field": 1,  # synthetic cells: a rendered field is a specimen group, so 6 per class fill 3 splits
    "group_min_size": 2,
}


def compose_full(config_name: str, overrides: list[str], tmp: Path) -> DictConfig:
    """Compose as the console commands do, keeping the ``hydra`` node (launcher, sweeper)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from ana_lightning.resolvers import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="ana_lightning.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp / "run")
        cfg.hydra.runtime.cwd = str(tmp)
        if "paths" in cfg:
            cfg.paths.root_dir = str(tmp)
            cfg.paths.output_dir = str(tmp / "run")
    HydraConfig.instance().set_config(cfg)
    return cfg


def without_hydra(cfg: DictConfig) -> DictConfig:
    out = cfg.copy()
    with open_dict(out):
        del out["hydra"]
    return out


def resolve_all(node: Any, where: str = "") -> None:
    """Resolve every value (a mandatory ``???`` left for the user is fine; a broken interpolation is not)."""
    if isinstance(node, (DictConfig, ListConfig)):
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for k in keys:
            try:
                child = node[k]
            except (MissingMandatoryValue, InterpolationToMissingValueError):
                continue
            resolve_all(child, f"{where}.{k}" if where else str(k))


def check_targets(node: Any, where: str = "") -> int:
    """Every ``_target_`` (and ``job``) names an importable object; returns how many were checked."""
    n = 0
    if isinstance(node, DictConfig):
        for k in node.keys():
            if k in ("_target_", "job") and isinstance(node.get(k), str):
                try:
                    (_locate if k == "_target_" else get_method)(node[k])
                except Exception as e:  # noqa: BLE001 - reported with where it is
                    raise AssertionError(f"{where}.{k}={node[k]!r} cannot be imported: {e}") from e
                n += 1
            else:
                try:
                    n += check_targets(node[k], f"{where}.{k}" if where else str(k))
                except (MissingMandatoryValue, InterpolationToMissingValueError):
                    continue
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            n += check_targets(child, f"{where}[{i}]")
    return n


def gpu_shortfall(trainer: DictConfig) -> str | None:
    """Why this machine cannot build the Trainer: too few CUDA devices for ``accelerator``/``devices``; else None.

    ``trainer=ddp`` asks for 4 GPUs: on a one-GPU machine (the lent H200) it is skipped, not failed.
    """
    if str(trainer.get("accelerator")) not in ("gpu", "cuda"):
        return None
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = trainer.get("devices")
    if isinstance(devices, int) and devices > 0:
        want = devices
    elif isinstance(devices, (list, ListConfig)):
        want = len(devices)
    else:  # "auto", -1: every GPU there is, at least one
        want = 1
    if have >= want:
        return None
    return f"needs {want} CUDA device(s) (accelerator={trainer.accelerator}, devices={devices}), this machine has {have}"


def build_datamodule(cfg: DictConfig, tmp: Path, **kwargs: Any) -> Any:
    """The composed datamodule; a layout that needs a folder gets the fixture folder for its reader."""
    for key, folder in fixture_roots(cfg, tmp).items():
        with open_dict(cfg):
            cfg.data[key] = folder
    return instantiate(cfg.data, **kwargs)


def write_hospital(root: Path) -> Path:
    """``<patient>/<AC codes>/<images>``: four patients, single- and multi-pattern folders."""
    for p in range(4):
        write_class_images(
            root / f"patient{p:02d}", {"AC-1": 2, "AC-1 + AC-4": 2, "AC-4": 2}, size=40, seed=p
        )
    return root


def fixture_roots(cfg: DictConfig, tmp: Path) -> dict[str, str]:
    """``{data key: fixture folder}`` for the folders this data node needs and does not render itself:
    ``data.root`` when it is ``???``, else whatever root the constructor's error names."""
    import re

    data = cfg.data
    reader = data.get("reader", "folder")
    if OmegaConf.is_missing(data, "root"):
        key = "root"
    else:
        try:
            instantiate(data)  # constructor only: does this layout need a folder?
            return {}
        except Exception as e:  # noqa: BLE001 - only "needs data.<...root>" is an answer, the rest is raised
            found = re.search(r"data\.(\w*root)\b", str(e))
            if not found:
                raise
            key = found.group(1)
    writer = write_hospital if key == "hospital_root" else FIXTURES[reader]
    root = tmp / f"fixture_{key}_{reader}"
    if not root.exists():
        writer(root)
    return {key: str(root)}


def model_class_names(cfg: DictConfig) -> list[str]:
    if cfg.data.get("level") == "contest" and cfg.data.get("reader") == "icpr2012":
        from contest_fixtures import ICPR2012_CLASSES

        return list(ICPR2012_CLASSES)
    if cfg.data.get("level") == "contest":
        from contest_fixtures import I3A_CLASSES

        return list(I3A_CLASSES)
    return ["AC-1", "AC-2", "AC-3"]


def build_model(cfg: DictConfig, image_size: int = 32) -> torch.nn.Module:
    """The composed model, given what a datamodule would give it; checked with one forward pass."""
    names = model_class_names(cfg)
    params = inspect.signature(_locate(cfg.model._target_)).parameters
    kwargs = {"class_names": names}
    if "image_size" in params:
        kwargs["image_size"] = image_size
    model = instantiate(cfg.model, **kwargs)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, image_size, image_size))
    logits = out[-1] if isinstance(out, (list, tuple)) else out
    if isinstance(logits, dict):
        logits = next(iter(logits.values()))
    assert torch.isfinite(logits).all() and logits.shape[0] == 2
    return model


# ---------------------------------------------------------------------------------------------------
# Fast layer (default suite): compose, resolve, import every target, instantiate each group option
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_config_composes_resolves_and_targets_import(name, tmp_path):
    cfg = compose_full(name, [], tmp_path)
    resolve_all(without_hydra(cfg))
    assert check_targets(cfg) > 0  # at least the job or a _target_


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_group_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_option(group, option, tmp_path)
    resolve_all(cfg)
    check_targets(cfg)
    key = group.split("/")[-1]
    run = without_hydra(cfg)
    if group == "model":
        build_model(run)
    elif group == "data":
        dm = build_datamodule(run, tmp_path)
        assert isinstance(dm, _locate(run.data._target_))
    elif group == "augmentation":
        node = run.augmentation
        assert node.get("train") or node.get("batch") or option == "none", f"augmentation={option} is empty"
        if node.get("train"):
            import albumentations as A

            out = A.Compose(instantiate(node.train))(image=np.full((40, 40, 3), 100, np.uint8))["image"]
            assert out.shape[-1] == 3
        if node.get("batch"):
            aug = instantiate(node.batch)
            x = torch.rand(4, 3, 32, 32)
            y = aug.train()(x) if hasattr(aug, "train") else aug(x)
            assert y.shape == x.shape and torch.isfinite(y).all()
    elif group in ("trainer", "debug"):
        if why := gpu_shortfall(run.trainer):
            pytest.skip(
                f"{group}={option} {why}: composed, resolved, targets imported; the Trainer is not built"
            )
        trainer = instantiate(run.trainer, logger=False, enable_checkpointing=False)
        for k in ("max_epochs", "num_nodes", "fast_dev_run"):
            if run.trainer.get(k) not in (None, False) and hasattr(trainer, k):
                assert getattr(trainer, k) == run.trainer[k] or k == "fast_dev_run", k
    elif group in ("callbacks", "logger"):
        objs = [instantiate(v) for v in run[key].values() if isinstance(v, DictConfig) and "_target_" in v]
        assert objs or option == "none", f"{group}={option} instantiates nothing"
    elif group == "paths":
        for k, v in run.paths.items():
            assert isinstance(v, str) and v, f"paths.{k} resolves to {v!r}"
    elif group == "hydra/launcher":
        launcher = instantiate(cfg.hydra.launcher)
        assert type(launcher).__name__ in cfg.hydra.launcher._target_
    elif group == "hparams_search":
        check_search_space(cfg)
        instantiate(cfg.hydra.sweeper)
    elif group == "experiment":  # the model is built and trained in the slow layer (fast_dev_run)
        build_datamodule(run, tmp_path)
        check_model_keys(run)
    elif group == "hydra":
        assert cfg.hydra.run.dir and cfg.hydra.sweep.dir
    else:  # any other group (e.g. svm/features): every _target_ node under its package builds without arguments
        node = OmegaConf.select(run, group.replace("/", "."))
        assert isinstance(node, DictConfig), f"conf/{group}/{option}.yaml composes to nothing at {group}"
        built = instantiate_all(node)
        assert built, f"conf/{group}/{option}.yaml has no _target_ to instantiate"


def check_model_keys(cfg: DictConfig) -> None:
    """The model keys an experiment sets are arguments its model class takes (without building it)."""
    target = _locate(cfg.model._target_)
    keys = {k for k in cfg.model if not str(k).startswith("_")}
    kwargs = dict.fromkeys(keys | {"class_names"})
    try:
        inspect.signature(target).bind_partial(**kwargs)
    except TypeError as e:
        raise AssertionError(f"model keys {sorted(keys)} do not fit {cfg.model._target_}: {e}") from e


def home_config(group: str) -> str:
    """The top-level config whose defaults list names ``group`` (``train`` first; e.g. ``generator`` is
    ``synth``'s); ``train`` for a group none lists (hydra/launcher, svm/features, …)."""
    import yaml

    for name in ["train", *TOP_LEVEL]:
        defaults = yaml.safe_load((CONF / f"{name}.yaml").read_text()).get("defaults") or []
        listed = {
            str(next(iter(d))).removeprefix("optional ").lstrip("/") for d in defaults if isinstance(d, dict)
        }
        if group in listed:
            return name
    return "train"


def compose_option(group: str, option: str, tmp: Path) -> DictConfig:
    """The group's home config (:func:`home_config`) with ``group=option``; a group it does not list is
    appended (``+group=option``)."""
    from hydra.errors import ConfigCompositionException

    home = home_config(group)
    try:
        return compose_full(home, [f"{group}={option}"], tmp)
    except ConfigCompositionException as e:
        if "+" not in str(e):  # Hydra suggests '+group=option' for a group outside the defaults list
            raise
        return compose_full(home, [f"+{group}={option}"], tmp)


def instantiate_all(node: Any) -> list[Any]:
    """Instantiate every outermost ``_target_`` node under ``node``."""
    if isinstance(node, DictConfig) and "_target_" in node:
        return [instantiate(node)]
    children = node.values() if isinstance(node, DictConfig) else node if isinstance(node, ListConfig) else []
    return [obj for child in children for obj in instantiate_all(child)]


def check_search_space(cfg: DictConfig) -> None:
    """Each swept key exists in the composed config, and each swept group option is a YAML in its folder."""
    import re

    for key, space in cfg.hydra.sweeper.params.items():
        if (CONF / key).is_dir():
            for choice in re.findall(r"[\w/.-]+", re.sub(r"^\s*choice\((.*)\)\s*$", r"\1", str(space))):
                assert (CONF / key / f"{choice}.yaml").is_file(), (
                    f"hydra.sweeper.params.{key}: no conf/{key}/{choice}.yaml"
                )
        else:
            assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", (
                f"hydra.sweeper.params.{key}: no such key"
            )


def test_the_matrix_finds_every_group():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {
        "model",
        "data",
        "augmentation",
        "trainer",
        "logger",
        "callbacks",
        "debug",
        "paths",
        "hparams_search",
        "hydra/launcher",
        "experiment",
    } <= groups
    assert len(GROUP_OPTIONS) == len(
        [p for p in CONF.rglob("*.yaml") if p.parent not in (CONF, CONF / "local")]
    )


# ---------------------------------------------------------------------------------------------------
# Slow layer: every experiment runs its job with trainer.fast_dev_run=true
# ---------------------------------------------------------------------------------------------------


def cpu_overrides(experiment: str, tmp: Path) -> list[str]:
    """CPU-sized overrides for an experiment, from the keys its composed data node has."""
    cfg = without_hydra(compose_full("train", [f"experiment={experiment}"], tmp))
    out = [
        f"experiment={experiment}",
        "trainer.fast_dev_run=true",
        "callbacks.rich_progress_bar=null",
        "+trainer.enable_model_summary=false",
        f"paths.data_dir={tmp / 'data'}",
    ]
    out += [f"data.{k}={v}" for k, v in CPU_DATA.items() if k in cfg.data]
    out += [f"data.{k}={v}" for k, v in fixture_roots(cfg, tmp).items()]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, tmp_path):
    overrides = cpu_overrides(experiment, tmp_path)
    cfg = without_hydra(compose_full("train", overrides, tmp_path))
    assert cfg.trainer.fast_dev_run is True
    job = get_method(cfg.get("job") or "ana_lightning.pipeline.train")
    metrics, _ = job(cfg)
    assert metrics, f"experiment={experiment}: the job returned no metrics"
    # an undefined metric on a one-batch test split may be nan (e.g. at_least_3_correct with no 3-label image);
    # the monitored metric and at least one test metric must be numbers
    if cfg.get("monitor") in metrics:
        assert np.isfinite(metrics[cfg.monitor]), (cfg.monitor, metrics)
    if cfg.get("test", True):
        assert any("test/" in k and np.isfinite(v) for k, v in metrics.items()), metrics


def test_gpu_shortfall_skips_a_trainer_asking_for_more_gpus_than_the_machine_has(monkeypatch):
    # the lent one-GPU H200 built trainer=gpu but failed trainer=ddp / multinode (devices: 4) instead of skipping them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_shortfall(OmegaConf.create({"accelerator": "gpu", "devices": 1})) is None
    assert gpu_shortfall(OmegaConf.create({"accelerator": "gpu", "devices": "auto"})) is None
    why = gpu_shortfall(OmegaConf.create({"accelerator": "gpu", "devices": 4}))
    assert why and "needs 4 CUDA device(s)" in why and "has 1" in why
    assert "needs 2" in gpu_shortfall(OmegaConf.create({"accelerator": "cuda", "devices": [0, 1]}))
    assert gpu_shortfall(OmegaConf.create({"accelerator": "cpu", "devices": 4})) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "has 0" in gpu_shortfall(OmegaConf.create({"accelerator": "gpu", "devices": 1}))
