"""The Markdown model card written beside an exported model (``ana-export``): intended use, the model's
classes and input, the training data and split, the test metrics with intervals, calibration, and
the parity check of the export. Read from the run folder the checkpoint belongs to."""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data.images import sha256_file
from .fields.specimens import NO_NEGATIVE_CLASS, screens_negatives
from .predict import ModelInfo, decision_rule

__all__ = ["DISCLAIMER", "INTENDED_USE", "CELL_INTENDED_USE", "write_model_card"]

DISCLAIMER = (
    "This model is a **research and diagnostic aid**. Its output is a suggestion that must be confirmed by "
    "an expert reading the slide (a trained immunofluorescence reader); it is not a medical device and "
    "has not been validated for clinical decisions."
)


#: The model card's intended-use line, also shown by ana-app.
INTENDED_USE = (
    "Suggesting the ICAP anti-nuclear antibody pattern(s) of HEp-2 indirect immunofluorescence field images "
    "(FITC, as in training), to support research and a trained reader's interpretation. Not for: deciding a "
    "diagnosis or a treatment without an expert, cell crops or stains unlike the training data, patterns "
    "outside the classes below (the model always answers with one of them)."
)


#: The intended-use line of a model of single cells (its file takes cut cells, not fields).
CELL_INTENDED_USE = (
    "Suggesting the ICAP anti-nuclear antibody pattern(s) of HEp-2 indirect immunofluorescence images (FITC, as "
    "in training), one segmented cell at a time: `ana-predict` and `ana-app` cut a field's cells and combine "
    "their answers into the field's (or a specimen's) verdict; other software must cut each cell as described "
    "under Model. To support research and a trained reader's interpretation. Not for: deciding a diagnosis or "
    "a treatment without an expert, cells cut or stained unlike the training cells, patterns outside the "
    "classes below (the model always answers with one of them)."
)


def _run_folder(ckpt_path: Path) -> Path | None:
    """The training run folder of ``<run>/checkpoints/<file>.ckpt``."""
    run = ckpt_path.resolve().parent.parent
    if ckpt_path.resolve().parent.name == "checkpoints" and (run / "config_resolved.yaml").is_file():
        return run
    here = ckpt_path.resolve().parent  # a hierarchy bundle in its eval_hierarchy folder
    return here if (here / "evaluated.txt").is_file() and (here / "config_resolved.yaml").is_file() else None


def _class_namer(run: Path, tree) -> Any:
    """Manifest label -> the model's class name: through the run's ``classes.csv`` (``tree_label`` ->
    ``class``, e.g. ``speckled`` -> ``Speckled`` for the contest classes), else the label's canonical AC code."""
    from .data.hierarchy import read_contest_classes

    names = read_contest_classes(run)

    def name(label: str) -> str:
        if label in names:
            return names[label]
        try:
            return tree.parse_code(label)
        except ValueError:
            return label

    return name


