"""``ana-stylize``: a class-preserving synthetic training set by Neural Style Transfer (``conf/stylize.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..resolvers import register_resolvers
from .errors import override_hints, user_errors

register_resolvers()


@override_hints("stylize")
@hydra.main(version_base="1.3", config_path="pkg://ana_lightning.conf", config_name="stylize")
@user_errors
def main(cfg: DictConfig) -> None:
    from hydra.utils import get_method

    try:
        get_method(cfg.get("job") or "ana_lightning.jobs.stylize.stylize_job")(cfg)
    except KeyboardInterrupt:
        # Images are written atomically and the manifest lists every finished one.
        print(
            f"\ninterrupted: finished images are kept in {cfg.output}; run the same command again to resume."
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
