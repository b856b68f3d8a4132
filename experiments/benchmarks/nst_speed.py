"""Neural Style Transfer speed: batched vs one image at a time, at equal iterations.

For each batch size B, the same B content/style pairs are optimised (a) one at a time (B runs of
batch 1) and (b) together (one run of batch B); the table gives images per second for both and the
ratio (batched / one at a time), measured in the same run. On CUDA it also compares mixed precision
(autocast, bf16 where available) with float32 at the largest batch, and checks that batched and
one-at-a-time optimisation reach the same losses.

    python experiments/benchmarks/nst_speed.py                      # CPU here: 128 px, 5 iterations
    python experiments/benchmarks/nst_speed.py --device cuda        # GPU: 256 px, 50 iterations

Random VGG-19 weights are used unless --weights is given: speed does not depend on the weights.
Needs only torch, torchvision and numpy (no Lightning/Hydra), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from ana_lightning.style_transfer import StyleTransfer  # noqa: E402


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random RGB fields in [0, 1] (speed does not depend on what they show)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(size // 8, 2), max(size // 8, 2), generator=g)
    return torch.nn.functional.interpolate(
        low, size=(size, size), mode="bilinear", align_corners=False
    ).clamp(0, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, default=None, help="default: 256 on CUDA, 128 on CPU")
    ap.add_argument("--iterations", type=int, default=None, help="default: 50 on CUDA, 5 on CPU")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (median); default 3 on CUDA, 1 on CPU"
    )
    ap.add_argument("--weights", default=None, help="a VGG-19 state dict (default: random weights)")
    ap.add_argument("--no-amp", action="store_true", help="float32 only on CUDA")
    args = ap.parse_args(argv)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    cuda = device.type == "cuda"
    size = args.image_size or (256 if cuda else 128)
    iters = args.iterations or (50 if cuda else 5)
    repeats = args.repeats or (3 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True

    def make(amp: bool) -> StyleTransfer:
        return StyleTransfer(
            iterations=iters,
            weights=args.weights,
            allow_random_weights=args.weights is None,
            device=str(device),
            amp=amp,
        )

    nst = make(amp=not args.no_amp)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    precision = str(nst.amp_dtype).removeprefix("torch.") if nst.amp_dtype else "float32"
    print(
        f"# NST speed: {name}, {size}x{size} px, {iters} Adam iterations, precision {precision}, "
        f"layers {nst.content_layers + nst.style_layers}, weights {nst.weights_source}, torch {torch.__version__}"
    )

    bmax = max(args.batch_sizes)
    content, style = _images(bmax, size, 1), _images(bmax, size, 2)
    # warm-up: allocator, cuDNN autotuning for every batch shape used below
    nst.iterations = 2
    for b in sorted({1, *args.batch_sizes}):
        nst(content[:b], style[:b])
    nst.iterations = iters

    rows = []
    for b in args.batch_sizes:
        t_seq, seq_out = _timed(
            lambda b=b: [nst(content[i : i + 1], style[i : i + 1]) for i in range(b)], device, repeats
        )
        t_bat, bat_out = _timed(lambda b=b: nst(content[:b], style[:b]), device, repeats)
        seq_loss = torch.tensor([losses[0] for _, losses in seq_out])
        bat_loss = torch.tensor(bat_out[1])
        diff = float(((seq_loss - bat_loss).abs() / seq_loss.abs().clamp_min(1e-12)).max())
        rows.append((b, b / t_seq, b / t_bat, t_seq / t_bat, diff))

    print()
    print(
        "| batch | one at a time (img/s) | batched (img/s) | batched / one at a time | max rel. loss diff |"
    )
    print("|---:|---:|---:|---:|---:|")
    for b, seq, bat, ratio, diff in rows:
        print(f"| {b} | {seq:.3f} | {bat:.3f} | {ratio:.2f}x | {diff:.1e} |")

    if cuda and not args.no_amp and nst.amp_dtype is not None:
        fp32 = make(amp=False)
        fp32(content[:2], style[:2])  # warm-up
        t32, out32 = _timed(lambda: fp32(content[:bmax], style[:bmax]), device, repeats)
        tamp, outamp = _timed(lambda: nst(content[:bmax], style[:bmax]), device, repeats)
        l32, lamp = torch.tensor(out32[1]), torch.tensor(outamp[1])
        img_diff = float((out32[0] - outamp[0]).abs().mean())
        print()
        print(f"| batch {bmax} | img/s | final loss (median) | ratio vs float32 |")
        print("|---|---:|---:|---:|")
        print(f"| float32 | {bmax / t32:.3f} | {l32.median():.4g} | 1.00x |")
        print(f"| autocast {precision} | {bmax / tamp:.3f} | {lamp.median():.4g} | {t32 / tamp:.2f}x |")
        print(f"\nmean |image(float32) - image({precision})| = {img_diff:.4f} (pixel range 0..1)")
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