def _training_data_section(run: Path | None, info: ModelInfo) -> list[str]:
    from omegaconf import OmegaConf

    from .data.splits import SPLIT_MANIFEST, SPLITS, load_manifest
    from .taxonomy import Taxonomy

    md = ["## Training data", ""]
    if run is None:
        return md + [
            "Not available: the checkpoint is not inside its training run folder (no split manifest "
            "or resolved config next to it).",
            "",
        ]
    last_kept = False  # keep_epoch=last (best when unset or unreadable)
    try:
        resolved = OmegaConf.load(run / "config_resolved.yaml")
        last_kept = resolved.get("keep_epoch") == "last"
        data = resolved.get("data", {})
        target = str(data.get("_target_", "?")).rsplit(".", 1)[-1]
        where = data.get("root") or data.get("cache_dir") or "?"
        md.append(f"- Data module: `{target}`, from `{where}`")
        if "Synthetic" in target:
            md.append(
                f"- **Synthetic** HEp-2 fields from the built-in simulator ({data.get('n_per_class')} per class, "
                f"rendered at {data.get('render_size')} px): a model trained on them only has not seen a real slide."
            )
        md.append(
            f"- Split: fractions {list(data.get('split_fractions', []))}, seed {data.get('seed')} "
            "(stratified, grouped by the data's groups where known — specimens, slides or patients — so that no "
            "group is in two splits; duplicates kept together)"
        )
        grouping = _grouping_line(run)
        if grouping:
            md.append(f"- Groups: {grouping} (`grouping.txt`)")
    except Exception as e:  # noqa: BLE001 - the card is still useful without it
        md.append(f"- (config_resolved.yaml unreadable: {e})")
    manifest = run / SPLIT_MANIFEST
    if manifest.is_file():
        try:  # raw labels: a contest-level run's manifest holds tree nodes ("speckled"), not only AC codes
            splits = load_manifest(manifest, check=False)
        except Exception as e:  # noqa: BLE001
            return md + [f"- (split manifest unreadable: {e})", ""]
        name = _class_namer(run, Taxonomy.load())
        counts = {s: Counter(name(c) for r in splits[s] for c in r.codes) for s in SPLITS}
        if not splits["val"]:
            md.append(
                "- **No validation split**: the weights are the last epoch of a fixed schedule, trained on every "
                "group the manifest gives to training (a refit once the recipe was chosen on validation splits); "
                "no epoch selection and no temperature calibration"
            )
        elif last_kept:
            md.append(
                "- **Last epoch kept** (`keep_epoch=last`): the weights are the last epoch of a fixed schedule; "
                "the validation split was scored every epoch and used for temperature calibration, not to pick "
                "the epoch"
            )
        groups = {s: len({r.group for r in splits[s] if r.group}) for s in SPLITS}
        md += ["", "| class | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
        for c in info.class_names:
            md.append(f"| {c} | " + " | ".join(str(counts[s][c]) for s in SPLITS) + " |")
        md.append("| **images** | " + " | ".join(f"**{len(splits[s])}**" for s in SPLITS) + " |")
        if any(groups.values()):
            md.append("| groups | " + " | ".join(str(groups[s]) for s in SPLITS) + " |")
    return md + [""]


def _grouping_line(run: Path) -> str:
    """How the reader grouped the images into specimens (the ``grouping:`` line of ``grouping.txt``), or ""."""
    path = run / "grouping.txt"
    if not path.is_file():
        return ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("grouping:"):
            return line.removeprefix("grouping:").strip()
    return ""


def _test_groups(run: Path | None) -> int:
    """How many groups (specimens, slides, patients) the run's test split holds; 0 when unknown."""
    from .data.splits import SPLIT_MANIFEST, load_manifest

    if run is None or not (run / SPLIT_MANIFEST).is_file():
        return 0
    try:
        return len({r.group for r in load_manifest(run / SPLIT_MANIFEST, check=False)["test"] if r.group})
    except Exception:  # noqa: BLE001 - the card is still useful without it
        return 0


def _metrics_section(run: Path | None, ckpt_path: Path) -> list[str]:
    import csv
    import json

    md = ["## Metrics on its test split", ""]
    metrics_file = run / "metrics.json" if run else None
    if metrics_file is None or not metrics_file.is_file():
        return md + ["Not available (no metrics.json in the training run folder).", ""]
    best = run / "best_checkpoint.txt"
    if best.is_file() and Path(best.read_text().strip()).resolve() != ckpt_path.resolve():
        md += [
            f"> **Note:** these metrics belong to `{Path(best.read_text().strip()).name}`, the run's best checkpoint, "
            f"not to the exported `{ckpt_path.name}`.",
            "",
        ]
    metrics = json.loads(metrics_file.read_text())
    md += ["| metric | value |", "|---|---|"]
    md += [
        f"| `{k}` | {v:.4f} |" if isinstance(v, int | float) else f"| `{k}` | {v} |"
        for k, v in sorted(metrics.items())
    ]
    per_class = run / "test_per_class.csv"
    if per_class.is_file():
        with open(per_class, newline="") as f:
            rows = list(csv.DictReader(f))
        md += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for r in rows:  # an AC code's name starts with the code; a contest class's name is its ICAP node
            r["name"] = r["name"] if r["name"].startswith(r["class"]) else f"{r['class']} ({r['name']})"
        md += [
            f"| {r['name']} | {float(r['precision']):.3f} | {float(r['recall']):.3f} | {float(r['f1']):.3f} | {r['support']} |"
            for r in rows
        ]
        n = sum(int(r["support"]) for r in rows)
        if n < 10 * max(1, len(rows)):
            md += [
                "",
                f"Only {n} test images ({n / max(1, len(rows)):.1f} per class): these figures are very uncertain.",
            ]
    return md + [""]


_HEADLINE = (
    "test/mca",
    "test/acc",
    "test/macro_f1",
    "test/micro_f1",
    "test/exact_match",
    "test/level1_mca",
    "test/level2_mca",
    "test/level3_mca",
)


def _run_metrics(run: Path | None, ckpt_path: Path) -> dict[str, Any]:
    import json

    for folder in (
        run,
        ckpt_path.resolve().parent,
    ):  # a training run, or the eval_hierarchy folder of a bundle
        if folder is not None and (folder / "metrics.json").is_file():
            try:
                return json.loads((folder / "metrics.json").read_text())
            except ValueError:
                return {}
    return {}


def _class_nodes(run: Path | None) -> dict[str, dict[str, str]]:
    """A contest-level run's ``classes.csv`` rows by class (``Speckled`` -> its tree label, level-1 and
    level-2 nodes, AC code); empty without one."""
    from .data.hierarchy import read_classes_table

    return {} if run is None else {r["class"]: r for r in read_classes_table(run)}


def _is_synthetic(run: Path | None) -> bool | None:
    from omegaconf import OmegaConf

    if run is None:
        return None
    try:
        data = OmegaConf.load(run / "config_resolved.yaml").get("data", {})
    except Exception:  # noqa: BLE001
        return None
    target = str(data.get("_target_", ""))
    return "Synthetic" in target or (
        "Hierarchy" in target and not data.get("root")
    )  # hierarchy: root null = simulator


def _real_data_section(run: Path | None, metrics: dict[str, Any]) -> list[str]:
    """The run's headline test figures, said plainly to be on real or on synthetic images."""
    md = ["## Real-data figures", ""]
    synthetic = _is_synthetic(run)
    figures = [(k, metrics[k]) for k in _HEADLINE if isinstance(metrics.get(k), int | float)]
    if synthetic:
        return md + [
            "None: this run was trained and tested on **synthetic** fields only; its figures below say "
            "nothing about real slides. Evaluate it on real images (`ana-eval`) before any use.",
            "",
        ]
    if not figures:
        return md + ["Not available (no test metrics in the run folder).", ""]
    where = (
        "real images of the run's own held-out test split" if synthetic is False else "the run's test split"
    )
    n_groups, shared = _test_groups(run), metrics.get("test/shared_groups_with_train")
    if n_groups:
        where += f", {n_groups} groups (specimens, slides or patients)"
        if shared == 0:
            where += ", none of which was trained on"
        elif isinstance(shared, int | float):
            where += f", **{int(shared)} of them also in training** (not a figure on unseen groups)"
    md += [
        f"On {where} (95 % bootstrap intervals over those groups where given):",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k, v in figures:
        lo, hi = metrics.get(f"{k}_ci95_low"), metrics.get(f"{k}_ci95_high")
        ci = (
            f" [{float(lo):.4f}, {float(hi):.4f}]"
            if isinstance(lo, int | float) and isinstance(hi, int | float)
            else ""
        )
        md.append(f"| `{k}` | {float(v):.4f}{ci} |")
    return md + [""]


def _calibration_section(info: ModelInfo, metrics: dict[str, Any], run: Path | None) -> list[str]:
    t = info.extra.get("temperature")
    md = ["## Calibration", ""]
    if isinstance(t, dict):
        fitted = {k: v for k, v in t.items() if v}
        md.append(
            "Each model of the pipeline carries its own temperature, fitted on its validation split after training: "
            + (
                ", ".join(f"{k} {[round(float(x), 3) for x in v]}" for k, v in fitted.items())
                or "none (uncalibrated)"
            )
            + "."
        )
    elif t:
        md.append(
            f"The probabilities are temperature-scaled (T = {[round(float(x), 3) for x in t]}), fitted on the "
            "validation split after training; the argmax (and multi-label decisions, whose thresholds moved with "
            "T) are those of the raw model."
        )
    else:
        md.append(
            "Not calibrated (trained with calibrate=false or without a validation split, its fitted temperature did "
            "not carry across validation groups, or it was trained before calibration existed): the probabilities are "
            "raw softmax/sigmoid outputs and may be over-confident."
        )
    if isinstance(metrics.get("test/ece"), int | float):
        md += [
            "",
            "| expected calibration error (test split, 15 bins) | value |",
            "|---|---|",
            f"| uncalibrated | {float(metrics.get('test/ece_uncalibrated', float('nan'))):.4f} |",
            f"| as served | {float(metrics['test/ece']):.4f} |",
        ]
        if run is not None and (run / "test_reliability_diagram.png").is_file():
            md += ["", "Reliability diagram: `test_reliability_diagram.png` in the run folder."]
    else:
        md += ["", "Calibration error: not measured for this run (no `test/ece` in its metrics.json)."]
    return md + [""]


def _cell_input(ckpt_path: Path, info: ModelInfo) -> list[str]:
    """For a model of single cells: how each cell must be cut and combined with its mask, as in training,
    and whether the model averages the dihedral views itself (``info.extra["cell_tta"]``, set by the export)."""
    from .fields.mode import training_scale

    scale = training_scale(ckpt_path)
    if scale["input_kind"] != "cell":
        return []
    mask = {
        "channel": "its mask in the blue channel (255 inside the cell, 0 outside), the cell's grey level in red and green",
        "apply": "the pixels outside its mask set to 0",
    }.get(scale["cell_mask"], "its mask not used")
    frac = scale["crop_fraction"]
    cut = (
        f"cut as a square in which the mask's bounding box spans {frac:g} of the side, centred on the box, "
        "filled with the background level past the image (`data.crop_fraction`; `ana_lightning.data.masks.recrop`)"
        if frac
        else "cut as the training cells were (no re-framing: `data.crop_fraction` unset)"
    )
    lines = [
        f"- Cell crops, not fields: one segmented cell per image, {cut}, with {mask}. `ana-predict` and "
        "`ana-app` cut a field's cells that way; other software must do the same"
    ]
    if info.extra.get("cell_tta"):
        lines.append(
            "- The model reads each cell in its 8 flips and 90° rotations and averages the logits itself "
            "(dihedral test-time augmentation, `model.backbone.cell_input.tta`): pass each cell once"
        )
    return lines


def _bit_depth(info: ModelInfo) -> list[str]:
    """The camera bit depth its training files with more than 8 bits were read at (``data.bit_depth``)."""
    depth = info.extra.get("bit_depth")
    if not depth:
        return []
    top = 2 ** int(depth) - 1
    return [
        f"- Trained on {depth}-bit camera data (`data.bit_depth={depth}`): a file with more than 8 bits per pixel "
        f"is read with 0-{top} as the full range (value × 255 / {top}), not as a share of 65535. `ana-predict` and "
        "`ana-app` do so by default (`bit_depth=auto`); other software must do the same, and files of another "
        "camera need their own `bit_depth=`"
    ]


def _channels(info: ModelInfo) -> list[str]:
    """The order its training TIFFs of several channels were read in (``data.channels``)."""
    roles = info.extra.get("channels")
    if not roles:
        return []
    return [
        f"- Trained on TIFFs of {len(roles)} channels read in the order `data.channels=[{','.join(roles)}]` (FITC to "
        "green, DAPI to blue, the rest left out). `ana-predict` and `ana-app` read such files so by default "
        "(`channels=auto`); files of another microscope need their own `channels=` (or `channels=null` when they "
        "name their channels)"
    ]


def _names_centromere_and_speckled(class_names: Sequence[str], tree) -> bool:
    """Whether a model's outputs include a centromere and a speckled class (contest names such as
    ``Centromere`` / ``Speckled``, ICAP codes such as ``AC-3`` / ``AC-4``, or the tree's node names)."""
    words = []
    for c in class_names:
        words.append(str(c).lower())
        if tree.is_code(str(c)):
            words.append(tree.names[tree.parse_code(str(c))].lower())
    return any("centromere" in w for w in words) and any("speckled" in w for w in words)


def _classes_section(class_names: Sequence[str], tree, run: Path | None) -> list[str]:
    """The class table: each output's AC code, or for a contest class (``Speckled``) the ICAP node the run's
    ``classes.csv`` ties it to, with the AC codes under that node and its level-1 and level-2 nodes."""
    md = ["", "## Classes", "", "| index | code | pattern | level 1 | level 2 |", "|---|---|---|---|---|"]
    nodes = _class_nodes(run)
    for i, c in enumerate(class_names):
        if tree.is_code(c):
            md.append(
                f"| {i} | {c} | {tree.names[tree.parse_code(c)]} | {tree.level_of(c, 1)} | {tree.level_of(c, 2)} |"
            )
        elif c in nodes:  # a contest class: its ICAP node from the run's classes.csv
            row = nodes[c]
            pattern = tree.describe(row.get("tree_label", ""))
            md.append(f"| {i} | {c} | {pattern} | {row.get('level1', '')} | {row.get('level2', '')} |")
        else:
            md.append(f"| {i} | {c} | | | |")
    return md + [""]


def write_model_card(
    path: str | Path,
    info: ModelInfo,
    ckpt_path: Path,
    model_path: Path,
    fmt: str,
    max_abs_diff: float,
    batch_sizes: Sequence[int],
    opset_version: int | None = None,
) -> Path:
    """The Markdown model card: classes, training data, test metrics, thresholds, intended use, disclaimer."""
    from . import __version__ as version
    from .taxonomy import Taxonomy

    tree = Taxonomy.load()
    run = _run_folder(ckpt_path)
    title = info.class_path.rsplit(".", 1)[-1] + (
        f" ({info.extra['backbone']})" if info.extra.get("backbone") else ""
    )
    cell_lines = _cell_input(ckpt_path, info)
    md = [
        f"# Model card: {title}, ANA pattern classifier",
        "",
        f"> {DISCLAIMER}",
        "",
        "## Intended use",
        "",
        CELL_INTENDED_USE if cell_lines else INTENDED_USE,
        "",
        "## Model",
        "",
        f"- File: `{model_path.name}` ({fmt}{f', opset {opset_version}' if opset_version else ''}), sha256 `{sha256_file(model_path)}`",
        f"- From checkpoint: `{ckpt_path.name}`, sha256 `{sha256_file(ckpt_path)}`",
        f"- Trained as: `{info.class_path}`; task `{info.task}`",
        f"- Exported: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} with ana-lightning {version}, "
        f"torch {torch.__version__}",
        f"- Input: RGB {'cell crop (cut as below)' if cell_lines else 'field image'}, any size, resized to "
        f"{info.image_size}×{info.image_size} (area interpolation), "
        f"scaled to [0, 1] and normalised with mean {list(info.mean)}, std {list(info.std)}; tensor `image` (N, 3, "
        f"{info.image_size}, {info.image_size}), any batch size N",
        *cell_lines,
        *_bit_depth(info),
        *_channels(info),
        f"- Output: `probabilities` (N, {len(decision_rule(info).output_names)}) in the order "
        + (
            "level-1 nodes, level-2 nodes, then the leaves below"
            if info.task == "hierarchical"
            else "of the classes below"
        ),
        f"- Parity with the PyTorch model: max abs difference {max_abs_diff:.2e} on random batches of "
        f"{', '.join(map(str, batch_sizes))} images",
        "",
        "## Decision rule and thresholds",
        "",
    ]
    if info.task == "multi_label":
        thr = info.thresholds or (0.5,) * len(info.class_names)
        md += [
            "Every class whose probability reaches its threshold is predicted (none if no class does).",
            "",
            "| class | threshold |",
            "|---|---|",
            *[f"| {c} | {t:.3f} |" for c, t in zip(info.class_names, thr, strict=True)],
        ]
    elif info.task == "single_label":
        md += ["Single-label: the most probable class is predicted (softmax; no threshold)."]
    elif info.task == "hierarchical":
        md += [
            f"Hierarchical ({info.extra.get('routing')} routing over the ICAP tree): the outputs are the level-1, level-2 "
            "and leaf probabilities side by side; the predicted path is always a path of the tree (leaf under its "
            "level-2 node, under its level-1 node), with P(level 1), P(level 1)·P(level 2 | level 1) and the path "
            "probability. A group without a level-3 model ends at level 2."
        ]
    else:
        md += [f"Task `{info.task}`: see its decision rule in `ana_lightning.predict`."]
        if info.thresholds:
            md += [
                "",
                "Thresholds: "
                + ", ".join(f"{c} {t:.3f}" for c, t in zip(info.class_names, info.thresholds, strict=True)),
            ]
    md += _classes_section(info.class_names, tree, run)
    metrics = _run_metrics(run, ckpt_path)
    md += _real_data_section(run, metrics)
    md += _calibration_section(info, metrics, run)
    md += _training_data_section(run, info)
    md += _metrics_section(run, ckpt_path)
    md += [
        "## Limitations",
        "",
        "- Patterns outside the class list, mixed patterns (for a single-label model), unusual magnification, "
        "other substrates or stains, and out-of-focus or saturated fields get confident-looking wrong answers.",
        "- Figures above come from the run's own held-out test split; they say little about another lab's slides.",
        *(
            [f"- Negatives: {NO_NEGATIVE_CLASS}."]
            if not screens_negatives(decision_rule(info).output_names)
            else []
        ),
        *(
            [
                "- Specimen verdicts (`group_by=`): errors come by whole specimens, and a wrong verdict can name one "
                "pattern with no second one listed (the I3A cell recipe's grouped CV, round 20: 2 of its 3 wrong "
                "specimens of 31 at the default `combine=mean_log`). `combine=vote` lists each pattern's share of "
                "the cells; look at the cells of a specimen whose leading pattern is not clearly ahead."
            ]
            if info.task == "single_label"
            else []
        ),
        *(
            [
                "- Centromere against speckled: models trained on a few specimens per class can learn the diffuse "
                "nuclear level under the dots instead of the dots (the I3A cell recipe's grouped CV, round 21: "
                "centromere cells on a bright diffuse nucleus, and speckled cells with sparse dots on a dim one, "
                "read as the other class, whole specimens at a time). Check such specimens by eye."
            ]
            if _names_centromere_and_speckled(info.class_names, tree)
            else []
        ),
        "",
        "## How to use",
        "",
        f"`ana-predict ckpt_path={model_path.name} input=<image or folder>` or `ana-app ckpt_path={model_path.name}`; "
        "the preprocessing above is read from the file.",
        "",
    ]
    if info.task in ("single_label", "multi_label"):
        labelled = (
            "folders named by their AC codes, e.g. `AC-1 + AC-4/`"
            if info.task == "multi_label"
            else "folders named by class, e.g. `ac-3/`"
        )
        md += [
            "Before relying on it, score it on images whose labels your lab already knows: "
            f"`ana-predict ckpt_path={model_path.name} input=<{labelled}> truth=folder` writes `truth_report.md`.",
            "",
        ]
    path = Path(path)
    path.write_text("\n".join(md))
    return path
