"""The field part of ``ana-predict``: :func:`run_field_predict` groups the input fields, resolves each
field's scale, predicts each field (:class:`~.predictor.FieldPredictor`), writes one CSV row per field
(:func:`field_columns`), overlays, ``cells.csv`` and, with ``group_by``, the specimen report."""

from __future__ import annotations

import csv
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..progress import tracked
from .predictor import FieldCut, FieldCutter, FieldPredictor, FieldResult, Predictor
from .scale import NUCLEUS_DIAMETER_UM, ScaleEstimate, resolve_scale
from .specimens import specimen_verdicts, write_specimens

if TYPE_CHECKING:  # only for the annotations: fields uses predict at run time in run_field_predict alone
    from omegaconf import DictConfig

    from ..predict import PredictSummary

__all__ = ["run_field_predict", "field_columns", "num_workers", "ordered_map"]

log = logging.getLogger(__name__)


def _groups(
    files: Sequence[Path], input_root: Path, group_by: str | None, group_column: str
) -> dict[Path, str]:
    if not group_by:
        return dict.fromkeys(files, "")
    if str(group_by) == "folder":
        out = {}
        for f in files:
            try:
                rel = f.parent.relative_to(input_root)
            except ValueError:
                rel = Path(f.parent.name)
            out[f] = rel.as_posix() if str(rel) != "." else input_root.name
        return out
    table = Path(str(group_by)).expanduser()
    if not table.is_file():
        raise FileNotFoundError(
            f"group_by={group_by}: expected 'folder' or a CSV file with columns path,{group_column}"
        )
    from ..predict.io import path_table

    found = path_table(files, input_root, table, group_column, "group_column", "specimens")
    missing = [f for f in files if f not in found]
    if missing:
        f = missing[0]
        rel = f.relative_to(input_root).as_posix() if input_root.is_dir() else f.name
        raise ValueError(f"{table}: no row for {rel} (rows give paths relative to input=, or file names)")
    return {f: found[f][0] for f in files}


def _scale_of(job: tuple[Path, int, float | None, float | None, float]) -> ScaleEstimate | tuple[str, str]:
    """One field's scale (:func:`_scales`), or ``("bad", reason)`` for a file that cannot be read, or
    ``("failed", why)`` when the image gives none. A module function: worker processes run it."""
    from ..data.images import BadImageError, load_image
    from ..predict.predictor import _check_size

    f, max_bytes, diameter_px, pixel_size, diameter_um = job
    try:
        _check_size(f, max_bytes)  # an oversized file is an error row, never decoded (as in image mode)
        return resolve_scale(load_image(f), diameter_px, pixel_size, diameter_um)
    except BadImageError as e:
        return ("bad", e.reason)
    except ValueError as e:
        return ("failed", str(e))


def _scales(
    files: Sequence[Path], groups: dict[Path, str], cfg, workers: int = 0
) -> dict[Path, ScaleEstimate | str]:
    """Every field's scale (estimated in ``workers`` processes); an unreliable estimate is replaced by the
    median of the reliable ones of the same group, else of the whole input."""
    from ..predict.predictor import max_bytes_of

    max_bytes = max_bytes_of(cfg.get("max_file_mb", 512))
    jobs = [
        (
            f,
            max_bytes,
            cfg.get("nucleus_diameter_px"),
            cfg.get("pixel_size"),
            cfg.get("nucleus_diameter_um") or NUCLEUS_DIAMETER_UM,
        )
        for f in files
    ]
    out: dict[Path, ScaleEstimate | str] = {}
    failed: dict[Path, str] = {}
    found = ordered_map(_scale_of, jobs, workers)
    for f, s in zip(
        files, tracked(found, len(files), "estimating scale", cfg.get("progress", True)), strict=True
    ):
        if isinstance(s, ScaleEstimate):
            out[f] = s
        elif s[0] == "bad":
            out[f] = s[1]
        else:
            failed[f] = s[1]
            out[f] = ScaleEstimate(float("nan"), "estimated", reliable=False)
    good = {f: s for f, s in out.items() if isinstance(s, ScaleEstimate) and s.reliable}
    everyone = [s.diameter_px for s in good.values()]
    for f, s in list(out.items()):
        if isinstance(s, ScaleEstimate) and not s.reliable:
            same = [g.diameter_px for h, g in good.items() if groups[h] == groups[f]]
            pool = same or everyone
            if pool:
                out[f] = ScaleEstimate(
                    float(np.median(pool)),
                    "median of reliable estimates" + (" in group" if same else ""),
                    s.channel,
                    s.n_objects,
                    s.polarity,
                    False,
                )
            elif not math.isfinite(s.diameter_px):
                out[f] = (
                    f"no nucleus scale: {failed.get(f, 'no reliable estimate')}; give nucleus_diameter_px or pixel_size"
                )
    return out


