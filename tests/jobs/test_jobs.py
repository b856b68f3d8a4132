"""Jobs live in ana_lightning/jobs/; every config's ``job:`` resolves, and the old dotted paths still work."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_method

CONF = Path(__file__).resolve().parents[2] / "conf"  # packaged as ana_lightning.conf

# The dotted paths configs and users' scripts used before the jobs moved, and where each lives now.
OLD_TO_NEW = {
    "ana_lightning.predict.run_predict": "ana_lightning.jobs.predict.run_predict",
    "ana_lightning.export.run_export": "ana_lightning.jobs.export.run_export",
    "ana_lightning.app.run_app": "ana_lightning.jobs.app.run_app",
    "ana_lightning.compare.compare_job": "ana_lightning.jobs.compare.compare_job",
    "ana_lightning.baselines.svm_job": "ana_lightning.jobs.svm.svm_job",
    "ana_lightning.episodes.evaluate_episodes_job": "ana_lightning.jobs.episodes.evaluate_episodes_job",
    "ana_lightning.style_transfer.stylize_job": "ana_lightning.jobs.stylize.stylize_job",
    "ana_lightning.crossval.CVSummaryCallback": "ana_lightning.jobs.crossval.CVSummaryCallback",
    "ana_lightning.crossval.evaluate_sweep": "ana_lightning.jobs.crossval.evaluate_sweep",
    "ana_lightning.cross_dataset.evaluate_cross_dataset": "ana_lightning.jobs.cross_dataset.evaluate_cross_dataset",
    "ana_lightning.pretrain.train": "ana_lightning.jobs.pretrain.train",
    "ana_lightning.pipeline.train": "ana_lightning.jobs.train.train",
    "ana_lightning.pipeline.evaluate": "ana_lightning.jobs.evaluate.evaluate",
    "ana_lightning.pipeline.check_unseen": "ana_lightning.jobs.evaluate.check_unseen",
    "ana_lightning.hierarchy_jobs.train_level3": "ana_lightning.jobs.hierarchy.train_level3",
    "ana_lightning.hierarchy_jobs.evaluate_hierarchy": "ana_lightning.jobs.hierarchy.evaluate_hierarchy",
    "ana_lightning.pipeline.build_datamodule": "ana_lightning.jobs.common.build_datamodule",
    "ana_lightning.pipeline.build_trainer": "ana_lightning.jobs.common.build_trainer",
}


def _locate(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_dotted_paths_are_the_new_objects(old):
    assert _locate(old) is _locate(OLD_TO_NEW[old])
    if not old.endswith("Callback"):
        assert get_method(old) is _locate(OLD_TO_NEW[old])  # what `job: <old path>` in a user's YAML does


def test_unknown_names_still_raise_attribute_error():
    import ana_lightning.baselines as b
    import ana_lightning.predict as p

    for mod in (b, p):
        with pytest.raises(AttributeError, match="no_such_job"):
            mod.no_such_job  # noqa: B018


JOB_KEYS = {
    p.relative_to(CONF).as_posix(): line.split(":", 1)[1].split("#")[0].strip()
    for p in sorted(CONF.rglob("*.yaml"))
    for line in p.read_text().splitlines()
    if line.startswith("job:")
}


def test_the_configs_name_jobs_in_their_new_home():
    assert len(JOB_KEYS) >= 12 and all(v.startswith("ana_lightning.jobs.") for v in JOB_KEYS.values()), (
        JOB_KEYS
    )


@pytest.mark.parametrize("yaml", sorted(JOB_KEYS))
def test_every_job_key_of_the_configs_resolves(yaml):
    assert callable(get_method(JOB_KEYS[yaml]))


@pytest.mark.slow  # a fresh interpreter importing torch and lightning
def test_importing_a_library_module_does_not_import_the_jobs():
    code = (
        "import sys, ana_lightning.predict, ana_lightning.baselines, ana_lightning.style_transfer, "
        "ana_lightning.crossval, ana_lightning.export, ana_lightning.cross_dataset; "
        "print(sorted(m for m in sys.modules if m.startswith('ana_lightning.jobs.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_headline_says_the_figure_on_what_and_whether_it_saw_those_groups():
    from ana_lightning.data.records import ImageRecord
    from ana_lightning.jobs.common import headline

    recs = [ImageRecord(f"c{i}.png", ("AC-1",), group=f"s{i % 3}") for i in range(9)]
    m = {"test/mca": 0.7216, "test/mca_ci95_low": 0.6149, "test/mca_ci95_high": 0.8394, "test/acc": 0.5}
    clean = headline({**m, "test/shared_groups_with_train": 0.0}, "test", recs, "r/test_report.md")
    assert clean == (
        "test/mca 0.722 [0.615, 0.839], test/acc 0.500 on 9 images of 3 groups, none of them trained on; "
        "report: r/test_report.md"
    )
    leaky = headline(
        {**m, "test/shared_groups_with_train": 2.0, "test/images_in_train_groups": 6.0}, "test", recs, "r"
    )
    assert "2 of them shared with the training split (6 images): not a figure on unseen groups" in leaky
    # no groups, no flags (e.g. a whole folder), and another stage's keys
    ungrouped = [ImageRecord(f"c{i}.png", ("AC-1",)) for i in range(4)]
    assert (
        headline({"val/mca": 0.5}, "val", ungrouped, "r")
        == "val/mca 0.500 on 4 images (no groups); report: r"
    )


def test_test_loop_logged_as_restores_the_name_and_refuses_foreign_modules():
    import lightning as L

    from ana_lightning.jobs.common import test_loop_logged_as
    from ana_lightning.models.classifier import SoftmaxClassifier

    m = SoftmaxClassifier({"name": "test_resnet"}, ["AC-1", "AC-2"], image_size=32)
    with pytest.raises(RuntimeError, match="boom"), test_loop_logged_as(m, "val"):
        assert m.test_logged_as == "val"
        raise RuntimeError("boom")
    assert m.test_logged_as == "test"  # restored after an error inside
    with test_loop_logged_as(L.LightningModule(), "test"):
        pass  # the test split needs no renaming, whatever the module
    with pytest.raises(TypeError, match="LightningModule cannot log its test loop as 'val'"):
        with test_loop_logged_as(L.LightningModule(), "val"):
            pass
