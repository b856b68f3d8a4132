"""``ana-train``: train a model from the composed Hydra config (``conf/train.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..utils import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://ana_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from ..pipeline import train

    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None  # what a Hydra sweeper (Optuna) optimises


if __name__ == "__main__":
    main()
