"""``ana-train``: train a model from the composed Hydra config (``conf/train.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..resolvers import register_resolvers
from .errors import override_hints, user_errors

register_resolvers()


@override_hints("train")
@hydra.main(version_base="1.3", config_path="pkg://ana_lightning.conf", config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | None:
    from hydra.utils import get_method

    # `job` names the function that runs this training job (a task with its own loop, such as the
    # per-group Siamese ensembles, names its own); it takes the config and returns (metrics, objects).
    job = get_method(cfg.get("job") or "ana_lightning.jobs.train.train")
    metrics, _ = job(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None  # what a Hydra sweeper (Optuna) optimises


if __name__ == "__main__":
    main()