def num_workers(cfg) -> int:
    """``num_workers`` checked: worker processes (field mode: they read and segment fields while this one runs
    the model; image mode: a DataLoader's); 0: none."""
    value = cfg.get("num_workers", 0) or 0
    try:
        n = int(value)
        ok = n == float(value) and n >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"num_workers={value!r}: the number of worker processes, an integer ≥ 0 (0: none)")
    return n


def ordered_map(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int) -> Iterator[Any]:
    """``fn(job)`` for every job, in order: in this process (``workers=0``), or in ``workers`` processes
    with at most two jobs per worker done ahead of the one consumed (the results of a long input never
    pile up in memory). A job's exception is raised here, as in this process."""
    if workers <= 0:
        yield from map(fn, jobs)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # fork where there is one (Linux: no re-import; the read settings are environment variables either way)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    from concurrent.futures.process import BrokenProcessPool

    it = iter(jobs)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending = deque(pool.submit(fn, job) for job in itertools.islice(it, 2 * workers))
        while pending:
            try:
                result = pending.popleft().result()
            except BrokenProcessPool:
                raise RuntimeError(
                    f"a worker process ended abruptly (num_workers={workers}): killed for memory, most likely, "
                    "with several large fields held at once; run again with fewer workers, or num_workers=0"
                ) from None
            for job in itertools.islice(it, 1):
                pending.append(pool.submit(fn, job))
            yield result


def field_columns(names: Sequence[str]) -> list[str]:
    return [
        "path",
        "group",
        "status",
        "error",
        "verdict",
        "confidence",
        "level1",
        "level2",
        "unit",
        "n_used",
        "n_cells",
        "n_mitotic",
        "nucleus_diameter_px",
        "scale_source",
        "scale_channel",
        "scale_reliable",
        "rescale_factor",
        "overlay",
        *[f"p_{c}" for c in names],
    ]


def run_field_predict(
    cfg: DictConfig,
    predictor: Predictor,
    files: Sequence[Path],
    run_dir: Path,
    mode: tuple[str, float | None, str, float | None],
    labels: Mapping[Path, str] | None = None,
) -> PredictSummary:
    """The field part of ``ana-predict`` (see the module docstring). ``labels``: each labelled field's model
    class, for ``cells_out`` (:mod:`.cells_out`). Returns a ``PredictSummary``."""
    from ..data.images import warn_overexposed
    from ..predict import PredictSummary, _output_paths
    from .overlay import class_colours, draw_overlay, save_png

    kind, model_d, mask, crop_fraction = mode
    fp = FieldPredictor(
        predictor,
        kind,
        model_d,
        combine=cfg.get("combine", "mean_log"),
        min_cells=cfg.get("min_cells", 5),
        tile_overlap=cfg.get("tile_overlap", 0.25),
        segmenter=cfg.get("segmenter", "classical"),
        crop_from=cfg.get("crop_from", "nuclei"),
        crop_margin=cfg.get("crop_margin", 0.1),
        crop_grey=cfg.get("crop_grey", True),
        cell_mask=mask,
        crop_fraction=crop_fraction,
        use_border_cells=cfg.get("use_border_cells", False),
        batch_size=cfg.get("batch_size", 64),
    )
    csv_path, _ = _output_paths(cfg.get("output"), run_dir)
    out_dir = csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    input_root = Path(cfg.input).expanduser()
    workers = num_workers(cfg)
    groups = _groups(files, input_root, cfg.get("group_by"), cfg.get("group_column", "specimen"))
    log.info(
        "field mode: %s model%s, combine=%s; estimating the scale of %d field(s)%s",
        kind,
        f" trained at nucleus diameter {model_d:g} px" if model_d else "",
        fp.combine,
        len(files),
        f", read and segmented in {workers} worker processes (num_workers)" if workers else "",
    )
    scales = _scales(files, groups, cfg, workers)
    names = fp.names
    colours = class_colours(names)
    overlays = bool(cfg.get("overlays", False))
    writer = None
    if cfg.get("cells_out"):
        from .cells_out import CellsWriter

        # (a cell model only: ana-predict checks that before anything is predicted)
        writer = CellsWriter(Path(str(cfg.cells_out)).expanduser(), input_root)
    want_cells = {f: writer is not None and f in (labels or {}) for f in files}
    results: list[FieldResult] = []
    shares: list[tuple[str, float]] = []  # each field's saturated pixels, for one warning
    cells_f = open(out_dir / "cells.csv", "w", newline="") if cfg.get("per_cell_csv") else None  # noqa: SIM115
    cells_w = None
    try:
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=field_columns(names))
            w.writeheader()
            cutter = fp.cutter
            cuts = ordered_map(
                _cut_field, [(f, scales[f], cutter, overlays, want_cells[f]) for f in files], workers
            )
            for f, got in zip(
                files, tracked(cuts, len(files), "predicting fields", cfg.get("progress", True)), strict=True
            ):
                s = scales[f]
                res = FieldResult(str(f), group=groups[f])
                if isinstance(got, str):
                    res.status, res.error = "error", got
                else:
                    share, cut, image = got
                    shares.append((str(f), share))
                    res, lab = fp.read(cut, str(f))
                    res.group = groups[f]
                    if want_cells[f]:
                        writer.write(f, labels[f], groups[f], cut.cells)
                    if overlays and lab is not None:
                        title = f"{Path(f).name}: {';'.join(res.verdict)} ({res.n_used} {res.unit}, d={s.diameter_px:.0f}px)"
                        pic = draw_overlay(image, lab[0], lab[1], colours, title=title)
                        rel = Path(f).relative_to(input_root) if input_root.is_dir() else Path(Path(f).name)
                        res.overlay = str(save_png(out_dir / "overlays" / rel.with_suffix(".png"), pic))
                results.append(res)
                w.writerow(_field_row(res, predictor))
                if cells_f is not None and res.cells:
                    if cells_w is None:
                        cells_w = csv.DictWriter(cells_f, fieldnames=list(res.cells[0]))
                        cells_w.writeheader()
                    cells_w.writerows(res.cells)
    finally:
        if cells_f is not None:
            cells_f.close()
    if writer is not None:
        writer.close()
    warn_overexposed(shares, "field")
    _warn_if_cell_crops(results, kind)
    n_failed = sum(r.status != "ok" for r in results)
    if cfg.get("group_by"):
        rows = specimen_verdicts(
            results, predictor, fp.combine, cfg.get("top_k", 3), cfg.get("pattern_min_prob", 0.25)
        )
        write_specimens(rows, names, out_dir)
    log.info("%d/%d field(s) predicted → %s", len(results) - n_failed, len(results), csv_path)
    return PredictSummary(len(results), n_failed, csv_path, None)


