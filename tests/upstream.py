"""Build the tiny pipeline's upstream files in-process (seconds), at the paths the rules use.

Tests of fine-tuning, of the CLI and of interruption need a prepared target, a checkpoint and
episodes; making them here instead of through Snakemake keeps those tests fast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kshot.data.datasets import acquire
from kshot.data.prepare import prepare_source, prepare_target, source_geometry
from kshot.episodes import make_episodes
from kshot.files.checkpoint import save_checkpoint
from kshot.files.prepared import load_prepared, save_prepared
from kshot.io import write_json
from kshot.params import params_from_dict
from kshot.pretrain import pretrain


def upstream_paths(root: Path, benchmark: str = "tiny", source: str = "digits04", k: int = 1) -> dict:
    return {
        "raw": root / "data" / "raw" / "digits",
        "source": root / "data" / "prepared" / "sources" / f"{source}.pt",
        "target": root / "data" / "prepared" / "targets" / f"{benchmark}.pt",
        "ckpt": root / "data" / "checkpoints" / source / "source.pt",
        "source_metrics": root / "data" / "checkpoints" / source / "metrics.json",
        "episodes": root / "data" / "episodes" / benchmark / f"k{k}.json",
    }


def build_upstream(root: Path, raw: dict, episodes: bool = True) -> dict:
    """Acquire digits, prepare source and target, pretrain and draw k-shot episodes under ``root``
    for the tiny params ``raw`` (one source, benchmark 'tiny', the first k); returns the paths."""
    params = params_from_dict(raw)
    (source,) = params.sources
    src = params.sources[source]
    k = params.episodes.k[0]
    paths = upstream_paths(root, "tiny", source, k)
    acquire("digits", params.data, paths["raw"])
    save_prepared(paths["source"], prepare_source(source, src, params.data, paths["raw"], params.seed))
    geometry = source_geometry(src, params.data)
    target = prepare_target("tiny", params.benchmarks["tiny"], geometry, params.data, paths["raw"])
    save_prepared(paths["target"], target)
    d = load_prepared(paths["source"], ("train_x", "train_y", "test_x", "test_y"))
    model, metrics = pretrain(
        src, d["train_x"], d["train_y"], d["test_x"], d["test_y"], params.seed, torch.device("cpu")
    )
    save_checkpoint(paths["ckpt"], model, src, geometry[1], metrics)
    write_json(
        paths["source_metrics"],
        {"source": source, "backbone": src.backbone, "source_test_acc": metrics["source_test_acc"]},
    )
    if episodes:
        t = load_prepared(paths["target"], ("pool_y", "test_y"))
        eps = make_episodes(t["pool_y"], t["test_y"], k, params.episodes, params.seed, "tiny")
        write_json(paths["episodes"], eps)
    return paths
