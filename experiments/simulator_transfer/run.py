"""Transfer table: does pretraining on synthetic cells help on real I3A cells?

Real data: the I3A Task 1 cells in ``../shared/data/i3a2014-task1`` (six classes), grouped by specimen
and split once (``experiments/simulator_realism/cells.py``: the reader's specimen grouping, seed 0,
60/20/20); every number is scored on the **test** split, which no tuning looked at.

Per repeat (seed r):
- pretrain a network on synthetic cells (``ana-synth --cells`` layout, six I3A classes,
  ``--n-synth`` cells per class, render seed r) → **synthetic-only** MCA on the real test split;
- for K in ``--ks``: draw K real cells per class from the train split (seed r), train from scratch and
  from the synthetic-pretrained backbone (head re-initialised), same steps / learning rate / batch;
- both of the above twice: ``plain`` (raw 8-bit cell, mask applied, fixed scaling, flips/90° only)
  and ``recipe`` (per-cell intensity normalisation inside the mask + the cell augmentation: flips, 90°,
  small shifts, gain/gamma and noise) on both arms.

Metric: mean class accuracy (MCA; chance 1/6 = 0.167), mean ± sd over ``--repeats``.
CPU-sized: 32 px cells, timm test_resnet (a tiny ResNet), one thread, a few hundred steps. Run under ``nice``:

    nice -n 5 python experiments/simulator_transfer/run.py            # results/transfer.{md,json}
    python experiments/simulator_transfer/run.py --quick             # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "simulator_realism"))
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2  # noqa: E402
import torch  # noqa: E402
from cells import I3A_NAMES, load_cell, read_real  # noqa: E402
from torch.nn import functional as F  # noqa: E402

CLASSES = list(I3A_NAMES.values())  # Homogeneous, Speckled, Nucleolar, Centromere, NuMem, Golgi
OUT = HERE / "results"


# ---------------------------------------------------------------------------------------------- data
def prepare(img: np.ndarray, mask: np.ndarray, size: int, normalise: bool) -> np.ndarray:
    """One cell → ``size×size`` float32 in [0, ~1.5], mask applied."""
    x = img.astype(np.float32)
    if normalise:  # per-cell intensity normalisation: background → 0, in-mask 99th percentile → 1
        inside = x[mask]
        bg = float(np.median(x[~mask])) if (~mask).any() else 0.0
        hi = float(np.percentile(inside, 99)) if inside.size else bg + 1.0
        x = np.clip((x - bg) / max(hi - bg, 4.0), 0.0, 1.5)
    else:
        x = x / 255.0 * 4.0  # fixed scaling (real cells are dim: most peak below 60/255)
    x = x * mask
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)


def load_set(
    items: list[tuple[str, str, int]], size: int, normalise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path, mpath, y in items:
        img, m = load_cell(path, mpath)
        xs.append(prepare(img, m, size, normalise))
        ys.append(y)
    return torch.from_numpy(np.stack(xs)[:, None]), torch.tensor(ys)


def real_items() -> tuple[dict[str, list[tuple[str, str, int]]], str]:
    splits, masks, how = read_real()
    out = {
        s: [(r.path, masks[r.path], CLASSES.index(I3A_NAMES[r.codes[0]])) for r in rs]
        for s, rs in splits.items()
    }
    return out, how


def synthetic_items(root: Path, n: int, seed: int) -> list[tuple[str, str, int]]:
    import csv

    from ana_lightning.data.synthetic_cells import generate_cell_dataset

    generate_cell_dataset(root, n_per_class=n, seed=seed, progress=False)
    with open(root / "gt_training.csv", newline="") as fh:
        return [
            (
                str(root / f"{r['Image ID']}.png"),
                str(root / f"{r['Image ID']}_Mask.png"),
                CLASSES.index(r["Image class"]),
            )
            for r in csv.DictReader(fh)
        ]


# ---------------------------------------------------------------------------------------------- model
def make_net(arch: str, seed: int) -> torch.nn.Module:
    from ana_lightning.models.backbones import create_backbone

    torch.manual_seed(seed)
    return create_backbone(arch, num_classes=len(CLASSES), in_chans=1)


def augment(x: torch.Tensor, recipe: bool, g: torch.Generator) -> torch.Tensor:
    if torch.rand(1, generator=g) < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=g) < 0.5:
        x = x.flip(2)
    x = torch.rot90(x, int(torch.randint(4, (1,), generator=g)), (2, 3))
    if recipe:  # the cell augmentation: shifts, per-cell gain / gamma, noise
        n = x.shape[0]
        sh = torch.randint(-3, 4, (2,), generator=g)
        x = torch.roll(x, (int(sh[0]), int(sh[1])), (2, 3))
        gain = torch.exp(torch.randn(n, 1, 1, 1, generator=g) * 0.2)
        gamma = torch.exp(torch.randn(n, 1, 1, 1, generator=g) * 0.15)
        x = x.clamp(min=0) ** gamma * gain
        x = x + torch.randn(x.shape, generator=g) * 0.03 * torch.rand(n, 1, 1, 1, generator=g)
    return x


def fit(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    recipe: bool,
    seed: int,
    lr: float = 2e-3,
    batch: int = 32,
) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=g)
        xb = augment(x[idx], recipe, g)
        loss = F.cross_entropy(net((xb - 0.3) / 0.3), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net


@torch.no_grad()
def mca(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    pred = torch.cat([net((x[i : i + 256] - 0.3) / 0.3).argmax(1) for i in range(0, len(x), 256)])
    return float(
        np.mean([(pred[y == k] == k).float().mean().item() for k in range(len(CLASSES)) if (y == k).any()])
    )


def with_backbone(arch: str, pretrained: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A fresh network holding the pretrained backbone, classifier head re-initialised."""
    net = make_net(arch, seed)
    head = net.pretrained_cfg.get("classifier", "fc")
    sd = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(head + ".")}
    net.load_state_dict(sd, strict=False)
    return net


