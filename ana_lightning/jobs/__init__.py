"""What each console command does: one module per job, each built from its config with ``instantiate``.

A job is a function ``job(cfg: DictConfig)``; the config's ``job:`` key names it (``conf/train.yaml``:
``job: ana_lightning.jobs.train.train``) and the thin Hydra entry point in :mod:`ana_lightning.cli`
calls it. Nothing is imported here, so ``import ana_lightning.jobs`` stays cheap.

Adding a job: one module here (a function taking the composed config) and one ``conf/<job>.yaml`` whose
``job:`` names it; a new console command adds a 15-line ``cli/<job>.py`` and a ``pyproject.toml`` entry.
"""
