"""Training throughput: the framework's training step against a plain PyTorch loop, the data loader
per augmentation policy and cache mode, DDP scaling on CPU processes, and (with a GPU) ResNet-50.

    python experiments/benchmarks/throughput.py                      # every section this machine can run
    python experiments/benchmarks/throughput.py --sections step,loader --rounds 5
    python experiments/benchmarks/throughput.py --sections gpu       # ResNet-50 224 px bf16 (needs CUDA)

Every table prints images/second (median over rounds) and a ratio against the row it names, measured
in the same run. ``step`` and ``gpu`` alternate framework and plain-loop measurements round by round
(same model, same batches, same batch size and precision), so drifting machine load hits both alike.

- framework: ``ana_lightning.trainer.Trainer`` fitting ``SoftmaxClassifier`` (its metric updates and
  ``self.log`` calls included; no checkpointing, validation or progress bar inside the timed steps).
- plain: ``for batch: autocast forward → cross-entropy → backward → AdamW step`` on the same network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "ana-pattern-quest" / "patterns"


# ------------------------------------------------------------------------------------------ helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Batches(Dataset):
    """``n`` batches cycling over a small pool of pre-made ones (no collate, no decode)."""

    def __init__(self, pool: list[dict[str, torch.Tensor]], n: int):
        self.pool, self.n = pool, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.pool[i % len(self.pool)]


def _pool(batch: int, size: int, classes: int, pin: bool, k: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(k):
        b = {
            "image": torch.randn(batch, 3, size, size, generator=g),
            "target": torch.randint(0, classes, (batch,), generator=g),
        }
        out.append({key: v.pin_memory() if pin else v for key, v in b.items()})
    return out


class _Clock(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step (device synchronised)."""

    def __init__(self, warmup: int, steps: int, out: str | None = None):
        self.warmup, self.steps, self.out = warmup, steps, out
        self.seconds = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup + self.steps - 1:
            _sync(pl_module.device)
            self.seconds = time.perf_counter() - self.t0
            if self.out and trainer.is_global_zero:
                Path(self.out).write_text(json.dumps({"seconds": self.seconds, "world": trainer.world_size}))


def _classifier(backbone: str, classes: int, size: int):
    from ana_lightning.models.classifier import SoftmaxClassifier

    return SoftmaxClassifier(
        backbone={"name": backbone},
        class_names=[f"AC-{i}" for i in range(classes)],
        image_size=size,
        optimizer=partial(torch.optim.AdamW, lr=1e-4),
        scheduler=None,
    )


def _framework(args, device, precision, channels_last, compile_, loader, warmup, steps) -> float:
    from ana_lightning.trainer import Trainer

    torch.manual_seed(0)
    model = _classifier(args.backbone, args.classes, args.size)
    clock = _Clock(warmup, steps)
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        channels_last=channels_last,
        compile=compile_,
        default_root_dir=tempfile.mkdtemp(),
    )
    trainer.fit(model, train_dataloaders=loader)
    return args.batch * steps / clock.seconds