def k_shot(items: list[tuple[str, str, int]], k: int, seed: int) -> list[tuple[str, str, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for c in range(len(CLASSES)):
        pool = [it for it in items if it[2] == c]
        out += [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
    return out


def steps_for(k: int, base: int) -> int:
    """Training steps for K cells per class: ~10 epochs of batch 32, between base/2 and 2*base."""
    return int(np.clip(10 * k * len(CLASSES) / 32, base // 2, 2 * base))


# ---------------------------------------------------------------------------------------------- main
def run(a: argparse.Namespace) -> dict:
    torch.set_num_threads(a.threads)
    t0 = time.time()
    items, how = real_items()
    print(f"real cells: {', '.join(f'{s} {len(v)}' for s, v in items.items())}; grouped by {how}", flush=True)
    rows: list[dict] = []
    for variant in a.variants:
        normalise = variant == "recipe"
        test_x, test_y = load_set(items["test"], a.size, normalise)
        train_pool = items["train"]
        for rep in range(a.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                synth = synthetic_items(Path(tmp) / "cells", a.n_synth, seed=rep)
                sx, sy = load_set(synth, a.size, normalise)
            pre = fit(make_net(a.arch, 1000 + rep), sx, sy, a.pretrain_steps, normalise, seed=1000 + rep)
            m = mca(pre, test_x, test_y)
            rows.append({"variant": variant, "repeat": rep, "arm": "synthetic_only", "k": 0, "mca": m})
            print(f"[{time.time() - t0:6.0f}s] {variant} rep {rep} synthetic-only MCA {m:.3f}", flush=True)
            for k in a.ks:
                kx, ky = load_set(k_shot(train_pool, k, seed=rep), a.size, normalise)
                steps = steps_for(k, a.steps)
                for arm in ("scratch", "pretrained"):
                    net = (
                        make_net(a.arch, 2000 + rep)
                        if arm == "scratch"
                        else with_backbone(a.arch, pre, 2000 + rep)
                    )
                    fit(net, kx, ky, steps, normalise, seed=3000 + rep)
                    m = mca(net, test_x, test_y)
                    rows.append(
                        {"variant": variant, "repeat": rep, "arm": arm, "k": k, "mca": m, "steps": steps}
                    )
                    print(
                        f"[{time.time() - t0:6.0f}s] {variant} rep {rep} K={k} {arm}: MCA {m:.3f}", flush=True
                    )
    meta = {
        **vars(a),
        "grouping": how,
        "n_test": len(items["test"]),
        "seconds": time.time() - t0,
        "load": os.getloadavg(),
    }
    return {"meta": meta, "rows": rows}


def table(res: dict) -> str:
    rows, meta = res["rows"], res["meta"]

    def cell(variant, arm, k):
        v = [r["mca"] for r in rows if r["variant"] == variant and r["arm"] == arm and r["k"] == k]
        return (np.mean(v), np.std(v, ddof=1) if len(v) > 1 else 0.0, len(v)) if v else None

    lines = [
        f"Real I3A test split: {meta['n_test']} cells ({meta['grouping']}); {meta['repeats']} repeats, "
        f"mean ± sd; MCA, chance 0.167. {meta['size']} px, {meta['arch']}, {meta['n_synth']} synthetic cells/class, "
        f"{meta['seconds'] / 60:.0f} min on 2 shared CPU cores (load {meta['load'][0]:.0f}).",
        "",
    ]
    lines += ["| variant | K | scratch | synthetic-pretrained | gain (points) |", "|---|---|---|---|---|"]
    for variant in meta["variants"]:
        so = cell(variant, "synthetic_only", 0)
        lines.append(f"| {variant} | synthetic only (0 real) | – | {so[0]:.3f} ± {so[1]:.3f} | – |")
        for k in meta["ks"]:
            s, p = cell(variant, "scratch", k), cell(variant, "pretrained", k)
            gains = [
                rp["mca"] - rs["mca"]
                for rs in rows
                for rp in rows
                if rs["variant"] == rp["variant"] == variant
                and rs["k"] == rp["k"] == k
                and rs["repeat"] == rp["repeat"]
                and rs["arm"] == "scratch"
                and rp["arm"] == "pretrained"
            ]
            g = 100 * np.mean(gains)
            gsd = 100 * np.std(gains, ddof=1) if len(gains) > 1 else 0.0
            lines.append(
                f"| {variant} | {k} | {s[0]:.3f} ± {s[1]:.3f} | {p[0]:.3f} ± {p[1]:.3f} | {g:+.1f} ± {gsd:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 20, 50, 200])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["plain", "recipe"], choices=["plain", "recipe"])
    p.add_argument("--n-synth", type=int, default=300, help="synthetic cells per class")
    p.add_argument("--pretrain-steps", type=int, default=250)
    p.add_argument("--steps", type=int, default=80, help="base fine-tuning steps (scaled with K)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--arch", default="test_resnet")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="transfer")
    p.add_argument("--quick", action="store_true", help="1 repeat, K=5,20, few steps")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.ks, a.n_synth, a.pretrain_steps, a.steps, a.tag = (
            1,
            [5, 20],
            60,
            40,
            30,
            a.tag + "_quick",
        )
    res = run(a)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{a.tag}.json").write_text(json.dumps(res, indent=1))
    md = table(res)
    (OUT / f"{a.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
