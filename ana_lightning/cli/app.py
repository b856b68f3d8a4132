"""``ana-app``: a local Gradio web page to try a model on field images (``conf/app.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..resolvers import register_resolvers
from .errors import override_hints, user_errors

register_resolvers()


@override_hints("app")
@hydra.main(version_base="1.3", config_path="pkg://ana_lightning.conf", config_name="app")
@user_errors
def main(cfg: DictConfig) -> None:
    from hydra.utils import get_method

    get_method(cfg.get("job") or "ana_lightning.jobs.app.run_app")(cfg)


if __name__ == "__main__":
    main()