def _plain(args, device, precision, channels_last, compile_, loader, warmup, steps) -> float:
    from ana_lightning.models.backbones import create_backbone

    torch.manual_seed(0)
    net = create_backbone(args.backbone, num_classes=args.classes).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_:
        net.compile()
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    t0 = None
    for i, batch in enumerate(loader):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        x = batch["image"].to(device, non_blocking=True)
        y = batch["target"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == warmup + steps - 1:
            break
    _sync(device)
    return args.batch * steps / (time.perf_counter() - t0)


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------------------------------ sections
def framework_vs_plain(
    args, device: torch.device, precision: str, variants: list[tuple[bool, bool]], title: str
) -> None:
    """Alternating rounds of the framework and the plain loop for each (channels_last, compile) variant."""
    pool = _pool(args.batch, args.size, args.classes, pin=device.type == "cuda")
    rows, base = [], None
    for channels_last, compile_ in variants:
        warmup = args.warmup + (args.compile_warmup if compile_ else 0)
        rounds = 1 if compile_ else args.rounds
        fw, pl = [], []
        for _ in range(rounds):
            for fn, acc in ((_framework, fw), (_plain, pl)):
                loader = DataLoader(_Batches(pool, warmup + args.steps + 1), batch_size=None, shuffle=False)
                acc.append(fn(args, device, precision, channels_last, compile_, loader, warmup, args.steps))
        f, p = _median(fw), _median(pl)
        base = base or p
        name = ("channels_last" if channels_last else "NCHW") + (" + compile" if compile_ else "")
        rows.append([name, f"{p:,.0f}", f"{f:,.0f}", f"{f / p:.3f}", f"{p / base:.2f}", str(rounds)])
    _table(
        title,
        [
            "variant",
            "plain loop img/s",
            "framework img/s",
            "framework / plain",
            "plain / first row",
            "rounds",
        ],
        rows,
    )


def loader_throughput(args) -> None:
    """Images/s out of the training DataLoader for each augmentation policy and image-cache mode."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ana_lightning.data.datamodules import SingleLabelDataModule

    if args.data == "synthetic" or (not args.data and not REAL.is_dir()):
        root = _write_fields(Path(tempfile.mkdtemp()) / "synthetic_fields", args)
    else:
        root = Path(args.data) if args.data else REAL
    cache_dir = tempfile.mkdtemp()
    policies = sorted((REPO / "conf" / "augmentation").glob("*.yaml"))

    def rate(cache, policy: Path | None) -> tuple[float, float]:
        node = OmegaConf.load(policy) if policy else OmegaConf.create({"train": None})
        train = instantiate(node.train) if node.get("train") else None
        batch_aug = instantiate(node.batch) if node.get("batch") else None
        dm = SingleLabelDataModule(
            root=str(root),
            image_size=args.loader_size,
            batch_size=args.loader_batch,
            num_workers=args.workers,
            cache_images=cache,
            image_cache_dir=cache_dir,
            train_augment=train,
            batch_augment=batch_aug,
            persistent_workers=args.workers > 0,
        )
        dm.setup()
        t0 = time.perf_counter()
        dm.dataset("train")  # decode (and cache) happens here
        build = time.perf_counter() - t0
        loader = dm.train_dataloader()
        n_img = len(dm.dataset("train"))
        out = []
        for e in range(args.loader_epochs + 1):
            t0 = time.perf_counter()
            for b in loader:
                if batch_aug is not None:
                    batch_aug(b["image"], mean=dm.mean, std=dm.std)
            if e:  # epoch 0 starts the workers
                out.append(n_img / (time.perf_counter() - t0))
        return _median(out), build

    rows = []
    base, _ = rate(False, None)
    for cache, label in (
        (False, "none (decode every time)"),
        (True, "memory (in process)"),
        ("mmap", "mmap (shared file)"),
    ):
        r, build = rate(cache, None)
        rows.append([f"cache {label}", "none", f"{r:,.0f}", f"{r / base:.2f}", f"{build:.2f}"])
    for p in policies:
        r, build = rate("mmap", p)
        rows.append(["cache mmap", p.stem, f"{r:,.0f}", f"{r / base:.2f}", f"{build:.2f}"])
    n = len(list(root.rglob("*.*")))
    _table(
        f"Data loader, {args.loader_size} px, batch {args.loader_batch}, {args.workers} worker(s), {n} files in {root.name}/ "
        f"(gpu policy: its batch augmentation run on the CPU here)",
        ["cache", "augmentation", "img/s", "vs no cache, no aug", "dataset build s"],
        rows,
    )


def batch_augment_on_gpu(args) -> None:
    """What ``augmentation=gpu`` costs per training batch on the device."""
    from ana_lightning.data.batch_augment import BatchAugment

    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda")
    rows = []
    for name, aug in (
        ("flips + rot90", BatchAugment()),
        ("flips + rot90 + intensity", BatchAugment(brightness=0.2, contrast=0.2, gamma=0.2)),
    ):
        for _ in range(3):
            aug(x, mean=(0.5,) * 3, std=(0.25,) * 3)
        times = []
        for _ in range(args.rounds * 5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            aug(x, mean=(0.5,) * 3, std=(0.25,) * 3)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t = _median(times)
        rows.append([name, f"{t * 1e3:.2f}", f"{args.batch / t:,.0f}"])
    _table(
        f"BatchAugment on the GPU, batch {args.batch}×3×{args.size}×{args.size} fp32",
        ["ops", "ms per batch", "img/s"],
        rows,
    )


def _write_fields(root: Path, args) -> Path:
    """Synthetic JPEG fields (1024×768, like microscope fields) when no real data folder is at hand."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("AC-1", "AC-2", "AC-4", "AC-5"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(24):
            img = np.zeros((768, 1024, 3), np.uint8)
            img[..., 1] = np.clip(rng.normal(60 + 30 * int(c[3:]), 30, (768, 1024)), 0, 255)
            Image.fromarray(img).save(root / c / f"f{i}.jpg", quality=90)
    return root


def _ddp_worker_fit(args, world: int, out: str) -> None:
    from ana_lightning.trainer import Trainer

    torch.manual_seed(0)
    model = _classifier(args.backbone, args.classes, args.size)
    pool = _pool(args.batch, args.size, args.classes, pin=False)
    loader = DataLoader(_Batches(pool, args.warmup + args.steps + 1), batch_size=None)
    clock = _Clock(args.warmup, args.steps, out)
    strategy = "ddp_spawn" if world > 1 else "auto"
    trainer = Trainer(
        accelerator="cpu",
        devices=world,
        strategy=strategy,
        max_steps=args.warmup + args.steps,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        use_distributed_sampler=False,
        default_root_dir=tempfile.mkdtemp(),
    )
    trainer.fit(model, train_dataloaders=loader)


def ddp_cpu_scaling(args) -> None:
    """Total images/s of 1 process vs 2 DDP processes (gloo) at the same per-process batch."""
    cores = os.cpu_count() or 1
    rows, base = [], None
    for world, threads in ((1, cores), (1, max(1, cores // 2)), (2, max(1, cores // 2))):
        rates = []
        for _ in range(args.rounds):
            out = tempfile.mktemp(suffix=".json")
            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
            _ddp_worker_fit(args, world, out)
            rec = json.loads(Path(out).read_text())
            rates.append(world * args.batch * args.steps / rec["seconds"])
        r = _median(rates)
        base = base or r
        rows.append([str(world), str(threads), f"{r:,.1f}", f"{r / base:.2f}"])
    torch.set_num_threads(cores)
    _table(
        f"DDP on CPU processes (gloo), {args.backbone} {args.size} px, batch {args.batch} per process, {cores} cores",
        ["processes", "threads each", "total img/s", "vs 1 process, all cores"],
        rows,
    )


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="step,loader,ddp,gpu")
    ap.add_argument("--backbone", default="resnet18", help="model of the CPU step and ddp sections")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile-warmup", type=int, default=5, help="extra warm-up steps for compiled variants")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--data",
        default=None,
        help="an <AC code>/<images> folder for the loader section; 'synthetic': "
        "1024×768 JPEG fields written for the run (default: the real ICAP images when present)",
    )
    ap.add_argument("--loader-size", type=int, default=224)
    ap.add_argument("--loader-batch", type=int, default=32)
    ap.add_argument("--loader-epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--gpu-backbone", default="resnet50")
    ap.add_argument("--gpu-batch", type=int, default=128)
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--gpu-compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--cpu-variants",
        default="eager",
        help="comma list of eager, channels_last, compile for the step section",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the CPU step section (1: least disturbed by load)",
    )
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    )

    if "step" in sections:
        names = args.cpu_variants.split(",")
        variants = [
            v
            for n, v in (
                ("eager", (False, False)),
                ("channels_last", (True, False)),
                ("compile", (False, True)),
            )
            if n in names
        ]
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        framework_vs_plain(
            args,
            torch.device("cpu"),
            "32-true",
            variants,
            f"Training step on the CPU: {args.backbone} {args.size} px, batch {args.batch}, fp32, "
            f"{args.threads} thread(s)",
        )
        torch.set_num_threads(threads)
    if "loader" in sections:
        loader_throughput(args)
    if "ddp" in sections:
        ddp_cpu_scaling(args)
    if "gpu" in sections and torch.cuda.is_available():
        gpu = argparse.Namespace(
            **{
                **vars(args),
                "backbone": args.gpu_backbone,
                "size": 224,
                "batch": args.gpu_batch,
                "steps": args.gpu_steps,
            }
        )
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        variants = [(False, False), (True, False)] + ([(True, True)] if args.gpu_compile else [])
        framework_vs_plain(
            gpu,
            torch.device("cuda"),
            precision,
            variants,
            f"GPU training step: {args.gpu_backbone} 224 px, batch {args.gpu_batch}, {precision}",
        )
        batch_augment_on_gpu(gpu)
    elif "gpu" in sections:
        print("\n(gpu section skipped: no CUDA device)")


if __name__ == "__main__":
    main()
