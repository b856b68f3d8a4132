import subprocess
import sys

from ana_lightning.utils import unique_run_name


def _names(n: int, env: dict | None = None) -> list[str]:
    code = "from ana_lightning.utils import unique_run_name; print(unique_run_name())"
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
