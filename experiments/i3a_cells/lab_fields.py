"""A lab labels some of its own fields: how are its OTHER fields then read? (round 24)

    python experiments/i3a_cells/lab_fields.py run ../shared/data/ana-pattern-quest/patterns \\
        ../shared/data/i3a2014-task1/training outputs/<I3A-only run> outputs/lab_fields [--folds 5]
    python experiments/i3a_cells/lab_fields.py table outputs/lab_fields [--out-md table.md] [--out-csv verdicts.csv]

Leave-fields-out cross-validation over a folder of labelled fields ``<fields>/<ac-N>/<images>`` (the codes that
:data:`field_cells.CLASSES` maps to the six contest classes; byte-identical files once). Each code's fields are
shuffled (``--seed``) and dealt round-robin to the folds, the deal running on from code to code, so every field is
held out once. For each fold:

- ``field_cells.py cut`` has cut every field once (``<out>/cells``; Golgi included);
- the **adapted** model: ``ana-train experiment=i3a_cells`` on the I3A cells, with the I3A-only run's split kept
  (its ``split_manifest.csv``), plus the cut cells of the fields *not* in the fold, in the training split only
  (``field_cells.py combine``);
- the adapted model and the I3A-only run's ``checkpoints/last.ckpt`` read the fold's held-out fields with
  ``ana-predict`` at its defaults (field mode, one verdict per field, ``truth=folder``).

``--route cells_out`` (round 25) takes the route a lab is told to take instead of the experiment's own cutter and
``combine``: per fold, the I3A-only model cuts the fold's training fields with
``ana-predict … truth=folder cells_out=<fold>/cells_out``, and ``ana-train experiment=i3a_cells`` trains on the I3A
folder itself with the I3A-only run's manifest and ``data.extra_train=<fold>/cells_out``.

``run`` resumes: a fold whose training finished (``training_finished.json``) or whose reading is written is not
run again. ``table`` pools the held-out verdicts: field MCA over the six classes for both models, recall per class,
the paired difference with a bootstrap interval over fields (resampled within each class), and each adapted
model's I3A test MCA beside the I3A-only run's; ``--out-csv`` writes each held-out field's verdict, confidence and
margin over the runner-up for both models, so two rounds can be compared field by field.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import field_cells as FC  # noqa: E402

CODE_CLASS = {code: cls for cls, codes in FC.CLASSES.items() for code in codes}
BIN = Path(sys.executable).parent


def fields_of(root: Path) -> list[tuple[str, Path]]:
    """(code, file) of every field of the mapped codes, byte-identical files once (the first by name)."""
    out, seen = [], set()
    for code in sorted(CODE_CLASS, key=lambda c: int(c.split("-")[1])):
        for f in sorted(p for p in (root / code).glob("*") if p.is_file()):
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                out.append((code, f))
    return out


def deal(fields: list[tuple[str, Path]], k: int, seed: int) -> dict[str, int]:
    """``code/stem`` → fold: each code's fields shuffled, dealt round-robin, the deal running on across codes."""
    rng = np.random.default_rng(seed)
    fold, nxt = {}, 0
    for code in dict.fromkeys(c for c, _ in fields):
        mine = [f for c, f in fields if c == code]
        for i in rng.permutation(len(mine)):
            fold[f"{code}/{mine[i].stem}"] = nxt % k
            nxt += 1
    return fold


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(src.resolve())


def _run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), f"> {log}", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1")
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if rc:
        raise SystemExit(f"exit status {rc}: {' '.join(cmd)} (log: {log})")


