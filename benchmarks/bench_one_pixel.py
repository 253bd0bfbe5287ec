"""What computing ResNet-18's one-pixel convolutions as matrix products saves; writes
``benchmarks/results/bench_one_pixel.json``.

At 32x32 inputs ResNet-18's last stage works on 2x2 and 1x1 maps, where each convolution has a
one-pixel output (:class:`kshot.models.OnePixelConv2d`). For each cell of the ResNet-18 study
(5 and 10 classes, k = 1, 5, 10) this times fine-tuning steps (:func:`kshot.finetune.train`, the
pipeline's own loop, validation included) and an evaluation pass over 256 images, with the
matrix product and with torch's convolution (the same model with its convs as plain
``nn.Conv2d``), interleaved and repeated, the median kept. Every fine-tuning run of the study is
such steps, so the ratio per cell is the ratio of its fine-tuning, search and tuning jobs.

Run it inside the environment on an otherwise idle machine, one thread as the pipeline's jobs:
``python benchmarks/bench_one_pixel.py`` (about 4 minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kshot.config import FinetuneConfig
from kshot.finetune import accuracy, train
from kshot.io import write_json
from kshot.models import Backbone, OnePixelConv2d, build_backbone
from kshot.runtime import cpu_description

ROOT = Path(__file__).resolve().parents[1]
CELLS = [(5, 1), (5, 5), (5, 10), (10, 1), (10, 5), (10, 10)]  # (classes, k): the study's
CPU = torch.device("cpu")


def with_plain_convs(model: Backbone) -> Backbone:
    """A copy of ``model`` whose convolutions are torch's own."""
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if type(m) is OnePixelConv2d:
            m.__class__ = nn.Conv2d
    return plain


def images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=gen)


def step_seconds(model: Backbone, n_classes: int, k: int, steps: int) -> float:
    """Wall seconds per step of :func:`train` on a random ``n_classes``-way ``k``-shot support
    set, validation on 10 images per class every 10 steps as in the study."""
    support = (images(n_classes * k, 0), torch.arange(n_classes).repeat_interleave(k))
    val = (images(n_classes * 10, 1), torch.arange(n_classes).repeat_interleave(10))
    cfg = FinetuneConfig(steps=steps, lr=0.01, momentum=0.9, eval_every=10)
    trainable = [p for p in model.parameters()]
    start = time.perf_counter()
    train(model, trainable, support, val, cfg, CPU)
    return (time.perf_counter() - start) / steps


def eval_seconds(model: Backbone) -> float:
    x, y = images(256, 2), torch.zeros(256, dtype=torch.long)
    start = time.perf_counter()
    accuracy(model, x, y, CPU)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_one_pixel.json"))
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {
        "cpu": cpu_description(),
        "platform": platform.platform(),
        "threads": 1,
        "cells": [],
    }
    for n_classes, k in CELLS:
        torch.manual_seed(0)
        fast = build_backbone("resnet18", 1, 32, n_classes)
        plain = with_plain_convs(fast)
        times: dict[str, list[float]] = {
            "step_conv": [],
            "step_matmul": [],
            "eval_conv": [],
            "eval_matmul": [],
        }
        for _ in range(args.repeats):
            for label, model in (("conv", plain), ("matmul", fast)):
                times[f"step_{label}"].append(step_seconds(model, n_classes, k, args.steps))
                times[f"eval_{label}"].append(eval_seconds(model))
        row: dict[str, Any] = {"classes": n_classes, "k": k}
        row |= {f"{key}_ms": round(1000 * statistics.median(v), 2) for key, v in times.items()}
        row["step_ratio"] = round(row["step_conv_ms"] / row["step_matmul_ms"], 2)
        row["eval_ratio"] = round(row["eval_conv_ms"] / row["eval_matmul_ms"], 2)
        out["cells"].append(row)
        print(row, flush=True)
        write_json(Path(args.out), out)
    conv = sum(r["step_conv_ms"] for r in out["cells"])
    out["step_ratio_over_cells"] = round(conv / sum(r["step_matmul_ms"] for r in out["cells"]), 2)
    write_json(Path(args.out), out)
    print(
        f"step time summed over the cells: conv / matmul = {out['step_ratio_over_cells']}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
