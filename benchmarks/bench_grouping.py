"""Benchmark of the grouping machinery; writes ``benchmarks/results/bench_grouping.json``.

1. Per-step time of a fine-tuning step with the group-mean gradient vs a plain step (LeNet, 28x28,
   5 classes, k = 1, 5, 10; a quarter, a sixteenth and a half of the neurons as groups in every
   groupable layer), both as the pipeline takes it (coarse linear layers through group deltas) and
   with every layer's gradient averaged by the hook. The variants run in rounds of one short block
   each, in an order drawn afresh each round; a variant's overhead is the median over rounds of its
   block's time over the plain block's of the same round, which cancels the slow drifts of a shared
   machine that move any single block by tens of percent; a 95% bootstrap interval of that median
   is saved with it, and a plain-vs-plain control gives the measurement's own noise in the same way.
   The grouped step is also split into its linear and conv layers' parts. The medians of the
   raw step times drift by up to a third between configurations run minutes apart (and need not
   agree with the ratios); compare ratios within one configuration.
2. Fine-tuning evaluations per minute of the RL search's inner loop at k = 1 and 5: ``P`` grouped
   fine-tunings one after another (:func:`kshot.finetune.train`) vs one population
   (:func:`kshot.population`), for P = 2 (the default search episodes) and 8. Also the pipeline's
   setting: half the steps (``search.steps``, low-fidelity rewards), batched and one after another
   (on CPU ``search.population: auto`` runs the loop), against the full-fidelity sequential loop.
   (Runs before ``search.workers`` was removed also timed the loop's members side by side in
   threads; their JSONs keep those figures.)
3. A large float32 matmul's GFLOP/s, and the GFLOP/s a plain fine-tuning step reaches (FLOPs counted
   by ``torch.utils.flop_counter``) as a fraction of it.
4. The wall time of one whole search stage with ``params.yaml``'s settings, at k = 1 and 5.

Everything is measured once per thread count of ``--threads`` (default 1 and 2): one thread is the
pipeline's setting (each job runs single-threaded, two side by side on 2 cores), two is one process
using both cores. Ratios are taken within one setting of one run. Runs in 12-18 minutes on 2 CPU
cores: ``python benchmarks/bench_grouping.py [--device cuda]``; ``--sections steps`` (or ``search``,
``full_search``) measures a part alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kshot.config import FinetuneConfig
from kshot.finetune import resolve_device
from kshot.io import write_json
from kshot.models import LeNet
from kshot.optim import SGD
from kshot.population import train_members, train_population
from kshot.runtime import cpu_description, keep_freed_memory
from kshot.shared_grad import GroupedGradient

N_CLASSES = 5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fraction_groups(model: LeNet, seed: int, fraction: float = 0.25) -> dict[str, torch.Tensor]:
    """Random groupings with ``fraction`` of each layer's neurons as groups."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in model.groupable():
        n = model.get_submodule(name).weight.shape[0]
        g = max(1, round(n * fraction))
        out[name] = torch.cat([torch.arange(g), torch.randint(g, (n - g,), generator=gen)])
    return out


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    return x, torch.arange(n) % N_CLASSES


