"""Hydra launcher plugin of ana-lightning: hydra-submitit-launcher's SLURM launcher that also works on
clusters without SLURM accounting.

submitit follows its jobs with ``sacct``. Where accounting is off (``AccountingStorageType=
accounting_storage/none``, common on small clusters) every poll printed "Bypassing sacct error", and
a job that died without writing its result (killed, node lost) was never seen to end. This launcher
checks ``sacct`` once per sweep; when it does not answer, it follows the jobs with ``squeue``
instead (a job that ``squeue`` no longer lists has ended). ``conf/hydra/launcher/submitit_slurm.yaml``
names it; every other behaviour is the plugin's.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

__all__ = ["SlurmLauncher", "accounting_error"]

log = logging.getLogger(__name__)

# squeue states after which the job runs no more (the others: pending, running, requeued, ...)
_ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
    "REVOKED",
}


def accounting_error() -> str | None:
    """None when ``sacct`` answers, else what it said (e.g. "Slurm accounting storage is disabled")."""
    try:
        proc = subprocess.run(
            ["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"sacct exited with {proc.returncode}")


def _squeue_watcher():
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueInfoWatcher(SlurmInfoWatcher):
        """submitit's job watcher reading ``squeue`` (pending and running jobs) instead of ``sacct``."""

        def _make_command(self) -> list[str] | None:
            if not self._registered - self._finished:
                return None
            import getpass

            return ["squeue", "--noheader", "--array", f"--user={getpass.getuser()}", "--format=%i|%T|%N"]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            text = string.decode() if isinstance(string, bytes) else string
            listed: dict[str, dict[str, str]] = {}
            for line in text.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    job, state, nodes = parts
                    state = (
                        state
                        if state in _ENDED or state in ("PENDING", "REQUEUED", "PREEMPTED")
                        else "RUNNING"
                    )
                    listed[job] = {"JobID": job, "State": state, "NodeList": nodes}
            for job in self._registered - self._finished - set(listed):
                listed[job] = {
                    "JobID": job,
                    "State": "COMPLETED",
                    "NodeList": "",
                }  # gone from the queue: ended
            return listed

    return SqueueInfoWatcher


class SlurmLauncher(_SubmititSlurmLauncher):
    """``hydra/launcher=submitit_slurm``: submitit's SLURM launcher, following jobs with ``squeue``
    where SLURM accounting (``sacct``) is off."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.slurm.slurm import SlurmJob

        why = accounting_error()
        if why is not None and not getattr(SlurmJob.watcher, "_ana_squeue", False):
            log.info(
                "SLURM accounting does not answer (sacct: %s): following the jobs with squeue",
                why.splitlines()[0],
            )
            watcher: Any = _squeue_watcher()(delay_s=SlurmJob.watcher._delay_s)
            watcher._ana_squeue = True
            SlurmJob.watcher = watcher
        return super().launch(job_overrides, initial_job_idx)
