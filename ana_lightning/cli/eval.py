"""``ana-eval``: evaluate a checkpoint on a dataset folder or split (``conf/eval.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..resolvers import register_resolvers
from .errors import override_hints, user_errors

register_resolvers()


@override_hints("eval")
@hydra.main(version_base="1.3", config_path="pkg://ana_lightning.conf", config_name="eval")
@user_errors
def main(cfg: DictConfig) -> None:
    from hydra.utils import get_method

    get_method(cfg.get("job") or "ana_lightning.jobs.evaluate.evaluate")(cfg)


if __name__ == "__main__":
    main()