def run(
    fields_root: Path, real: Path, base_run: Path, out: Path, k: int, seed: int, route: str = "field_cells"
) -> None:
    base_ckpt = base_run / "checkpoints" / "last.ckpt"
    manifest = base_run / "split_manifest.csv"
    for p in (base_ckpt, manifest):
        if not p.is_file():
            raise SystemExit(f"{p} not found: give the folder of a finished experiment=i3a_cells run")
    fields = fields_of(fields_root)
    fold = deal(fields, k, seed)
    out.mkdir(parents=True, exist_ok=True)
    plan = out / "folds.csv"
    rows = [{"field": f"{c}/{f.stem}", "path": str(f), "code": c, "class": CODE_CLASS[c]} for c, f in fields]
    for r in rows:
        r["fold"] = fold[r["field"]]
    if plan.is_file():
        old = {r["field"]: int(r["fold"]) for r in _csv_rows(plan)}
        if old != {r["field"]: r["fold"] for r in rows}:
            raise SystemExit(f"{plan} holds another deal of the fields: give a new output folder")
    else:
        with open(plan, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["field", "fold", "code", "class", "path"])
            w.writeheader()
            w.writerows(rows)
    route_file = out / "route.txt"
    if route_file.is_file() and route_file.read_text().strip() != route:
        raise SystemExit(
            f"{out} was run with --route {route_file.read_text().strip()}: give a new output folder"
        )
    route_file.write_text(route + "\n")
    if route == "cells_out":
        for f in range(k):
            _run_fold_cells_out(
                out / f"fold{f}", [r for r in rows if r["fold"] != f], real, base_ckpt, manifest
            )
            _read_heldout(out / f"fold{f}", [r for r in rows if r["fold"] == f], base_ckpt)
        print(f"done: python {Path(__file__).name} table {out}")
        return
    cells = out / "cells"
    if not (cells / "gt_training.csv").is_file():
        if cells.exists():
            raise SystemExit(f"{cells} holds an unfinished cut: remove it and run again")
        FC.cut(fields_root, cells, skip=[])
    cut_rows = _csv_rows(cells / "gt_training.csv")
    for f in range(k):
        d = out / f"fold{f}"
        held = [r for r in rows if r["fold"] == f]
        # the fold's training cells: every cut cell whose field is not held out (symbolic links, same IDs)
        sub = d / "cells"
        if not (sub / "gt_training.csv").is_file():
            keep = [r for r in cut_rows if fold[r["Specimen ID"]] != f]
            for r in keep:
                for suffix in (".png", "_Mask.png"):
                    _link(cells / f"{r['Image ID']}{suffix}", sub / f"{r['Image ID']}{suffix}")
            with open(sub / "gt_training.csv.part", "w", newline="") as fh:
                w = csv.DictWriter(fh, FC.COLUMNS)
                w.writeheader()
                w.writerows(keep)
            os.replace(sub / "gt_training.csv.part", sub / "gt_training.csv")
        combined = d / "combined"
        if not (combined / "split_manifest.csv").is_file():
            FC.combine(sub, real, manifest, combined)
        _train(
            d / "train",
            [f"data.root={combined}", f"data.split_manifest={combined / 'split_manifest.csv'}"],
            d / "train.log",
        )
        _read_heldout(d, held, base_ckpt)
    print(f"done: python {Path(__file__).name} table {out}")


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _train(train_dir: Path, overrides: list[str], log: Path) -> None:
    """``ana-train experiment=i3a_cells`` into ``train_dir``, resumed from its last checkpoint when one is there."""
    if not (train_dir / "training_finished.json").is_file():
        _run(
            [str(BIN / "ana-train"), "experiment=i3a_cells", *overrides, f"hydra.run.dir={train_dir}"]
            + (["ckpt_path=last"] if (train_dir / "checkpoints" / "last.ckpt").is_file() else []),
            log,
        )


def _run_fold_cells_out(d: Path, train_rows: list[dict], real: Path, base_ckpt: Path, manifest: Path) -> None:
    """The shipped route for one fold: the I3A-only model writes the training fields' cells (``cells_out``), and
    the adapted model trains on the I3A folder plus those cells (``data.extra_train``)."""
    fields = d / "train_fields"
    for r in train_rows:
        _link(Path(r["path"]), fields / r["code"] / Path(r["path"]).name)
    cells = d / "cells_out"
    if not (cells / "gt_training.csv").is_file():
        if cells.exists():  # this script's own unfinished cut (cells_out writes its CSV last): start it again
            shutil.rmtree(cells)
        _run(
            [
                str(BIN / "ana-predict"),
                f"ckpt_path={base_ckpt}",
                f"input={fields}",
                "truth=folder",
                f"cells_out={cells}",
                f"hydra.run.dir={d / 'cut'}",
            ],
            d / "cut.log",
        )
    _train(
        d / "train",
        [f"data.root={real}", f"data.split_manifest={manifest}", f"data.extra_train={cells}"],
        d / "train.log",
    )