def median_ci(ratios: torch.Tensor, seed: int = 0, draws: int = 2000) -> tuple[float, float, float]:
    """Median of ``ratios`` and a 95% percentile-bootstrap interval for it."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(ratios), (draws, len(ratios)), generator=gen)
    boot = ratios[idx].median(dim=1).values
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=ratios.dtype)).tolist()
    return ratios.median().item(), lo, hi


def step_times(k: int, device: torch.device, rounds: int, steps: int, fraction: float) -> dict[str, Any]:
    """One fine-tuning step as :func:`kshot.finetune.train` takes it (channels-last model and input,
    momentum SGD), three ways: plain; ``averaged``, every grouped layer's gradient averaged by the
    hook (the general path, e.g. with weight decay); ``grouped``, the pipeline's default path, where
    coarsely grouped linear layers train through their group deltas (``GroupedGradient.attach``).
    Also the grouped path split in two: ``linear_only`` (the linear layers' grouping alone, through
    their deltas where they qualify) and ``conv_only`` (the conv layers' averaging alone);
    ``touch_conv2``, a
    plain step that multiplies ``conv2``'s weight gradient by 1 in place (what merely touching that
    gradient once more costs); ``plain_control``, plain steps again: its "overhead" is the
    measurement's own noise (an A/A control), so it should be 0 within its interval.

    Each round runs one ``steps``-step block of every variant, in an order drawn afresh for each
    round (so no variant always runs first or after the same one); a variant's overhead is the
    median over rounds of its block's time over the plain block's of the same round, with a 95%
    bootstrap interval of that median."""
    torch.manual_seed(0)
    model = LeNet(1, 28, N_CLASSES).to(device, memory_format=torch.channels_last)
    x = torch.rand(N_CLASSES * k, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.arange(N_CLASSES * k) % N_CLASSES).to(device)
    groups = fraction_groups(model, 0, fraction)
    hook = GroupedGradient(model, groups)
    convs = [n for n in groups if isinstance(model.get_submodule(n), torch.nn.Conv2d)]
    # variant: (the hook called after backward(), whether train() would attach its group deltas)
    hooks = {
        "plain": (None, False),
        "averaged": (hook, False),
        "grouped": (hook, True),
        "linear_only": (GroupedGradient(model, {n: a for n, a in groups.items() if n not in convs}), True),
        "conv_only": (GroupedGradient(model, {n: groups[n] for n in convs}), True),
        "touch_conv2": (lambda m: m.conv2.weight.grad.mul_(1.0), False),
        "plain_control": (None, False),
    }

    def block(variant: str) -> float:
        h, deltas = hooks[variant]
        trainable = list(model.parameters())
        if deltas:
            trainable = h.attach(trainable)
        opt = SGD(trainable, lr=1e-3, momentum=0.9)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if h is not None:
                h(model)
            opt.step()
        sync(device)
        if deltas:
            h.detach()
        return (time.perf_counter() - start) / steps

    variants = tuple(hooks)
    for v in variants:  # warm-up
        block(v)
    times: dict[str, list[float]] = {v: [] for v in variants}
    order = torch.Generator().manual_seed(k)
    for _ in range(rounds):
        for i in torch.randperm(len(variants), generator=order).tolist():
            times[variants[i]].append(block(variants[i]))
    t = {v: torch.tensor(ts, dtype=torch.float64) for v, ts in times.items()}
    overhead = {v: median_ci(100 * (t[v] / t["plain"] - 1)) for v in variants if v != "plain"}
    median = {v: ts.median().item() for v, ts in t.items()}

    def hook_alone(h) -> float:
        """Seconds per call of the hook ``h`` alone, on one step's gradients."""
        F.cross_entropy(model(x), y).backward()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            h(model)
        sync(device)
        return (time.perf_counter() - start) / steps

    hook_s = hook_alone(hook)
    p = median["plain"]
    with FlopCounterMode(display=False) as counter:  # forward + backward FLOPs of one step
        F.cross_entropy(model(x), y).backward()
    return {
        "k": k,
        "batch": N_CLASSES * k,
        "group_fraction": fraction,
        "groups": hook.counts(),
        "rounds": rounds,
        "steps_per_block": steps,
        "plain_step_ms": 1e3 * p,
        "grouped_step_ms": 1e3 * median["grouped"],
        "averaged_step_ms": 1e3 * median["averaged"],
        "hook_only_ms": 1e3 * hook_s,
        "overhead_pct": overhead["grouped"][0],
        "overhead_pct_ci95": list(overhead["grouped"][1:]),
        "averaged_overhead_pct": overhead["averaged"][0],
        "averaged_overhead_pct_ci95": list(overhead["averaged"][1:]),
        "parts_overhead_pct": {v: overhead[v][0] for v in ("linear_only", "conv_only", "touch_conv2")},
        "control_pct": overhead["plain_control"][0],
        "control_pct_ci95": list(overhead["plain_control"][1:]),
        "step_gflop": counter.get_total_flops() / 1e9,
        "finetune_gflops": counter.get_total_flops() / p / 1e9,
    }


