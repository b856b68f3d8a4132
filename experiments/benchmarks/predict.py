"""Prediction speed: PyTorch eager vs ONNX Runtime on CPU, at batch 1 and 32, with a per-stage breakdown.

A softmax classifier (random weights: speed does not depend on them) is saved as a checkpoint,
exported with ``ana-export``'s code path (``export_model``, parity-checked), and both files are run
through the same :class:`~ana_lightning.predict.Predictor` API:

- **stages**: each step of the end-to-end path timed alone on the same PNG fields — read the bytes,
  decode (the project's reader), resize (area interpolation to the model's input), normalise (to a
  float32 CHW array), collate (``np.stack``; ``torch.stack`` shown for comparison) — and the model
  alone per backend;
- **session options**: ONNX Runtime with its stock options (worker threads spin between runs) and
  with the predictor's (``allow_spinning=0``, sequential execution), and both thread counts;
- **end to end**: ``predict_paths`` over PNG fields on disk (read, decode, resize, normalise,
  predict), with the next batch read in a background thread (``prefetch=true``) and without (the default).

Timings on a shared machine drift; so every repeat runs all variants back to back (alternately) and
each ratio is the median over repeats of the ratio *within* a repeat. ``unexplained`` is end to end
minus the sum of the stages: thread contention, the loader's bookkeeping, waiting.

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
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from ana_lightning.data.images import decode_image  # noqa: E402
from ana_lightning.export import export_model  # noqa: E402
from ana_lightning.models.classifier import SoftmaxClassifier  # noqa: E402
from ana_lightning.predict import Predictor  # noqa: E402
from ana_lightning.taxonomy import Taxonomy  # noqa: E402


def _checkpoint(folder: Path, backbone: str, image_size: int) -> Path:
    import lightning as L

    torch.manual_seed(0)
    model = SoftmaxClassifier(
        backbone={"name": backbone}, class_names=list(Taxonomy.load().codes), image_size=image_size
    )
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
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


def _stock_onnx(path: Path, threads: int) -> Predictor:
    """A predictor whose ONNX Runtime session has the stock options (what ana-lightning used before)."""
    import onnxruntime as ort

    p = Predictor.load(path, device="cpu", threads=threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    p.backend.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return p


def _alternate(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of every variant, the variants run back to back in each repeat."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return out


def _ratio(times: dict[str, list[float]], base: str, other: str) -> float:
    """Median over repeats of base/other measured in the same repeat."""
    return statistics.median(b / o for b, o in zip(times[base], times[other], strict=True))


def _stages(p: Predictor, files: list[Path], bs: int, repeats: int) -> dict[str, float]:
    """Milliseconds per image of each preprocessing step, alone, on ``bs`` files (``torch.stack``: the
    collate step as it was, on tensors, for comparison; not part of the path any more)."""
    from ana_lightning.predict import _to_array

    chunk = files[:bs]
    data = [f.read_bytes() for f in chunk]
    images = [decode_image(d, str(f)) for d, f in zip(data, chunk, strict=True)]
    resized = [p.transform.resize(im) for im in images]
    tf = p.transform
    arrays = [_to_array(tf, r) for r in resized]
    tensors = [torch.from_numpy(a) for a in arrays]
    steps = {
        "read": lambda: [f.read_bytes() for f in chunk],
        "decode": lambda: [decode_image(d, str(f)) for d, f in zip(data, chunk, strict=True)],
        "resize": lambda: [tf.resize(im) for im in images],
        "normalise": lambda: [_to_array(tf, r) for r in resized],
        "collate": lambda: np.stack(arrays),
        "torch.stack": lambda: torch.stack(tensors),
    }
    times = _alternate(steps, repeats)
    return {k: 1000 * statistics.median(v) / len(chunk) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument(
        "--threads", type=int, default=2, help="torch and onnxruntime intra-op threads (the same for both)"
    )
    ap.add_argument(
        "--other-threads",
        type=int,
        default=None,
        help="also measure ONNX Runtime (predictor options) at this thread count (default: 1 when --threads > 1)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--field-size", type=int, default=512, help="size of the PNG fields for the end-to-end runs"
    )
    args = ap.parse_args(argv)

    import onnxruntime

    torch.set_num_threads(args.threads)
    other = args.other_threads if args.other_threads is not None else (1 if args.threads > 1 else None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = _checkpoint(tmp, args.backbone, args.image_size)
        t = time.perf_counter()
        result = export_model(ckpt, format="onnx", output=tmp / "bench.onnx")
        export_s = time.perf_counter() - t
        eager = Predictor.load(ckpt, device="cpu")
        backends = {
            "pytorch eager": eager,
            "onnxruntime, stock options": _stock_onnx(result.model_path, args.threads),
            "onnxruntime": Predictor.load(result.model_path, device="cpu", threads=args.threads),
        }
        if other:
            backends[f"onnxruntime, {other} thread(s)"] = Predictor.load(
                result.model_path, device="cpu", threads=other
            )
        fields = _fields(tmp, max(args.batch_sizes) * 2, args.field_size)
        rng = np.random.default_rng(0)
        stage_rows, model_rows, e2e_rows = [], [], []
        for bs in args.batch_sizes:
            stage_rows.append((bs, _stages(eager, fields, bs, args.repeats)))
            x = rng.standard_normal((bs, 3, args.image_size, args.image_size)).astype(np.float32)
            model_t = _alternate(
                {k: (lambda p=p, x=x: p.predict_proba(x)) for k, p in backends.items()}, args.repeats
            )
            files = fields[: max(bs * 2, 2)]
            e2e_fns = {}
            for k, p in backends.items():
                e2e_fns[k] = lambda p=p, f=files, b=bs: list(p.predict_paths(f, batch_size=b))
                e2e_fns[k + ", prefetch"] = lambda p=p, f=files, b=bs: list(
                    p.predict_paths(f, batch_size=b, prefetch=True)
                )
            e2e_t = _alternate(e2e_fns, args.repeats)
            for k in backends:
                ms = 1000 * statistics.median(model_t[k]) / bs
                model_rows.append((bs, k, ms, _ratio(model_t, "pytorch eager", k)))
            for k in e2e_fns:
                ms = 1000 * statistics.median(e2e_t[k]) / len(files)
                e2e_rows.append(
                    (
                        bs,
                        k,
                        ms,
                        _ratio(e2e_t, "pytorch eager", k),
                        _ratio(e2e_t, "pytorch eager, prefetch", k),
                    )
                )

    print(
        f"\n{args.backbone} at {args.image_size} px, {len(Taxonomy.load().codes)} classes, CPU, {args.threads} thread(s) "
        f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end); torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    print(f"export + parity check: {export_s:.1f} s, max abs difference {result.max_abs_diff:.1e}")
    print(
        f"{args.field_size}x{args.field_size} PNG fields; medians of {args.repeats} repeats (end to end: "
        f"{args.repeats}), the variants alternating within each repeat; ratios are medians of within-repeat ratios\n"
    )
    print("Stages of the end-to-end path, alone (ms per image):\n")
    print(
        "| batch | read | decode | resize | normalise | collate (np.stack) | preprocessing total | torch.stack (before) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    pre = {}
    for bs, st in stage_rows:
        pre[bs] = sum(v for k, v in st.items() if k != "torch.stack")
        print(
            f"| {bs} | "
            + " | ".join(f"{st[k]:.2f}" for k in ("read", "decode", "resize", "normalise", "collate"))
            + f" | {pre[bs]:.2f} | {st['torch.stack']:.2f} |"
        )
    print("\nModel alone (ms per image; speed vs eager measured alternately):\n")
    print("| batch | backend | ms/image | speed vs eager |")
    print("|---:|---|---:|---:|")
    model_ms = {}
    for bs, k, ms, r in model_rows:
        model_ms[(bs, k)] = ms
        print(f"| {bs} | {k} | {ms:.1f} | {r:.2f}x |")
    print("\nEnd to end, predict_paths (ms per image; unexplained = end to end - preprocessing - model):\n")
    print("| batch | backend | ms/image | unexplained | speed vs eager | vs eager with prefetch |")
    print("|---:|---|---:|---:|---:|---:|")
    for bs, k, ms, r, r0 in e2e_rows:
        base = k.removesuffix(", prefetch")
        unexplained = ms - pre[bs] - model_ms[(bs, base)]
        print(f"| {bs} | {k} | {ms:.1f} | {unexplained:+.1f} | {r:.2f}x | {r0:.2f}x |")


if __name__ == "__main__":
    main()
