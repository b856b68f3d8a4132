"""Wall time to MCA thresholds (0.70 … 0.95) on the specimen-grouped I3A split, with the data-loading share.

    python experiments/benchmarks/time_to_accuracy.py --root ../shared/data/i3a2014-task1/training
    python experiments/benchmarks/time_to_accuracy.py --root ... --device cuda     # full size, whole set on the GPU

The recipe of ``experiment=i3a_cells`` (its model, augmentation and optimiser; CPU or GPU size by
``--device``) on the research split ``data.split_fractions=[0.6,0.2,0.2]`` (split A with ``data.seed=0``: the
default has no validation split since round 17) in a lean loop: every cell is decoded once into one ``uint8`` tensor (on the GPU with
``--device cuda``, so no loader is involved after that), batches are indexed from it and augmented
batched in torch. After every epoch the val and test MCA are computed; the table gives the wall time
(counted from the start, decoding included) at which each first reaches each threshold (``--thresholds``,
default 0.70, 0.80, 0.90, 0.95), the best val MCA with the time to it, and where the
time went: decoding once, per-batch data work (indexing, conversion, augmentation), training compute,
evaluation. Test MCA is *measured* per epoch here, never used to choose anything.

Timings depend on the machine's load: the script prints ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.nn import functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "i3a2014-task1" / "training"


class Clock:
    """Accumulated wall time per named part (CUDA synchronised at each switch)."""

    def __init__(self, device: torch.device):
        self.device, self.parts, self.t0 = device, {}, time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def add(self, part: str, since: float) -> float:
        self.sync()
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - since
        return now

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def mca(pred: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return float(np.mean([(pred[y == c] == c).float().mean().item() for c in range(k) if (y == c).any()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's for this device")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    ap.add_argument(
        "--thresholds", default="0.70,0.80,0.90,0.95", help="MCA levels to time (comma-separated)"
    )
    ap.add_argument("overrides", nargs="*", help="extra ana-train overrides (e.g. model.backbone.width=32)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    load_before = os.getloadavg()
    torch.manual_seed(args.seed)
    from ana_lightning.utils import compose_config

    trainer = "gpu" if device.type == "cuda" else "cpu"
    cfg = compose_config(
        "train",
        [
            "experiment=i3a_cells",
            "data.split_fractions=[0.6,0.2,0.2]",  # the research split: validation specimens (the default has none)
            f"trainer={trainer}",
            f"data.root={args.root}",
            "paths.output_dir=/tmp/time_to_accuracy",
            *args.overrides,
        ],
    )
    epochs = args.epochs or int(cfg.trainer.max_epochs)
    clock = Clock(device)

    # 1. decode every cell once (reader, grouping, split, masks, resize) into uint8 tensors
    t = time.perf_counter()
    dm = instantiate(cfg.data, train_augment=None)
    dm.setup("fit")
    model = instantiate(cfg.model, **dm.model_kwargs(loss_weights=cfg.class_weighted_loss))
    dm.set_normalization(model.hparams.mean, model.hparams.std)
    data = {}
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        images = np.stack([ds.load(i) for i in range(len(ds))])  # cached, resized H×W×3 uint8
        data[split] = (
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
            ds.targets.to(device),
        )
    t = clock.add("decode once", t)
    mean = torch.tensor(model.hparams.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.hparams.std, device=device).view(1, 3, 1, 1)

    def to_input(u8: torch.Tensor) -> torch.Tensor:
        return (u8.float() / 255 - mean) / std

    net = model.net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    augment = instantiate(cfg.augmentation.batch)
    opt = instantiate(cfg.model.optimizer)(params=net.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    weight = model.class_weight.to(device) if model.class_weight is not None else None
    bs, k = int(cfg.data.batch_size), len(dm.class_names)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    x_train, y_train = data["train"]
    thresholds = sorted(float(v) for v in args.thresholds.split(",") if v)
    history, reached = [], {}
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_train), device=device)
        for i in range(0, len(perm) - bs // 2, bs):  # a last batch under half size is dropped
            t = time.perf_counter()
            idx = perm[i : i + bs]
            x = augment(to_input(x_train[idx]), mean=model.hparams.mean, std=model.hparams.std)
            y = y_train[idx]
            t = clock.add("batch data (index, convert, augment)", t)
            with amp:
                loss = F.cross_entropy(
                    net(x), y, weight=weight, label_smoothing=float(cfg.model.label_smoothing)
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clock.add("train compute", t)
        sched.step()
        t = time.perf_counter()
        net.eval()
        row = {"epoch": epoch + 1}
        with torch.no_grad(), amp:
            for split in ("val", "test"):
                xs, ys = data[split]
                pred = torch.cat([net(to_input(xs[j : j + 512])).argmax(-1) for j in range(0, len(xs), 512)])
                row[f"{split}/mca"] = mca(pred, ys, k)
        clock.add("evaluation", t)
        row["wall_s"] = clock.elapsed()
        history.append(row)
        for split in ("val", "test"):
            for thr in thresholds:
                if row[f"{split}/mca"] >= thr and (split, thr) not in reached:
                    reached[(split, thr)] = (epoch + 1, row["wall_s"])
        print(
            json.dumps({k2: round(v, 4) if isinstance(v, float) else v for k2, v in row.items()}), flush=True
        )

    total = clock.elapsed()
    print(f"\nI3A cells, grouping: {dm.grouping}")
    print(
        f"device {device}, threads {torch.get_num_threads()}, epochs {epochs}, batch {bs}, image {cfg.data.image_size} px, "
        f"backbone {cfg.model.backbone.name}; load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}\n"
    )
    print("| target | first epoch | wall time (s) |\n|---|---|---|")
    for split in ("val", "test"):
        for thr in thresholds:
            ep, wall = reached.get((split, thr), (None, None))
            print(f"| {split} MCA ≥ {thr:.2f} | {ep or 'not reached'} | {f'{wall:.0f}' if wall else '-'} |")
    best = max(history, key=lambda r: r["val/mca"])
    print(
        f"\nbest val MCA {best['val/mca']:.3f} at epoch {best['epoch']}, {best['wall_s']:.0f} s from the start "
        f"(test MCA there {best['test/mca']:.3f}); "
        f"last epoch: val {history[-1]['val/mca']:.3f}, test {history[-1]['test/mca']:.3f}\n"
    )
    print("| where the time went | s | share |\n|---|---|---|")
    for part, s in clock.parts.items():
        print(f"| {part} | {s:.1f} | {s / total:.0%} |")
    print(f"| total | {total:.1f} | 100% |")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "history": history,
                    "parts": clock.parts,
                    "total_s": total,
                    "epochs": epochs,
                    "device": str(device),
                    "load_before": load_before,
                    "load_after": os.getloadavg(),
                    "reached": {f"{s}>={t}": v for (s, t), v in reached.items()},
                    "best_val": best,
                    "data_share": (
                        clock.parts.get("decode once", 0.0)
                        + clock.parts.get("batch data (index, convert, augment)", 0.0)
                    )
                    / total,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
