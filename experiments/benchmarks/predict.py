"""Prediction throughput: PyTorch eager vs ONNX Runtime on CPU, at batch 1 and 32.

A softmax classifier (random weights: speed does not depend on them) is saved as a checkpoint,
exported with ``ana-export``'s code path (``export_model``, parity-checked), and both files are run
through the same :class:`~ana_lightning.predict.Predictor` API. Two measurements per backend and
batch size, medians over ``--repeats`` timed runs after a warm-up:

- **model**: ``predict_proba`` on an already preprocessed batch (the network alone);
- **end to end**: ``predict_paths`` over PNG fields on disk (read, decode, resize, normalise, predict).

The ratio column is against PyTorch eager at the same batch size, measured in this run.

    python experiments/benchmarks/predict.py                          # resnet18, 224 px, 2 threads
    python experiments/benchmarks/predict.py --backbone efficientnet_b0 --threads 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from ana_lightning.export import export_model  # noqa: E402
from ana_lightning.models.classifier import SoftmaxClassifier  # noqa: E402
from ana_lightning.predict import Predictor  # noqa: E402
from ana_lightning.taxonomy import Taxonomy  # noqa: E402


def _checkpoint(folder: Path, backbone: str, image_size: int) -> Path:
    import lightning as L

    torch.manual_seed(0)
    model = SoftmaxClassifier(backbone={"name": backbone}, class_names=list(Taxonomy.load().codes), image_size=image_size)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": L.__version__}
    model.on_save_checkpoint(ckpt)
    path = folder / "bench.ckpt"
    torch.save(ckpt, path)
    return path


def _fields(folder: Path, n: int, size: int) -> list[Path]:
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        low = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        p = folder / f"field_{i:03d}.png"
        cv2.imwrite(str(p), img)
        out.append(p)
    return out


def _median_seconds(fn, repeats: int, warmup: int) -> tuple[float, float]:
    """Median wall-clock and median CPU seconds (this process, all threads) of ``fn()``."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads (the same for both)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--field-size", type=int, default=512, help="size of the PNG fields for the end-to-end runs")
    ap.add_argument("--no-end-to-end", action="store_true")
    args = ap.parse_args(argv)

    import onnxruntime

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = _checkpoint(tmp, args.backbone, args.image_size)
        t = time.perf_counter()
        result = export_model(ckpt, format="onnx", output=tmp / "bench.onnx")
        export_s = time.perf_counter() - t
        backends = {
            "pytorch eager": Predictor.load(ckpt, device="cpu"),
            "onnxruntime": Predictor.load(result.model_path, device="cpu", threads=args.threads),
        }
        fields = [] if args.no_end_to_end else _fields(tmp, max(args.batch_sizes) * 2, args.field_size)
        rng = np.random.default_rng(0)
        rows = []
        for bs in args.batch_sizes:
            x = rng.standard_normal((bs, 3, args.image_size, args.image_size)).astype(np.float32)
            base = {}
            for name, p in backends.items():
                sec, cpu = _median_seconds(lambda p=p, x=x: p.predict_proba(x), args.repeats, args.warmup)
                base.setdefault("model", sec)
                rows.append(("model", name, bs, bs / sec, 1000 * sec, 1000 * cpu / bs, base["model"] / sec))
                if fields:
                    files = fields[: max(bs * 2, 2)]
                    sec, cpu = _median_seconds(lambda p=p, f=files, b=bs: list(p.predict_paths(f, batch_size=b)),
                                               max(1, args.repeats // 2), 1)
                    per = sec / len(files)
                    base.setdefault("e2e", per)
                    rows.append(("end to end", name, bs, 1 / per, 1000 * per * bs, 1000 * cpu / len(files), base["e2e"] / per))

    print(f"\n{args.backbone} at {args.image_size} px, {len(Taxonomy.load().codes)} classes, CPU, {args.threads} thread(s) "
          f"(machine: {os.cpu_count()} cores); torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"export + parity check: {export_s:.1f} s, max abs difference {result.max_abs_diff:.1e}")
    if fields:
        print(f"end to end: {args.field_size}x{args.field_size} PNG fields read, decoded, resized, normalised, predicted")
    print(f"medians of {args.repeats} runs (end to end: {max(1, args.repeats // 2)}) after warm-up; CPU ms/image is this "
          f"process's CPU time (all threads), steadier than wall clock on a shared machine "
          f"(load average at the end: {os.getloadavg()[0]:.1f})\n")
    print("| measure | backend | batch | images/s | ms per batch | CPU ms/image | speed vs eager |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for what, name, bs, ips, ms, cpu_ms, ratio in sorted(rows, key=lambda r: (r[0] != "model", r[2], r[1] != "pytorch eager")):
        print(f"| {what} | {name} | {bs} | {ips:.1f} | {ms:.1f} | {cpu_ms:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
