"""What DELTA's supervised attention costs, and what its two speed-ups save; writes
``benchmarks/results/bench_delta.json``.

DELTA's supervised attention (:func:`kshot.methods.delta.supervised_attention`) measures every
conv channel's removal with a forward pass of the support set: 3,904 channels on ResNet-18. Two
speed-ups keep it affordable:

- ``resume``: on ResNet-18 a removal reruns only the residual stages from the removed layer's on,
  from that stage's input computed once (:meth:`kshot.models.Backbone.resume_points`), instead of
  the whole forward;
- ``cache``: a tuning job runs every candidate of DELTA's grid on the same episodes, and the
  attention does not depend on the candidates (``alpha``, ``lr``): it is computed once per episode
  (:data:`kshot.methods.delta.ATTENTION_CACHE`) instead of once per candidate and episode.

For each backbone (the default run's LeNet, ResNet-18 at 32x32) and support set (5 and 10 classes,
k = 1, 5, 10: the benchmarks' cells) this times one attention with and without ``resume`` on
random weights and images (its cost does not depend on their values). From those times and
``params.yaml`` (the tuning grid's size, ``episodes``, ``search.finalists``) it estimates the
job-seconds the attention takes in a study that runs ``delta``, ``delta+tuned`` and DELTA's
tuning job at every cell (``peers`` on LeNet, ``resnet_peers`` on ResNet-18), with each
speed-up on and off.

Run it inside the environment on an otherwise idle machine, one thread as the pipeline's jobs:
``python benchmarks/bench_delta.py`` (about 6 minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from kshot.config import FinetuneConfig
from kshot.io import write_json
from kshot.methods.delta import conv_layers, supervised_attention
from kshot.models import Backbone, build_backbone
from kshot.params import load_params
from kshot.runtime import cpu_description
from kshot.tuning import grid_candidates

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {"lenet": ("lenet", 28, 1.0), "resnet18": ("resnet18", 32, 1.0)}  # name, side, width
CELLS = [(5, 1), (5, 5), (5, 10), (10, 1), (10, 5), (10, 10)]  # (classes, k): the benchmarks'


def attention_seconds(model: Backbone, side: int, n_classes: int, k: int, resume: bool) -> float:
    """Wall seconds of one supervised attention of ``model`` on a random ``n_classes``-way
    ``k``-shot support set, with or without resuming at a stage."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_classes * k, 1, side, side), dtype=torch.uint8, generator=gen)
    y = torch.arange(n_classes).repeat_interleave(k)
    cfg = FinetuneConfig(steps=100, lr=0.1, momentum=0.9, eval_every=100)
    points = type(model).resume_points
    if not resume:
        type(model).resume_points = lambda self: {}
    try:
        start = time.perf_counter()
        supervised_attention(model, conv_layers(model), (x, y), cfg, torch.device("cpu"))
        return time.perf_counter() - start
    finally:
        type(model).resume_points = points


def attentions_per_cell(params: Any) -> dict[str, int]:
    """How many attentions a study computes at one cell, by job, with and without the cache:
    ``delta`` and ``delta+tuned`` one per evaluation episode each; the tuning job one per
    candidate and search episode and per re-checked candidate (finalists and the default) and
    selection episode, or, cached, one per episode it sees."""
    grid = params.methods["delta"].tune
    candidates = len(grid_candidates(grid))
    eps = params.episodes
    finalists = min(params.search.finalists, candidates)
    return {
        "finetune": 2 * eps.n_episodes,
        "tune_uncached": candidates * eps.search_episodes + (finalists + 1) * eps.select_episodes,
        "tune_cached": eps.search_episodes + eps.select_episodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_delta.json"))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(ROOT / "params.yaml")
    counts = attentions_per_cell(params)
    out: dict[str, Any] = {
        "cpu": cpu_description(),
        "platform": platform.platform(),
        "threads": 1,
        "attentions_per_cell": counts,
        "backbones": {},
    }
    for name in args.backbones:
        kind, side, width = BACKBONES[name]
        rows, totals = [], {"none": 0.0, "resume": 0.0, "cache": 0.0, "both": 0.0}
        for n_classes, k in CELLS:
            model = build_backbone(kind, 1, side, n_classes, width).eval()
            row = {"classes": n_classes, "k": k}
            for resume in [True, False] if model.resume_points() else [True]:
                row["resume_s" if resume else "whole_s"] = attention_seconds(
                    model, side, n_classes, k, resume
                )
            row.setdefault("whole_s", row["resume_s"])  # no resume point: the same forward
            rows.append(row)
            print(name, row, flush=True)
            uncached = counts["finetune"] + counts["tune_uncached"]
            cached = counts["finetune"] + counts["tune_cached"]
            totals["none"] += uncached * row["whole_s"]
            totals["resume"] += uncached * row["resume_s"]
            totals["cache"] += cached * row["whole_s"]
            totals["both"] += cached * row["resume_s"]
        out["backbones"][name] = {
            "layers": len(conv_layers(model)),
            "channels": sum(dict(model.named_modules())[n].out_channels for n in conv_layers(model)),
            "cells": rows,
            "study_attention_job_s": {key: round(value) for key, value in totals.items()},
        }
        write_json(Path(args.out), out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
