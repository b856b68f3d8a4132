"""The old home of the ``ana-synth`` job, kept so that ``job: ana_lightning.data.synthetic.job.synth`` keeps
working. A thin re-export of :mod:`ana_lightning.jobs.synth`."""

from __future__ import annotations

from ...jobs.synth import synth

__all__ = ["synth"]
