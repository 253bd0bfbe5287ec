"""What computing ResNet-18's convolutions on small maps as matrix products saves; writes
``benchmarks/results/bench_small_maps.json``.

At 32x32 inputs ResNet-18's last two stages work on 2x2 and 1x1 maps, where
:class:`kshot.models.SmallMapConv2d` computes each output pixel as a matrix product. For each cell
of the ResNet-18 study (5 and 10 classes, k = 1, 5, 10) this times fine-tuning steps
(:func:`kshot.finetune.train`, the pipeline's own loop, validation included) and an evaluation
pass over 256 images with three versions of the same model, interleaved and repeated, the median
kept: torch's convolution everywhere (``conv``), the matrix products on one-pixel outputs only
(``one_pixel``: the last stage, session 23's version) and on outputs of up to 4 pixels
(``small_maps``: the last two stages, kshot's) or 16 (``maps_16``: layer 2 too). Every
fine-tuning run of the study is such steps, so the ratio per cell is the ratio of its fine-tuning,
search and tuning jobs.

Run it inside the environment on an otherwise idle machine, one thread as the pipeline's jobs:
``python benchmarks/bench_small_maps.py`` (about 8 minutes on one CPU core).
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
from kshot.models import Backbone, SmallMapConv2d, build_backbone
from kshot.runtime import cpu_description

ROOT = Path(__file__).resolve().parents[1]
CELLS = [(5, 1), (5, 5), (5, 10), (10, 1), (10, 5), (10, 10)]  # (classes, k): the study's
CPU = torch.device("cpu")


VERSIONS = ("conv", "one_pixel", "small_maps", "maps_16")
MAX_PIXELS = {"one_pixel": 1, "small_maps": 4, "maps_16": 16}


def version(model: Backbone, name: str) -> Backbone:
    """A copy of ``model`` whose convolutions are torch's own (``conv``) or take the matrix
    products on outputs of at most 1 (``one_pixel``), 4 (``small_maps``) or 16 pixels
    (``maps_16``: layer 2's 4x4 maps too)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if type(m) is SmallMapConv2d:
            if name == "conv":
                m.__class__ = nn.Conv2d
            else:
                m.max_pixels = MAX_PIXELS[name]
    return out


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
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_small_maps.json"))
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
        model = build_backbone("resnet18", 1, 32, n_classes)
        models = {name: version(model, name) for name in VERSIONS}
        times: dict[str, list[float]] = {
            f"{kind}_{name}": [] for kind in ("step", "eval") for name in VERSIONS
        }
        for _ in range(args.repeats):
            for name, m in models.items():
                times[f"step_{name}"].append(step_seconds(m, n_classes, k, args.steps))
                times[f"eval_{name}"].append(eval_seconds(m))
        row: dict[str, Any] = {"classes": n_classes, "k": k}
        row |= {f"{key}_ms": round(1000 * statistics.median(v), 2) for key, v in times.items()}
        for kind in ("step", "eval"):
            row[f"{kind}_ratio_conv"] = round(row[f"{kind}_conv_ms"] / row[f"{kind}_small_maps_ms"], 2)
            for name in ("one_pixel", "maps_16"):
                row[f"{kind}_ratio_{name}"] = round(
                    row[f"{kind}_{name}_ms"] / row[f"{kind}_small_maps_ms"], 2
                )
        out["cells"].append(row)
        print(row, flush=True)
        write_json(Path(args.out), out)
    summed = {name: sum(r[f"step_{name}_ms"] for r in out["cells"]) for name in VERSIONS}
    out["step_ratio_over_cells"] = {
        f"{name} / small_maps": round(summed[name] / summed["small_maps"], 2)
        for name in ("conv", "one_pixel", "maps_16")
    }
    write_json(Path(args.out), out)
    print(f"step time summed over the cells: {out['step_ratio_over_cells']}; wrote {args.out}")


if __name__ == "__main__":
    main()
