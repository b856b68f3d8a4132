"""The ``ana-app`` job (``conf/app.yaml``): load the model and serve the local Gradio page until interrupted."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from ..app import MAX_FIELDS, build_app, field_predictor, parse_size, warn_if_exposed
from ..predict import load_predictor

__all__ = ["run_app"]

log = logging.getLogger(__name__)


def run_app(cfg: DictConfig) -> Any:
    """The ``ana-app`` job: load the model and serve the page until interrupted."""
    from ..utils import setup_torch

    setup_torch(cfg.get("torch_threads"))
    from ..fields.mode import use_bit_depth, use_channels

    use_channels(cfg)  # uploaded TIFFs of channels: fitc, dapi, skip (auto: the checkpoint's data.channels)
    # uploads with more than 8 bits (and a support=… folder): bit_depth, auto = the model's data.bit_depth
    use_bit_depth(cfg)
    predictor = load_predictor(cfg, "ana-app")
    use_channels(cfg, predictor)
    use_bit_depth(cfg, predictor)  # an exported file's, from its metadata
    demo = build_app(
        predictor,
        cfg.get("max_file_size", "25mb"),
        field_predictor(cfg, predictor),
        combine=str(cfg.get("combine") or "mean_log"),
        max_fields=int(cfg.get("max_fields", MAX_FIELDS)),
    )
    warn_if_exposed(str(cfg.server_name), int(cfg.server_port))
    log.info(
        "serving %s on http://%s:%s (Ctrl+C to stop)", predictor.source, cfg.server_name, cfg.server_port
    )
    demo.launch(
        server_name=str(cfg.server_name),
        server_port=int(cfg.server_port),
        share=False,
        max_file_size=parse_size(cfg.get("max_file_size", "25mb")),
        inbrowser=False,
        show_error=False,
        prevent_thread_lock=bool(cfg.get("prevent_thread_lock", False)),
    )
    return demo