def _read_heldout(d: Path, held: list[dict], base_ckpt: Path) -> None:
    """The adapted model and the I3A-only model read the fold's held-out fields (``ana-predict`` defaults)."""
    heldout = d / "heldout"
    for r in held:
        _link(Path(r["path"]), heldout / r["code"] / Path(r["path"]).name)
    for arm, ckpt in (("adapted", d / "train" / "checkpoints" / "last.ckpt"), ("i3a_only", base_ckpt)):
        pred = d / f"predict_{arm}"
        if not (pred / "truth_predictions.csv").is_file():
            _run(
                [
                    str(BIN / "ana-predict"),
                    f"ckpt_path={ckpt}",
                    f"input={heldout}",
                    "truth=folder",
                    f"hydra.run.dir={pred}",
                ],
                d / f"predict_{arm}.log",
            )


def specimen_of(field: str) -> str:
    """``<code>/<id>-<n>`` → ``<id>``: the ICAP reference fields name several fields of one case ``<id>-0``,
    ``<id>-1``; any other name is its own specimen."""
    stem = field.split("/")[-1]
    head, _, tail = stem.rpartition("-")
    return head if head and tail.isdigit() else stem


def _mca(truth: list[str], pred: list[str], classes: list[str]) -> float:
    rec = [np.mean([p == c for t, p in zip(truth, pred, strict=True) if t == c]) for c in classes]
    return float(np.mean(rec))


ARMS = ("adapted", "i3a_only")
VERDICT_COLUMNS = ["field", "fold", "class"] + [
    f"{arm}_{k}" for arm in ("i3a_only", "adapted") for k in ("verdict", "confidence", "margin")
]


