"""Training-step time of the CPU-sized mixed_ensemble model with 1 vs more torch threads.

Why ``experiment=mixed_ensemble`` sets ``torch_threads: 1``: on a small CPU shared with other jobs,
OpenMP threads of tiny convolutions wait on each other far longer than they compute. This script
measures one optimizer step (forward, both members' BCE losses, backward, AdamW) of the experiment's
ensemble (test_resnet + test_efficientnet, 64 px, batch 32), median of ``--steps`` steps, per thread
count, and prints a table with the ratio to 1 thread measured in the same run.

    .venv/bin/python experiments/benchmarks/multilabel_threads.py [--steps 10] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ana_lightning.models.multilabel import SigmoidEnsemble


def step_time(threads: int, steps: int, batch: int, size: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SigmoidEnsemble(
        class_names=[f"AC-{i}" for i in range(6)],
        backbones=[{"name": "test_resnet"}, {"name": "test_efficientnet"}],
        image_size=size,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 6) < 0.25).float()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        z = model.net.member_logits(x)
        loss = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(zm, y) for zm in z]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpus={os.cpu_count()} load_avg_1min={load:.1f} batch={a.batch} size={a.size} steps={a.steps}")
    res = {t: step_time(t, a.steps, a.batch, a.size) for t in a.threads}
    base = res[a.threads[0]]
    print(f"| torch threads | median step (s) | ratio to {a.threads[0]} thread(s) |")
    print("|---|---|---|")
    for t, v in res.items():
        print(f"| {t} | {v:.3f} | {v / base:.2f} |")


if __name__ == "__main__":
    main()
