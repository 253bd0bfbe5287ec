"""The activation file: for one benchmark and k, the patterns ``{layer: [N, M]}`` of every groupable
layer on every episode of every role (evaluation, search, selection), for one
:class:`kshot.config.ActivationSpec`, named by its tag (``support``, ``support+pool500``, and
``-raw`` when not rectified).

The file records what it was made from (:func:`made_from`: checkpoint, prepared target, seed,
benchmark, k, tag) and each episode's entry the digest of its support and validation indices, so
a file made for other inputs is refused rather than silently used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kshot.errors import DataError
from kshot.files.common import episode_entries, read_stage_file
from kshot.files.episodes import episode_digest
from kshot.io import save_tensors

FORMAT = "kshot-activations/2"


def made_from(checkpoint_sha: str, target_sha: str, seed: int, benchmark: str, k: int, tag: str) -> dict:
    """What an activation file depends on besides its episodes (checked on reading)."""
    return {
        "checkpoint": checkpoint_sha,
        "target": target_sha,
        "seed": seed,
        "benchmark": benchmark,
        "k": k,
        "tag": tag,
    }


def save_activations(
    path: str | Path,
    provenance: dict[str, Any],
    layers: list[str],
    roles: dict[str, list[tuple[dict[str, Any], dict[str, torch.Tensor]]]],
) -> None:
    """Write an activation file: ``roles`` maps each role to pairs of an episodes-file entry and
    its patterns ``{layer: [N, M]}``; ``provenance``: :func:`made_from`."""
    content = {
        role: {str(int(e["id"])): {"digest": episode_digest(e), "acts": acts} for e, acts in pairs}
        for role, pairs in roles.items()
    }
    save_tensors(path, {"format": FORMAT, "made_from": provenance, "layers": list(layers), "roles": content})


def read_activations(
    path: str | Path,
    provenance: dict[str, Any],
    role: str,
    episodes: list[dict[str, Any]],
    sizes: dict[str, int],
) -> list[dict[str, torch.Tensor]]:
    """The patterns ``{layer: [N, M]}`` of each of ``episodes`` (dicts of an episodes file's
    ``role`` list, in their order) from activation file ``path``, checked to be made from
    ``provenance`` (:func:`made_from`) and these episodes' images, with a ``[N, M]`` matrix for
    every layer of ``sizes`` (``{layer: N}``); raises :class:`DataError` naming the file otherwise."""
    what = "activation file"
    content = read_stage_file(path, what, FORMAT, provenance, "activations")
    roles = content.get("roles")
    keys = [(str(int(e["id"])), episode_digest(e)) for e in episodes]
    entries = episode_entries(roles if isinstance(roles, dict) else {}, path, what, role, keys, "activations")
    out = []
    for (ep_id, _), entry in zip(keys, entries, strict=True):
        acts = entry.get("acts")
        for layer, n in sizes.items():
            a = acts.get(layer) if isinstance(acts, dict) else None
            if not isinstance(a, torch.Tensor) or a.dim() != 2 or a.shape[0] != n:
                found = f"shape {list(a.shape)}" if isinstance(a, torch.Tensor) else "none"
                raise DataError(
                    f"{what} '{path}': expected a [{n}, images] matrix for layer '{layer}' of "
                    f"{role} episode {ep_id}, found {found}; rerun the activations stage"
                )
        out.append(acts)
    return out
