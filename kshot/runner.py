"""Run one method on every episode of one benchmark and k, with resume.

Each finished episode is written to ``<out_dir>/episodes/ep<id>.json`` at once (atomically), stamped
with a digest of everything that determines it (method spec, fine-tuning config, seed, checkpoint and
data digests); a rerun after an interruption reuses exactly the episodes whose stamp matches and
computes the rest. The summary ``metrics.json`` holds no timings, so identical params give
byte-identical files; wall times go to ``timings.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from kshot.activations import episode_indices
from kshot.config import FinetuneConfig, MethodSpec
from kshot.data.datasets import sha256
from kshot.data.prepare import check_target_of, load_prepared
from kshot.episodes import Episode, episode_seed, read_episodes
from kshot.errors import CheckpointError, DataError
from kshot.io import load_tensors, write_json
from kshot.methods import METHODS, EpisodeData, EpisodeResult
from kshot.pretrain import checkpoint_arch, load_checkpoint


@functools.cache
def code_digest() -> str:
    """sha256 of kshot's own source files: a resumed episode is trusted only if it was computed by
    the same code (any edit, even one that should not change numbers, recomputes)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stamp(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_geometry(checkpoint: Path, target: Path, meta: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` when the checkpoint's network does not read the target's
    images (``meta['channels']`` x ``meta['side']`` squared)."""
    arch = checkpoint_arch(load_tensors(checkpoint, what="checkpoint"), checkpoint)
    found = (arch.get("in_channels"), arch.get("image_size"))
    if found != (meta["channels"], meta["side"]):
        raise CheckpointError(
            f"checkpoint '{checkpoint}': expected a network for the {meta['channels']}-channel "
            f"{meta['side']}x{meta['side']} images of prepared data '{target}', found one for "
            f"in_channels={found[0]}, image_size={found[1]}"
        )


def select(x: torch.Tensor, y: torch.Tensor, idx: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of images ``x [N, ...]`` and labels ``y [N]`` (all rows for ``None``)."""
    if idx is None:
        return x, y
    t = torch.as_tensor(idx, dtype=torch.int64)
    return x[t], y[t]


def run_episodes(
    *,
    benchmark: str,
    method_name: str,
    spec: MethodSpec,
    finetune: FinetuneConfig,
    k: int,
    checkpoint: Path,
    target: Path,
    episodes: Path,
    out_dir: Path,
    seed: int,
    device: torch.device,
    role: str = "eval",
    artifacts: dict[str, Any] | None = None,
    groups: Path | None = None,
) -> dict[str, Any]:
    """Run ``method_name`` on each episode of ``role`` in ``episodes``; write and return the summary.

    ``groups``: the group stage's file for a grouped method (its assignments are used instead of
    clustering here, see :func:`kshot.methods.grouped.read_groups`)."""
    data = load_prepared(target, ("pool_x", "pool_y", "test_x", "test_y", "meta"))
    check_target_of(target, data["meta"], benchmark)
    ep_file = read_episodes(episodes, benchmark, k, data["meta"])
    if role not in ep_file:
        raise DataError(f"episodes file '{episodes}': expected a '{role}' list, found {sorted(ep_file)}")
    check_geometry(checkpoint, target, data["meta"])
    method_cls = METHODS[spec.kind]
    method = method_cls(
        method_cls.parse_options(spec.options, f"methods.{method_name}"), finetune, method_name
    )
    ckpt_sha = sha256(checkpoint)
    given = None
    if groups is not None:
        from kshot.methods.grouped import groups_made_from, read_groups

        given = read_groups(groups, groups_made_from(method, method_name, ckpt_sha), ep_file[role])
    key = stamp(
        {
            "spec": dataclasses.asdict(spec),
            "finetune": dataclasses.asdict(method.cfg),
            "seed": seed,
            "target": data["meta"]["sha256"],
            "checkpoint": ckpt_sha,
            "groups": sha256(groups) if groups is not None else None,
            "episodes": ep_file[role],
            "artifacts": artifacts or {},
            "code": code_digest(),
        }
    )
    records, timings = [], []
    for raw in ep_file[role]:
        ep = Episode.from_dict(raw)
        path = out_dir / "episodes" / f"ep{ep.id:03d}.json"
        if path.is_file():
            try:
                done = json.loads(path.read_text())
                if done.get("stamp") == key:
                    records.append(done["metrics"])
                    timings.append(done["timing"])
                    continue
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError, TypeError):
                pass  # a foreign or damaged file is recomputed, never trusted
        start = time.perf_counter()
        model, _ = load_checkpoint(checkpoint)
        ep_data = EpisodeData(
            model=model,
            support=select(data["pool_x"], data["pool_y"], ep.support),
            val=select(data["pool_x"], data["pool_y"], ep.val),
            test=select(data["test_x"], data["test_y"], ep.test),
            n_classes=int(ep_file["n_classes"]),
            seed=episode_seed(seed, benchmark, k, ep.id),
            device=device,
            artifacts={
                **(artifacts or {}),
                "unlabeled": data["pool_x"],
                "unlabeled_exclude": episode_indices(raw),
                **({"groups": given[ep.id]} if given is not None else {}),
            },
        )
        result: EpisodeResult = method.run(ep_data)
        metrics = {
            "benchmark": benchmark,
            "method": method_name,
            "kind": spec.kind,
            "k": k,
            "episode": ep.id,
            **result.metrics(),
        }
        timing = {
            "episode": ep.id,
            "wall_time_s": time.perf_counter() - start,
            "train_time_s": result.train_time_s,
        }
        write_json(path, {"stamp": key, "metrics": metrics, "timing": timing})
        records.append(metrics)
        timings.append(timing)
    summary = {
        "benchmark": benchmark,
        "method": method_name,
        "kind": spec.kind,
        "k": k,
        "role": role,
        "episodes": records,
    }
    write_json(out_dir / "metrics.json", summary)
    write_json(
        out_dir / "timings.json",
        {"episodes": timings, "total_wall_time_s": sum(t["wall_time_s"] for t in timings)},
    )
    return summary