def evaluations_per_minute(
    device: torch.device, members: int, steps: int, low_steps: int, k: int, repeats: int
) -> dict[str, float]:
    """``members`` grouped fine-tunings of ``steps`` steps one after another in one process (the
    baseline, :func:`kshot.population.train_members`) vs one ``vmap`` population of the same, vs
    the same at ``low_steps`` (the pipeline's low-fidelity search reward). Each variant is timed
    ``repeats`` times, interleaved; the fastest run of each is kept."""
    cfg = FinetuneConfig(steps=steps, lr=0.01, momentum=0.9, eval_every=10)
    low = FinetuneConfig(steps=low_steps, lr=0.01, momentum=0.9, eval_every=min(10, low_steps))
    torch.manual_seed(0)
    source = LeNet(1, 28, N_CLASSES)
    models = [copy.deepcopy(source) for _ in range(members)]
    support, val = images(N_CLASSES * k, 1), images(N_CLASSES * 10, 2)  # 10 val images per class
    groupings = [fraction_groups(source, s) for s in range(members)]

    def loop(ft: FinetuneConfig) -> None:
        copies = [copy.deepcopy(m).to(device) for m in models]
        data = [support] * members, [val] * members
        train_members(copies, *data, ft, device, groupings, list(range(members)))

    def population(ft: FinetuneConfig) -> None:
        train_population(models, [support] * members, [val] * members, ft, device, groupings)

    variants = {
        "sequential": lambda: loop(cfg),
        "population": lambda: population(cfg),
        "low": lambda: population(low),
        "low_sequential": lambda: loop(low),
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, run in variants.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return {
        "members": members,
        "steps": steps,
        "low_fidelity_steps": low_steps,
        "k": k,
        "sequential_evals_per_min": 60 * members / best["sequential"],
        "population_evals_per_min": 60 * members / best["population"],
        "speedup": best["sequential"] / best["population"],
        "low_fidelity_population_evals_per_min": 60 * members / best["low"],
        "low_fidelity_speedup": best["sequential"] / best["low"],
        "low_fidelity_sequential_evals_per_min": 60 * members / best["low_sequential"],
        "low_fidelity_sequential_speedup": best["sequential"] / best["low_sequential"],
    }


def full_search(device: torch.device, k: int, params: Path) -> dict[str, float]:
    """Wall time of one search stage as the pipeline runs it (``params.yaml``'s ``search``,
    ``finetune`` and ``episodes`` blocks: budget, low-fidelity steps, selection of finalists) on a
    LeNet with synthetic images of the real shapes, 5-way k-shot."""
    from kshot.config import SearchConfig, from_dict
    from kshot.params import read_params_file
    from kshot.search import SearchEpisode, search_group_counts

    raw = read_params_file(str(params))
    cfg = from_dict(SearchConfig, raw["search"], "search")
    ft = from_dict(FinetuneConfig, raw["finetune"], "finetune")
    n_search, n_select = raw["episodes"]["search_episodes"], raw["episodes"].get("select_episodes", 0)
    val_per_class = raw["episodes"]["val_per_class"]
    torch.manual_seed(0)
    model = LeNet(1, 28, N_CLASSES)

    def episodes(n: int, offset: int) -> list[SearchEpisode]:
        return [
            SearchEpisode(
                images(N_CLASSES * k, offset + 2 * i),
                images(N_CLASSES * val_per_class, offset + 2 * i + 1),
                i,
            )
            for i in range(n)
        ]

    start = time.perf_counter()
    trace = search_group_counts(
        model, episodes(n_search, 10), N_CLASSES, cfg, ft, device, 0, episodes(n_select, 100)
    )
    sync(device)
    return {
        "k": k,
        "wall_s": time.perf_counter() - start,
        "evaluations": trace.n_evaluations,
        "samples": len(trace.samples),
        "finalists": len(trace.finalists),
        "search_episodes": n_search,
        "select_episodes": n_select,
        "budget": cfg.budget,
        "steps": cfg.steps or ft.steps,
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
    parser.add_argument("--rounds", type=int, default=40, help="rounds of step-time blocks")
    parser.add_argument("--steps", type=int, default=10, help="fine-tuning steps per block")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.25, 0.0625, 0.5],
        help="groups per neuron in every layer for the step times (the first is the headline)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["steps", "search", "full_search"],
        default=["steps", "search", "full_search"],
        help="what to measure: step times, search evaluations per minute, whole searches",
    )
    parser.add_argument("--members", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--train-steps", type=int, default=100, help="full-fidelity steps")
    parser.add_argument("--low-steps", type=int, default=50, help="low-fidelity (search) steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", default=str(Path(__file__).parents[1] / "params.yaml"))
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch threads, each measured in turn: 1 is the pipeline's (every job runs with one "
        "thread, two jobs side by side on 2 cores), 2 one process on both cores",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    keep_freed_memory()  # as every kshot command does (kshot.runtime)
    device = resolve_device(args.device)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "settings": [],
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        setting = {
            "threads": threads,
            "matmul": matmul_gflops(device),
            "step_time": [
                step_times(k, device, args.rounds, args.steps, f)
                for f in args.fractions
                for k in (1, 5, 10)
                if "steps" in args.sections
            ],
            "search_throughput": [
                evaluations_per_minute(device, m, args.train_steps, args.low_steps, k, args.repeats)
                for k in (1, 5)
                for m in args.members
                if "search" in args.sections
            ],
            "full_search": [
                full_search(device, k, Path(args.params)) for k in (1, 5) if "full_search" in args.sections
            ],
        }
        for row in setting["step_time"]:
            row["fraction_of_matmul"] = row["finetune_gflops"] / setting["matmul"]["gflops"]
        result["settings"].append(setting)
        report(setting)
    result["wall_s"] = time.perf_counter() - start
    write_json(args.out, result)
    print(f"-> {args.out}")


def report(setting: dict) -> None:
    print(f"--- {setting['threads']} thread(s): matmul {setting['matmul']['gflops']:.1f} GFLOP/s")
    for row in setting["step_time"]:
        print(
            f"k={row['k']:>2}, groups {row['group_fraction']:g} of the neurons: plain "
            f"{row['plain_step_ms']:.2f} ms, grouped {row['grouped_step_ms']:.2f} ms "
            f"({row['overhead_pct']:+.1f}%, 95% CI {row['overhead_pct_ci95'][0]:+.1f} to "
            f"{row['overhead_pct_ci95'][1]:+.1f}), averaged gradients alone "
            f"{row['averaged_step_ms']:.2f} ms ({row['averaged_overhead_pct']:+.1f}%), hook "
            f"{row['hook_only_ms']:.3f} ms; "
            f"{row['finetune_gflops']:.1f} GFLOP/s "
            f"({100 * row['fraction_of_matmul']:.0f}% of matmul); parts: "
            + ", ".join(f"{v} {pct:+.1f}%" for v, pct in row["parts_overhead_pct"].items())
            + f"; plain vs plain (noise) {row['control_pct']:+.1f}% (95% CI "
            f"{row['control_pct_ci95'][0]:+.1f} to {row['control_pct_ci95'][1]:+.1f})"
        )
    for s in setting["search_throughput"]:
        print(
            f"k={s['k']}, {s['members']} members: evaluations/min sequential "
            f"{s['sequential_evals_per_min']:.1f}, population {s['population_evals_per_min']:.1f} "
            f"(x{s['speedup']:.2f}), low-fidelity population "
            f"{s['low_fidelity_population_evals_per_min']:.1f} (x{s['low_fidelity_speedup']:.2f}), "
            f"low-fidelity sequential {s['low_fidelity_sequential_evals_per_min']:.1f} "
            f"(x{s['low_fidelity_sequential_speedup']:.2f})"
        )
    for s in setting["full_search"]:
        print(
            f"full search k={s['k']}: {s['wall_s']:.1f} s ({s['evaluations']} evaluations on "
            f"{s['search_episodes']} episodes, {s['finalists']} finalists on {s['select_episodes']})"
        )


if __name__ == "__main__":
    main()
