"""Field mode on a CPU: ``ana-predict … num_workers=N`` against ``num_workers=0`` (the baseline), same run.

Field mode reads every field twice: a first pass estimates each field's nucleus scale (segmentation), a
second segments it at that scale, cuts its cells (or tiles) and runs the model. With ``num_workers=N``,
N worker processes read and segment fields while the main process runs the model. This script runs the
``ana-predict`` job in this process on the same folder for each setting, alternating settings within a
repeat (a shared machine drifts), checks that every setting writes the same ``predictions.csv`` as the
baseline, and prints the median wall time of the job (model loading included, Python start-up not) and
the median of the within-repeat ratio to the baseline.

    python experiments/benchmarks/field_workers.py --ckpt <cell model .ckpt> \\
        --input ../shared/data/ana-pattern-quest/patterns --workers 0 1 2 --torch-threads 0 1
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="a cell (or field) model: .ckpt or an ana-export file")
    ap.add_argument("--input", default="../shared/data/ana-pattern-quest/patterns", help="a folder of fields")
    ap.add_argument("--workers", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--torch-threads", nargs="*", type=int, default=[0], help="0: PyTorch's default (one per core)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extra", nargs="*", default=["tta=false"], help="more ana-predict overrides")
    a = ap.parse_args()
    if not Path(a.input).is_dir():
        sys.exit(f"--input {a.input}: no such folder")

    import torch

    from ana_lightning.predict import run_predict
    from ana_lightning.utils import compose_config

    default_threads = torch.get_num_threads()
    settings = [(w, t) for t in a.torch_threads for w in a.workers]
    base = settings[0]
    times: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    ratios: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    n_fields = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            order = settings if rep % 2 == 0 else settings[::-1]
            mine: dict[tuple[int, int], float] = {}
            for w, t in order:
                out = Path(tmp) / f"w{w}_t{t}_r{rep}"
                cfg = compose_config(
                    "predict",
                    [
                        f"ckpt_path={a.ckpt}",
                        f"input={a.input}",
                        "progress=false",
                        f"num_workers={w}",
                        f"torch_threads={t or 'null'}",
                        f"paths.output_dir={out}",
                        *a.extra,
                    ],
                )
                torch.set_num_threads(t or default_threads)
                t0 = time.perf_counter()
                summary = run_predict(cfg)
                mine[(w, t)] = time.perf_counter() - t0
                n_fields = summary.n_images
                first = Path(tmp) / f"w{base[0]}_t{base[1]}_r0" / "predictions.csv"
                if first.exists() and not filecmp.cmp(first, out / "predictions.csv", shallow=False):
                    sys.exit(f"num_workers={w} torch_threads={t}: predictions differ from the baseline's")
            for s in settings:
                times[s].append(mine[s])
                ratios[s].append(mine[s] / mine[base])
    print(
        f"\n{n_fields} fields from {a.input}, model {a.ckpt}, {a.repeats} repeats, "
        f"{os.cpu_count()} CPU cores; overrides {' '.join(a.extra) or '-'}\n"
    )
    print(
        "| num_workers | torch_threads | median s | s per field | ratio to baseline (median within repeats) |"
    )
    print("|---|---|---|---|---|")
    for w, t in settings:
        med = statistics.median(times[(w, t)])
        print(
            f"| {w} | {t or f'default ({default_threads})'} | {med:.1f} | {med / max(n_fields, 1):.3f} "
            f"| {statistics.median(ratios[(w, t)]):.3f} |"
        )
    print("\nEvery setting wrote the same predictions.csv as the baseline (checked byte for byte).")


if __name__ == "__main__":
    main()
