"""``ana-predict``: predict the patterns of an image or a folder of images with a trained model (``conf/predict.yaml``)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ..resolvers import register_resolvers
from .errors import override_hints, user_errors

register_resolvers()


@override_hints("predict")
@hydra.main(version_base="1.3", config_path="pkg://ana_lightning.conf", config_name="predict")
@user_errors
def main(cfg: DictConfig) -> None:
    from hydra.utils import get_method

    summary = get_method(cfg.get("job") or "ana_lightning.jobs.predict.run_predict")(cfg)
    # 2 when some files could not be read (the run still predicted the others); 1 when it crashed.
    code = getattr(summary, "exit_code", 0)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
