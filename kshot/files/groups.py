"""The group file: a grouped method's neuron groups on every evaluation episode of one benchmark
and k, with their diagnostics (counts, cluster quality), and its JSON summary.

The file records what it was made from (:func:`groups_made_from`: the checkpoint, the method's
name, kind and options) and each episode's entry the digest of its support and validation indices;
:func:`read_groups` refuses a file made for other inputs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from kshot.files.common import episode_entries, read_stage_file
from kshot.files.episodes import episode_digest
from kshot.io import save_tensors, write_json

FORMAT = "kshot-groups/1"


def groups_made_from(kind: str, options: Any, method_name: str, checkpoint_sha: str) -> dict[str, Any]:
    """What a group file depends on besides its episodes and activations (checked on reading):
    the checkpoint, the method's name and kind and all its (parsed) options."""
    plain = json.loads(json.dumps(dataclasses.asdict(options), sort_keys=True))
    return {"checkpoint": checkpoint_sha, "method": method_name, "kind": kind, "options": plain}


def save_groups(
    path: str | Path,
    summary_path: str | Path,
    provenance: dict[str, Any],
    benchmark: str,
    k: int,
    activations_tag: str,
    episodes: list[tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]],
) -> dict[str, Any]:
    """Write the group file and its summary; returns the summary.

    ``episodes``: triples of an episodes-file entry, its assignments ``{layer: [N]}`` and their
    diagnostics (``counts``, ``quality``, ...); ``provenance``: :func:`groups_made_from`. The
    summary holds each episode's diagnostics and, per layer, the mean silhouette and intra- and
    inter-group correlation over the episodes.
    """
    entries, extras = {}, {}
    for raw, assign, extra in episodes:
        key = str(int(raw["id"]))
        entries[key] = {"digest": episode_digest(raw), "assign": assign, "extra": extra}
        extras[key] = extra
    mean: dict[str, dict[str, float | None]] = {}
    for layer in next(iter(extras.values()))["quality"] if extras else []:
        mean[layer] = {}
        for stat in ("silhouette", "intra_corr", "inter_corr"):
            values = [e["quality"][layer][stat] for e in extras.values()]
            values = [v for v in values if v is not None]
            mean[layer][stat] = sum(values) / len(values) if values else None
    header = {"method": provenance["method"], "kind": provenance["kind"], "activations": activations_tag}
    save_tensors(path, {"format": FORMAT, "made_from": provenance, "episodes": entries})
    summary = {"benchmark": benchmark, "k": k, **header, "mean_quality": mean, "episodes": extras}
    write_json(summary_path, summary)
    return summary


def read_groups(
    path: str | Path, provenance: dict[str, Any], episodes: list[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """``{episode id: {'assign': ..., 'extra': ...}}`` from group file ``path``, checked to be made
    from ``provenance`` (:func:`groups_made_from`) and for these evaluation ``episodes`` (an
    episodes file's entries); raises :class:`DataError` naming the file otherwise."""
    content = read_stage_file(path, "group file", FORMAT, provenance, "group")
    keys = [(str(int(e["id"])), episode_digest(e)) for e in episodes]
    entries = episode_entries(content, path, "group file", "episodes", keys, "group")
    return {
        int(ep_id): {"assign": entry.get("assign"), "extra": entry.get("extra")}
        for (ep_id, _), entry in zip(keys, entries, strict=True)
    }
