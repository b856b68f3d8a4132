"""The ``ana-predict`` job (``conf/predict.yaml``): predict every image of ``input`` with a model file."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..predict.io import _output_paths, list_inputs, load_predictor, write_predictions
from ..predict.predictor import PredictSummary
from ..progress import tracked
from ..utils import setup_torch

__all__ = ["run_predict"]

log = logging.getLogger(__name__)


def run_predict(cfg: DictConfig) -> PredictSummary:
    """The ``ana-predict`` job: predict every image of ``cfg.input`` with ``cfg.ckpt_path``."""
    if not cfg.get("input"):
        raise ValueError("ana-predict needs input=<image file or folder>")
    from ..fields.job import num_workers

    workers = num_workers(cfg)  # checked before the model loads
    from ..fields.cells_out import check_cells_out

    cells_out = check_cells_out(cfg)  # … and where the cells of labelled fields go
    setup_torch(cfg.get("torch_threads"))
    from ..fields.mode import use_bit_depth, use_channels

    use_channels(cfg)  # a TIFF of channels: fitc, dapi, skip (auto: the checkpoint's data.channels)
    use_bit_depth(cfg)  # bit_depth (auto: the checkpoint's data.bit_depth) before any file is read: support=…
    predictor = load_predictor(cfg, "ana-predict")
    use_channels(cfg, predictor)
    use_bit_depth(cfg, predictor)  # … and an exported file's, from its metadata
    files = list_inputs(cfg.input)
    run_dir = Path(cfg.paths.output_dir)
    csv_path, json_path = _output_paths(cfg.get("output"), run_dir)
    existing = [str(q) for q in (csv_path, json_path) if q.exists()]
    if existing and not cfg.get("overwrite", False):
        raise FileExistsError(
            f"output={cfg.get('output')}: {' and '.join(existing)} already exist(s); pass overwrite=true "
            "to replace them, or choose another output=<file.csv or folder>"
        )
    from ..fields.job import run_field_predict
    from ..fields.mode import FIELD_KEYS, field_mode, model_input

    loader = None
    inputs = model_input(cfg, predictor)
    kind, _, mask_mode, crop_fraction = inputs
    fields = str(cfg.get("fields", "auto")).lower()
    if kind == "cell" and fields != "true":  # cell crops with their masks: one cell per image, as in training
        from ..predict.cells import cell_loader, look_like_cut_cells, mask_use, pair_masks

        cells, masks, problems = pair_masks(files)
        if masks and fields != "false" and not look_like_cut_cells(masks):
            log.info(
                "the %d mask file(s) beside the images hold many objects each: the images are read as fields, "
                "the masks left out",
                len(files) - len(cells),
            )
            files, masks = cells, {}
        if masks or fields == "false":
            files, loader = cells, cell_loader(masks, mask_mode, crop_fraction, problems)
            log.info(
                "cell crops: %d cell(s), %d with a mask beside it; each read as one cell, %s "
                "(fields=true reads them as fields)",
                len(cells),
                len(masks),
                mask_use(mask_mode, crop_fraction),
            )
            unused = [k for k in FIELD_KEYS if k != "group_by" and cfg.get(k) not in (None, False)]
            if unused:
                log.warning("cell crops: %s apply to fields and are not used here", ", ".join(unused))
    files = _select_split(cfg, files)
    truth = _truth(cfg, predictor, files)  # known labels, read (and checked) before predicting
    mode = field_mode(cfg, predictor, inputs) if loader is None else None
    labels = None
    if cells_out is not None:
        if mode is None or mode[0] != "cell":
            raise ValueError(
                f"cells_out={cells_out} writes the cells a cell model reads in whole fields; here "
                + (
                    "the images are read as cell crops"
                    if loader is not None
                    else "the model is not a cell model"
                )
            )
        from ..fields.cells_out import field_labels

        labels = field_labels(cells_out, predictor.task, truth, int(cfg.get("truth_min_level", 2)))
    if mode is not None:
        summary = run_field_predict(
            cfg, predictor, files, run_dir, mode, labels
        )  # whole fields: scale, tiles or cells
        if truth[0]:
            _score(cfg, predictor, files, truth, summary.csv_path, specimens=bool(cfg.get("group_by")))
        _record_run(cfg, run_dir, summary.csv_path)
        return summary
    log.info(
        "predicting %d image(s) with %s (%s, %s, %d classes) → %s",
        len(files),
        predictor.source,
        predictor.backend_name,
        predictor.task,
        len(predictor.class_names),
        csv_path,
    )
    stream = predictor.predict_paths(
        files,
        batch_size=cfg.get("batch_size", 32),
        num_workers=workers,
        max_file_mb=cfg.get("max_file_mb", 512),
        prefetch=bool(cfg.get("prefetch", False)),
        loader=loader,
    )
    stream = tracked(stream, len(files), "predicting", cfg.get("progress", True))
    kept: list = []
    cell_groups: dict[Path, str] = {}
    if loader is not None and cfg.get("group_by"):  # cut cells: specimen verdicts from their cells
        from ..fields.job import _groups

        # every cell's specimen is read (a missing row named) before anything is predicted
        cell_groups = _groups(
            files, Path(cfg.input).expanduser(), cfg.group_by, cfg.get("group_column", "specimen")
        )
        stream = _keeping(stream, kept)
    summary = write_predictions(stream, predictor, csv_path, json_path)
    if kept:
        from ..predict.cells import cell_specimens

        written = cell_specimens(kept, cell_groups, cfg, predictor, csv_path.parent)
        log.info("specimens (group_by=%s): %s", cfg.get("group_by"), written)
    if truth[0]:
        _score(cfg, predictor, files, truth, csv_path, specimens=bool(kept))
    _record_run(cfg, run_dir, csv_path)
    msg = f"{summary.n_images - summary.n_failed}/{summary.n_images} image(s) predicted → {csv_path}"
    if summary.n_failed:
        log.error("%s; %d file(s) could not be read: see the 'error' column", msg, summary.n_failed)
    else:
        log.info(msg)
    return summary


def _record_run(cfg: DictConfig, run_dir: Path, csv_path: Path) -> None:
    """The job's run folder records what it ran (``config_resolved.yaml``) and, when the predictions went
    elsewhere (``output=``), where they are (``predicted.txt``)."""
    if run_dir.is_dir() and csv_path.parent.resolve() != run_dir.resolve():
        (run_dir / "predicted.txt").write_text(f"predictions: {csv_path.resolve()}\n")
    if run_dir.is_dir():
        OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)


def _select_split(cfg: DictConfig, files: list[Path]) -> list[Path]:
    """``split_manifest=<run>/split_manifest.csv split=test``: only the images that the manifest puts in
    that split (a run's test cells scored by its exported model, as the run scored them). Rows match
    as ``group_by`` and ``truth`` CSV rows do (paths relative to ``input=``, or file names); when the
    manifest has a ``sha256`` column (a run's does), every kept image must have those bytes, so a folder
    that only numbers its files the same way is refused."""
    manifest, split = cfg.get("split_manifest"), cfg.get("split")
    if not manifest and not split:
        return files
    if not (manifest and split):
        raise ValueError(
            f"split={split!r} and split_manifest={manifest!r}: give both (a run's split_manifest.csv and one of "
            "its splits, e.g. split_manifest=outputs/<run>/split_manifest.csv split=test), or neither"
        )
    import csv

    from ..data.images import sha256_file
    from ..predict.io import path_table

    table = Path(str(manifest)).expanduser()
    if not table.is_file():
        raise FileNotFoundError(f"split_manifest={manifest}: no such file")
    with open(table, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if "split" not in (reader.fieldnames or []) or "path" not in (reader.fieldnames or []):
            raise ValueError(
                f"split_manifest={manifest}: needs columns 'path' and 'split' (a run's split_manifest.csv); "
                f"has {reader.fieldnames}"
            )
        rows = list(reader)
    listed = [r for r in rows if (r.get("split") or "").strip() == str(split)]
    if not listed:
        have = sorted({(r.get("split") or "").strip() for r in rows} - {""})
        raise ValueError(
            f"split_manifest={manifest}: no row has split={split!r} (its splits: {', '.join(have)})"
        )
    matched = path_table(files, Path(cfg.input).expanduser(), table, "split", "split_manifest", "splits")
    kept = [f for f in files if matched.get(f, ("",))[0] == str(split)]
    if not kept:
        raise ValueError(
            f"split_manifest={manifest}: none of its {len(listed)} split={split!r} rows (e.g. {listed[0]['path']}) "
            f"is an image of input={cfg.input}; give the folder the run read (its data.root)"
        )
    digests = (
        path_table(kept, Path(cfg.input).expanduser(), table, "sha256", "split_manifest", "sha256 values")
        if ("sha256" in rows[0])
        else {}
    )
    wrong = [f for f in kept if digests.get(f, ("",))[0] and digests[f][0] != sha256_file(f)]
    if wrong:
        raise ValueError(
            f"split_manifest={manifest}: {len(wrong)} of the {len(kept)} image(s) of input={cfg.input} matched to its "
            f"split={split!r} rows differ from the files the run read (sha256), e.g. {wrong[0]}: give the folder the "
            "run read (its data.root)"
        )
    if len(kept) < len(listed):
        log.warning(
            "split_manifest=%s: %d of its %d split=%s row(s) have no image in input=%s; scoring the %d that do",
            manifest,
            len(listed) - len(kept),
            len(listed),
            split,
            cfg.input,
            len(kept),
        )
    log.info(
        "split=%s: %d of %d image(s) of input= (split_manifest=%s)", split, len(kept), len(files), manifest
    )
    return kept


def _truth(cfg: DictConfig, predictor, files) -> tuple[dict[str, str], dict[str, str]]:
    """``truth=``: ``(each image's known label as a tree label, each model class's tree label)``, read and
    checked against each other before anything is predicted (``({}, {})`` without ``truth``)."""
    if not cfg.get("truth"):
        return {}, {}
    if predictor.task == "multi_label":  # label sets of AC codes (predict.truth_multilabel)
        from ..predict.truth_multilabel import read_truth_sets

        sets = read_truth_sets(
            files,
            Path(cfg.input).expanduser(),
            str(cfg.truth),
            str(cfg.get("truth_column") or "label"),
            predictor.class_names,
            strict=bool(cfg.get("truth_strict", True)),
        )
        return sets, {}
    if predictor.task != "single_label":
        raise ValueError(
            f"truth= scores single- and multi-label models; this one is {predictor.task!r} "
            "(score a hierarchical model with ana-eval on a labelled folder)"
        )
    from ..predict.truth import check_shared, model_class_nodes, read_truth

    nodes = model_class_nodes(predictor, cfg.get("ckpt_path"))
    truth_of = read_truth(
        files, Path(cfg.input).expanduser(), str(cfg.truth), str(cfg.get("truth_column") or "label"), nodes
    )
    check_shared(truth_of, predictor.class_names, nodes, int(cfg.get("truth_min_level", 2)))
    return truth_of, nodes


def _score(
    cfg: DictConfig,
    predictor,
    files,
    truth: tuple[dict[str, str], dict[str, str]],
    csv_path: Path,
    specimens: bool,
) -> None:
    """Score the written predictions against ``truth`` (:func:`_truth`; :func:`ana_lightning.predict.truth.score_truth`)."""
    from ..fields.job import _groups
    from ..predict.truth import score_truth, truth_names

    groups = None
    if cfg.get("group_by"):
        by = _groups(files, Path(cfg.input).expanduser(), cfg.group_by, cfg.get("group_column", "specimen"))
        groups = {str(f): g for f, g in by.items()}
    truth_of, nodes = truth
    if predictor.task == "multi_label":
        from ..predict.truth_multilabel import score_truth_multilabel

        m = score_truth_multilabel(
            csv_path,
            truth_of,
            predictor.class_names,
            predictor.rule.thresholds,
            groups,
            source=str(predictor.source),
            specimens=specimens,
        )
        shown = [
            k for k in ("truth/exact_match", "truth/micro_f1", "truth/mca", "specimen/exact_match") if k in m
        ]
        log.info(
            "truth=%s: %s over %d scored image(s) (%d without a verdict, %d only of codes the model has no class for) → %s",
            cfg.truth,
            ", ".join(f"{k}={m[k]:.4f}" for k in shown),
            int(m["truth/scored_images"]),
            int(m["truth/no_verdict"]),
            int(m["truth/unscored_images"]),
            csv_path.parent / "truth_report.md",
        )
        return
    m = score_truth(
        csv_path,
        truth_of,
        predictor.class_names,
        nodes,
        int(cfg.get("truth_min_level", 2)),
        groups,
        source=str(predictor.source),
        data_names=truth_names(cfg.truth),
        specimens=specimens,
    )
    shown = [k for k in ("truth/mca", "truth/acc", "specimen/mca", "specimen/acc") if k in m]
    log.info(
        "truth=%s: %s over %d scored image(s) (%d of scored classes without a verdict) → %s",
        cfg.truth,
        ", ".join(f"{k}={m[k]:.4f}" for k in shown),
        int(m["truth/scored_images"]),
        int(m["truth/no_verdict"]),
        csv_path.parent / "truth_report.md",
    )


def _keeping(stream, into: list):
    """The stream unchanged, each item also appended to ``into``."""
    for item in stream:
        into.append(item)
        yield item
