"""Benchmark of the grouping machinery; writes ``benchmarks/results/bench_grouping.json``.

1. Per-step time of a fine-tuning step with the group-mean gradient vs a plain step (LeNet, 28x28,
   5 classes, k = 1, 5, 10; a quarter of the neurons as groups in every groupable layer). Plain and
   grouped blocks alternate and the fastest block of each is kept: the least disturbed by other
   processes on a shared machine, where a median still moves by tens of percent.
2. Fine-tuning evaluations per minute of the RL search's inner loop: ``P`` grouped fine-tunings one
   after another (:func:`kshot.finetune.train`) vs one population (:func:`kshot.population`).
   Also the pipeline's setting: a population at half the steps (``search.steps``, low-fidelity
   rewards) against the full-fidelity sequential loop.
3. A large float32 matmul's GFLOP/s, and the GFLOP/s a plain fine-tuning step reaches (FLOPs counted
   by ``torch.utils.flop_counter``) as a fraction of it.

Runs in about two minutes on 2 CPU cores: ``python benchmarks/bench_grouping.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kshot.config import FinetuneConfig
from kshot.finetune import resolve_device, train
from kshot.io import write_json
from kshot.models import LeNet
from kshot.population import train_population
from kshot.shared_grad import GroupedGradient

N_CLASSES = 5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def quarter_groups(model: LeNet, seed: int) -> dict[str, torch.Tensor]:
    """Random groupings with a quarter of each layer's neurons as groups."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in model.groupable():
        n = model.get_submodule(name).weight.shape[0]
        g = max(1, n // 4)
        out[name] = torch.cat([torch.arange(g), torch.randint(g, (n - g,), generator=gen)])
    return out


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    return x, torch.arange(n) % N_CLASSES


def step_times(k: int, device: torch.device, blocks: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = LeNet(1, 28, N_CLASSES).to(device)
    x = torch.rand(N_CLASSES * k, 1, 28, 28, device=device)
    y = (torch.arange(N_CLASSES * k) % N_CLASSES).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    hook = GroupedGradient(model, quarter_groups(model, 0))

    def block(grouped: bool) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            if grouped:
                hook(model)
            opt.step()
        sync(device)
        return (time.perf_counter() - start) / steps

    block(False), block(True)  # warm-up
    plain, grouped = [], []
    for _ in range(blocks):
        plain.append(block(False))
        grouped.append(block(True))
    F.cross_entropy(model(x), y).backward()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        hook(model)
    sync(device)
    hook_s = (time.perf_counter() - start) / steps
    p, g = min(plain), min(grouped)
    with FlopCounterMode(display=False) as counter:  # forward + backward FLOPs of one step
        F.cross_entropy(model(x), y).backward()
    return {
        "k": k,
        "batch": N_CLASSES * k,
        "plain_step_ms": 1e3 * p,
        "grouped_step_ms": 1e3 * g,
        "hook_only_ms": 1e3 * hook_s,
        "overhead_pct": 100 * (g - p) / p,
        "step_gflop": counter.get_total_flops() / 1e9,
        "finetune_gflops": counter.get_total_flops() / p / 1e9,
    }


def evaluations_per_minute(device: torch.device, members: int, steps: int) -> dict[str, float]:
    cfg = FinetuneConfig(steps=steps, lr=0.01, momentum=0.9, eval_every=10)
    torch.manual_seed(0)
    source = LeNet(1, 28, N_CLASSES)
    models = [copy.deepcopy(source) for _ in range(members)]
    support, val = images(N_CLASSES, 1), images(N_CLASSES * 10, 2)  # k = 1, 10 val per class
    groupings = [quarter_groups(source, s) for s in range(members)]

    sync(device)
    start = time.perf_counter()
    for m, g in zip(models, groupings, strict=True):
        m = copy.deepcopy(m).to(device)
        train(m, list(m.parameters()), support, val, cfg, device, grad_hook=GroupedGradient(m, g))
    sync(device)
    sequential = time.perf_counter() - start

    start = time.perf_counter()
    train_population(models, [support] * members, [val] * members, cfg, device, groupings)
    sync(device)
    population = time.perf_counter() - start

    # the pipeline's search setting: low-fidelity rewards (half the steps), population fine-tuning
    low = FinetuneConfig(steps=steps // 2, lr=0.01, momentum=0.9, eval_every=min(10, steps // 2))
    start = time.perf_counter()
    train_population(models, [support] * members, [val] * members, low, device, groupings)
    sync(device)
    low_fidelity = time.perf_counter() - start
    return {
        "members": members,
        "steps": steps,
        "k": 1,
        "sequential_evals_per_min": 60 * members / sequential,
        "population_evals_per_min": 60 * members / population,
        "speedup": sequential / population,
        "low_fidelity_population_evals_per_min": 60 * members / low_fidelity,
        "low_fidelity_speedup": sequential / low_fidelity,
    }


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 5) -> dict[str, float]:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - start) / reps
    return {"n": n, "gflops": 2 * n**3 / seconds / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_grouping.json"))
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=30)
    args = parser.parse_args()
    device = resolve_device(args.device)
    result = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "step_time": [step_times(k, device, args.blocks, args.steps) for k in (1, 5, 10)],
        "search_throughput": evaluations_per_minute(device, args.members, args.train_steps),
        "matmul": matmul_gflops(device),
    }
    for row in result["step_time"]:
        row["fraction_of_matmul"] = row["finetune_gflops"] / result["matmul"]["gflops"]
    write_json(args.out, result)
    for row in result["step_time"]:
        print(
            f"k={row['k']:>2}: plain {row['plain_step_ms']:.2f} ms, grouped "
            f"{row['grouped_step_ms']:.2f} ms ({row['overhead_pct']:+.1f}%), hook alone "
            f"{row['hook_only_ms']:.3f} ms; {row['finetune_gflops']:.1f} GFLOP/s "
            f"({100 * row['fraction_of_matmul']:.0f}% of matmul)"
        )
    s = result["search_throughput"]
    print(
        f"evaluations/min: sequential {s['sequential_evals_per_min']:.1f}, population "
        f"{s['population_evals_per_min']:.1f} (x{s['speedup']:.2f}), low-fidelity population "
        f"{s['low_fidelity_population_evals_per_min']:.1f} (x{s['low_fidelity_speedup']:.2f})"
    )
    print(f"matmul {result['matmul']['n']}^2: {result['matmul']['gflops']:.1f} GFLOP/s -> {args.out}")


if __name__ == "__main__":
    main()
