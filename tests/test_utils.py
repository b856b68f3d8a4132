import os
import subprocess
import sys

from ana_lightning.resolvers import unique_run_name


def _names(n: int, env: dict | None = None) -> list[str]:
    code = "from ana_lightning.resolvers import unique_run_name; print(unique_run_name())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(n)
    ]
    return [p.communicate()[0].strip() for p in procs]


def test_run_folders_started_in_the_same_second_differ():
    names = _names(3)
    assert len(set(names)) == 3, names


def test_slurm_job_id_names_the_folder(monkeypatch):
    import os

    env = {**os.environ, "SLURM_JOB_ID": "4242"}
    env.pop("SLURM_ARRAY_JOB_ID", None)
    assert _names(2, env) == ["slurm-4242", "slurm-4242"]  # every rank of one job agrees
    unique_run_name.cache_clear()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert unique_run_name() == "slurm-77_3"
    unique_run_name.cache_clear()


def test_runs_log_no_adverts_for_lightnings_cloud_services():
    """Lightning logs "💡 Tip: … try installing litlogger" (and litmodels) on every Trainer: noise in an offline
    lab's log. The project's Trainer module filters them; Lightning's other messages stay."""
    import logging

    from lightning.pytorch.callbacks import ModelCheckpoint

    from ana_lightning.trainer import Trainer

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        Trainer(accelerator="cpu", logger=False, callbacks=[ModelCheckpoint()], enable_progress_bar=False)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert seen and not any("Tip:" in m for m in seen)  # "GPU available: …" and the like still come


def test_runs_do_not_warn_about_lightnings_use_of_a_deprecated_torch_class(tmp_path):
    """Lightning 2.6 constructs torch's deprecated LeafSpec in every fit and test loop: the FutureWarning is about
    Lightning's code, and the project's Trainer module silences that one message (other warnings stay)."""
    import warnings

    import torch

    from ana_lightning.models.classifier import SoftmaxClassifier
    from ana_lightning.trainer import Trainer

    from conftest import TINY_BACKBONE

    model = SoftmaxClassifier(backbone={"name": TINY_BACKBONE}, class_names=["AC-1", "AC-4"], image_size=32)
    data = [{"image": torch.rand(3, 32, 32), "target": i % 2, "index": i} for i in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).test(
            model, dataloaders=torch.utils.data.DataLoader(data, batch_size=2)
        )
        warnings.warn("a warning of the user's own still shows", FutureWarning, stacklevel=1)
    said = [str(w.message) for w in caught]
    assert not any("LeafSpec" in m for m in said) and "a warning of the user's own still shows" in said


def test_console_commands_answer_help_without_importing_torch():
    """``ana-train --help`` (and ``--cfg job``, a mistyped override) is answered in about a second: the
    console modules and the config resolvers import torch and Lightning only when a job runs."""
    commands = ["train", "eval", "predict", "export", "compare", "stylize", "app", "synth"]
    code = (
        "import sys, importlib\n"
        f"for c in {commands!r}:\n"
        "    importlib.import_module(f'ana_lightning.cli.{c}')\n"
        "sys.argv = ['ana-train', '--help']\n"
        "from ana_lightning.cli.train import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('imported:', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ana-train: train a model" in r.stdout and "== Configuration groups ==" in r.stdout
    assert "imported: []" in r.stdout, r.stdout[-500:]