def field_verdicts(out: Path, plan: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each held-out field of ``plan`` (``folds.csv``'s rows, in order) with both arms' verdict (``(<status>)`` for a field not read),
    confidence and margin (the verdict's probability above the runner-up's; blank without probabilities)."""
    rows = [{"field": r["field"], "fold": r["fold"], "class": r["class"]} for r in plan]
    for f in sorted({int(r["fold"]) for r in plan}):
        for arm in ARMS:
            p = out / f"fold{f}" / f"predict_{arm}" / "predictions.csv"
            if not p.is_file():
                raise SystemExit(f"{p} missing: run `run` first (fold {f} is not finished)")
            by_field = {"/".join(Path(x["path"]).parts[-2:]): x for x in _csv_rows(p)}
            for r, row in zip(plan, rows, strict=True):
                if int(r["fold"]) != f:
                    continue
                x = by_field[f"{r['code']}/{Path(r['path']).name}"]
                ok = x["status"] == "ok"
                probs = sorted((float(v) for k, v in x.items() if k.startswith("p_") and v), reverse=True)
                row[f"{arm}_verdict"] = x["verdict"] if ok else f"({x['status']})"
                row[f"{arm}_confidence"] = x.get("confidence", "") if ok else ""
                row[f"{arm}_margin"] = f"{probs[0] - probs[1]:.6f}" if ok and len(probs) > 1 else ""
    return rows


def table(out: Path, n_boot: int = 2000, seed: int = 0, out_csv: Path | None = None) -> str:
    """The pooled figures as Markdown; ``out_csv``: also each field's verdicts (:func:`field_verdicts`)."""
    plan = _csv_rows(out / "folds.csv")
    k = 1 + max(int(r["fold"]) for r in plan)
    rows = field_verdicts(out, plan)
    if out_csv is not None:
        with open(out_csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, VERDICT_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    verdict = {arm: {r["field"]: r[f"{arm}_verdict"] for r in rows} for arm in ARMS}
    truth = [r["class"] for r in plan]
    classes = [c for c in FC.CLASSES if c in truth]  # the classes that have labelled fields
    names = [r["field"] for r in plan]
    pred = {arm: [verdict[arm][n] for n in names] for arm in verdict}
    mca = {arm: _mca(truth, pred[arm], classes) for arm in pred}
    rng = np.random.default_rng(seed)
    idx_by_class = {c: [i for i, t in enumerate(truth) if t == c] for c in classes}
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(v, size=len(v), replace=True) for v in idx_by_class.values()])
        t = [truth[i] for i in idx]
        diffs.append(
            _mca(t, [pred["adapted"][i] for i in idx], classes)
            - _mca(t, [pred["i3a_only"][i] for i in idx], classes)
        )
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    lines = [
        f"Held-out fields: {len(plan)} ({k} folds, each field read once by a model that never saw it)",
        "",
        f"| model | field MCA ({len(classes)} classes) | fields right |",
        "|---|---|---|",
    ]
    for arm, label in (
        ("i3a_only", "I3A cells only"),
        ("adapted", "I3A cells + the other folds' field cells"),
    ):
        right = sum(p == t for p, t in zip(pred[arm], truth, strict=True))
        lines.append(f"| {label} | {mca[arm]:.3f} | {right} of {len(plan)} |")
    lines += [
        "",
        f"Paired difference (adapted − I3A only): **{mca['adapted'] - mca['i3a_only']:+.3f}** "
        f"[{lo:+.3f}, {hi:+.3f}] (bootstrap over fields within class, {n_boot} draws)",
    ]
    # a field whose specimen (name <id>-<n>) has another field in another fold was tested by a model that trained
    # on that sibling: the figure without them
    folds_of: dict[str, set[int]] = {}
    for r in plan:
        folds_of.setdefault(specimen_of(r["field"]), set()).add(int(r["fold"]))
    shared = [n for n, r in zip(names, plan, strict=True) if len(folds_of[specimen_of(n)]) > 1]
    if shared:
        keep = [i for i, n in enumerate(names) if n not in shared]
        kept_classes = [c for c in classes if any(truth[i] == c for i in keep)]
        m = {arm: _mca([truth[i] for i in keep], [pred[arm][i] for i in keep], kept_classes) for arm in pred}
        lines += [
            "",
            f"Without the {len(shared)} field(s) whose specimen has a field in another fold ({', '.join(shared)}): "
            f"I3A only {m['i3a_only']:.3f}, adapted {m['adapted']:.3f} ({m['adapted'] - m['i3a_only']:+.3f}; "
            f"{len(keep)} fields, {len(kept_classes)} classes)",
        ]
    lines += [
        "",
        "| class | fields | recall, I3A only | recall, adapted | adapted verdicts of the wrong ones |",
        "|---|---|---|---|---|",
    ]
    for c in classes:
        ii = idx_by_class[c]
        r0 = np.mean([pred["i3a_only"][i] == c for i in ii])
        r1 = np.mean([pred["adapted"][i] == c for i in ii])
        wrong = sorted({pred["adapted"][i] for i in ii if pred["adapted"][i] != c})
        lines.append(f"| {c} | {len(ii)} | {r0:.2f} | {r1:.2f} | {', '.join(wrong) or '–'} |")
    lines += [
        "",
        "| fold | held-out fields | the training fields' cells | adapted: I3A test MCA (6 unseen I3A specimen groups) |",
        "|---|---|---|---|",
    ]
    for f in range(k):
        m = out / f"fold{f}" / "train" / "metrics.json"
        v = json.loads(m.read_text()).get("test/mca") if m.is_file() else None
        n = sum(int(r["fold"]) == f for r in plan)
        cells = [
            out / f"fold{f}" / d / "gt_training.csv" for d in ("cells_out", "cells")
        ]  # --route cells_out | not
        made = next((len(_csv_rows(c)) for c in cells if c.is_file()), None)
        lines.append(f"| {f} | {n} | {'–' if made is None else made} | {'–' if v is None else f'{v:.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="cut, deal, train and read every fold (resumes)")
    r.add_argument("fields", type=Path)
    r.add_argument("real", type=Path, help="the I3A training folder the I3A-only run trained on")
    r.add_argument("base_run", type=Path, help="the I3A-only experiment=i3a_cells run folder")
    r.add_argument("out", type=Path)
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--route",
        choices=["field_cells", "cells_out"],
        default="field_cells",
        help="who cuts the training fields' cells: this experiment's field_cells.py (round 24) or ana-predict "
        "cells_out with data.extra_train, the route a lab takes (round 25)",
    )
    t = sub.add_parser("table", help="pool the held-out verdicts of a finished run")
    t.add_argument("out", type=Path)
    t.add_argument("--out-md", type=Path)
    t.add_argument(
        "--out-csv", type=Path, help="each held-out field's verdict, confidence and margin, both arms"
    )
    a = ap.parse_args(argv)
    if a.cmd == "run":
        run(a.fields, a.real, a.base_run, a.out, a.folds, a.seed, a.route)
    else:
        text = table(a.out, out_csv=a.out_csv)
        print(text)
        if a.out_md:
            a.out_md.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