def _cut_field(
    job: tuple[Path, ScaleEstimate | str, FieldCutter, bool, bool],
) -> tuple[float, FieldCut, Any] | str:
    """Read one field and cut it for the model (:class:`~.predictor.FieldCutter`): ``(its saturated share,
    the cut, the image when an overlay needs it)``, or the reason it cannot be read. A module function:
    worker processes run it."""
    from ..data.images import BadImageError, load_image, saturated_share

    f, s, cutter, overlays, cells = job
    try:
        if isinstance(s, str):
            raise BadImageError(f, s)
        image = load_image(f)
        return saturated_share(image), cutter(image, s, overlays, cells), image if overlays else None
    except BadImageError as e:
        return e.reason


def _warn_if_cell_crops(results: Sequence[FieldResult], kind: str) -> None:
    """A folder of single-cell crops without masks beside them is read as fields (a cell model reads fields by
    default): each crop then holds at most one cell and gets no verdict. Say so, with how to read them as
    cells, when at least 4 in 5 of the fields read found at most one cell."""
    read = [r for r in results if r.status == "ok"]
    few = [r for r in read if r.n_cells <= 1]
    if kind != "cell" or not read or len(few) < 0.8 * len(read):
        return
    log.warning(
        "%d of the %d field(s) read held at most one cell (e.g. %s): if these images are single cells, not "
        "fields, read each as one cell with fields=false, its mask beside it (<name>_mask.png or "
        "masks/<name>.png); without masks, fields=false cell_mask=none crop_fraction=null reads them, not as the "
        "model was trained",
        len(few),
        len(read),
        Path(few[0].path).name,
    )


def _field_row(r: FieldResult, predictor) -> dict[str, str]:
    names = predictor.class_names
    row = dict.fromkeys(field_columns(names), "")
    row.update(path=r.path, group=r.group, status=r.status, error=r.error)
    if r.scale is not None:
        row.update(
            nucleus_diameter_px=f"{r.scale.diameter_px:.2f}",
            scale_source=r.scale.source,
            scale_channel=r.scale.channel,
            scale_reliable=str(int(r.scale.reliable)),
        )
    if r.status != "ok":
        return row
    row.update(
        verdict=";".join(r.verdict),
        unit=r.unit,
        n_used=str(r.n_used),
        n_cells=str(r.n_cells),
        n_mitotic=str(r.n_mitotic),
        rescale_factor=f"{r.factor:.4f}" if r.unit == "tiles" else "",
        overlay=r.overlay,
    )
    if r.probs is not None:
        row.update({f"p_{c}": f"{float(x):.6f}" for c, x in zip(names, r.probs, strict=True)})
        # a hierarchical verdict is a routed path (a leaf or a level-2 node), scored by the rule, not a column
        if r.verdict and (r.verdict[0] in names or (predictor.task == "hierarchical" and r.usable)):
            row["confidence"] = ";".join(f"{predictor.rule.confidence(r.probs, v):.6f}" for v in r.verdict)
            lv = [predictor.hierarchy(v) for v in r.verdict]
            row["level1"], row["level2"] = ";".join(x[0] for x in lv), ";".join(x[1] for x in lv)
    return row
