"""Per-neuron activation patterns of a network's layers: the input of neuron grouping (GNA).

A neuron is a conv filter (an output channel of an ``nn.Conv2d``) or a unit (an output of an
``nn.Linear``). Its *activation pattern* is the vector of its responses over a set of images, so a
layer of ``N`` neurons seen on ``M`` images gives a matrix ``[N, M]``.

Design choices (the paper does not state them):

- **Rectified output.** Our backbones apply ReLU functionally (``torch.relu`` in ``features``), so a
  forward hook on a Conv2d/Linear module sees its *pre*-activation. By default we rectify it
  (``rectify=True``) before pooling, because the rectified response is what the next layer receives:
  two filters whose pre-activations differ only where both are negative behave identically
  downstream. Without rectification the spatial mean of a conv map is (up to borders) a linear
  function of the filter weights applied to the image's mean patch, which says little about which
  *features* a filter detects. For ResNet-18, where a conv is followed by BatchNorm before the ReLU,
  the rectified raw conv output is an approximation of the real activation; pass ``rectify=False``
  to cluster pre-activations instead.
- **Spatial mean for conv maps.** A filter's map ``[H, W]`` is averaged to one number per image, so
  the pattern measures *how much* of each image excites the filter, invariant to where. It keeps the
  matrix small (``N x M`` whatever the resolution), which is what lets us stream it.
- **Which images** (``features``): ``support``, the episode's k-shot support images, or
  ``support+pool``, which adds up to ``pool_size`` unlabeled target images drawn with the episode's
  seed, because with ``k = 1`` a pattern over 5 images is a poor estimate of how alike two neurons
  are. Validation and test images never feed a grouping.

**The activation file** (the pipeline's ``activations`` stage, :func:`episode_activations` and
:func:`read_activations`): for one benchmark and k, the patterns of every groupable layer on every
episode of every role (evaluation, search, selection), for one :class:`ActivationSpec`, named by
its :attr:`~ActivationSpec.tag` (``support``, ``support+pool500``, and ``-raw`` when not
rectified). The file records what it was made from (checkpoint, prepared target, seed, benchmark,
k, tag) and each episode's entry a digest of its support and validation indices, so a file made
for other inputs is refused rather than silently used.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kshot.episodes import ROLES, role_seed
from kshot.errors import ConfigError, DataError, check_choice, suggest
from kshot.finetune import to_input
from kshot.io import episode_entries, read_stage_file

FEATURES = ("support", "support+pool")
FORMAT = "kshot-activations/2"
TAG_PATTERN = r"support(\+pool\d+)?(-raw)?"  # also the Snakemake wildcard constraint of {tag}


def _module(model: nn.Module, name: str) -> nn.Conv2d | nn.Linear:
    modules = dict(model.named_modules())
    if name not in modules:
        raise ConfigError(
            f"layers: unknown layer '{name}'{suggest(name, modules)}; expected one of "
            f"{[n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]}"
        )
    m = modules[name]
    if not isinstance(m, nn.Conv2d | nn.Linear):
        raise ConfigError(
            f"layers: layer '{name}' is a {type(m).__name__}; expected an nn.Conv2d or nn.Linear"
        )
    return m


def _pool(out: torch.Tensor, rectify: bool) -> torch.Tensor:
    """Module output ``[B, N, H, W]`` or ``[B, N]`` -> per-image neuron responses ``[B, N]``."""
    if rectify:
        out = torch.relu(out)
    return out.mean(dim=(2, 3)) if out.dim() == 4 else out


@torch.no_grad()
def layer_activations(
    model: nn.Module,
    images: torch.Tensor,
    layers: list[str],
    device: torch.device,
    batch_size: int = 256,
    rectify: bool = True,
) -> dict[str, torch.Tensor]:
    """Activation patterns of the neurons of ``layers`` on uint8 ``images [M, C, H, W]``.

    Returns ``{layer: float32 [N_layer, M]}`` on CPU. Images are streamed in batches of
    ``batch_size`` and each hook pools its map to ``[B, N]`` at once, so memory is bounded by one
    batch's feature maps whatever ``M``. The model runs in eval mode (BatchNorm uses its running
    statistics) and its previous mode is restored. If the model has a ``features`` method (every
    :class:`kshot.models.Backbone`), only it runs: the head is never grouped.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ConfigError(f"images: expected uint8 [M, C, H, W], found {images.dtype} {list(images.shape)}")
    if len(images) == 0:
        raise ConfigError("images: expected at least one image to compute activations, found 0")
    if batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, found {batch_size}")
    modules = {name: _module(model, name) for name in layers}
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook_for(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            chunks[name].append(_pool(out, rectify).float().cpu())

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    forward = getattr(model, "features", model)
    try:
        for batch in images.split(batch_size):
            forward(to_input(batch, device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {name: torch.cat(parts).T.contiguous() for name, parts in chunks.items()}
    for name, acts in out.items():
        if acts.shape[1] != len(images):
            raise ConfigError(
                f"layers: layer '{name}' produced {acts.shape[1]} responses for {len(images)} "
                "images; expected a module called once per forward pass"
            )
    return out


@dataclass(frozen=True)
class ActivationSpec:
    """Which images feed the patterns and whether responses are rectified (see the module doc)."""

    features: str = "support"
    pool_size: int = 500
    rectify: bool = True

    def validate(self, where: str) -> None:
        check_choice(f"{where}.features", self.features, FEATURES)
        if self.pool_size < 1:
            raise ConfigError(f"{where}.pool_size: expected an integer >= 1, found {self.pool_size}")

    @property
    def tag(self) -> str:
        """The name of this spec's activation file: equal tags mean equal patterns."""
        tag = "support" if self.features == "support" else f"support+pool{self.pool_size}"
        return tag if self.rectify else f"{tag}-raw"

    @classmethod
    def from_tag(cls, tag: str) -> ActivationSpec:
        match = re.fullmatch(TAG_PATTERN, tag)
        pool = match.group(1)[len("+pool") :] if match and match.group(1) else None
        if not match or (pool is not None and int(pool) < 1):
            raise ConfigError(
                f"activations tag: expected 'support' or 'support+pool<N>' (N >= 1), optionally "
                f"followed by '-raw', found {tag!r}"
            )
        return cls(
            features="support" if pool is None else "support+pool",
            pool_size=int(pool) if pool else cls.pool_size,
            rectify=match.group(2) is None,
        )


def feature_images(
    support: torch.Tensor,
    unlabeled: torch.Tensor | None,
    features: str,
    pool_size: int,
    seed: int,
    exclude: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """uint8 images ``[M, C, H, W]`` whose activations define the grouping: the ``support`` images,
    plus, for ``support+pool``, up to ``pool_size`` images of ``unlabeled`` drawn with ``seed``
    among the rows not in ``exclude`` (the episode's own support and validation rows: validation
    images choose the fine-tuned state, so they never feed the grouping, even without labels)."""
    if features == "support":
        return support
    if unlabeled is None:
        raise DataError(
            "features: 'support+pool' needs unlabeled target images in the episode's "
            "artifacts['unlabeled'], found none; use features: support"
        )
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(unlabeled), generator=gen)
    if exclude is not None and len(exclude):
        pick = pick[~torch.isin(pick, torch.as_tensor(exclude, dtype=torch.int64))]
    return torch.cat([support, unlabeled[pick[:pool_size]]])


def _support_and_val(e: dict[str, Any]) -> tuple[list[int], list[int]]:
    return [int(i) for i in e["support"]], [int(i) for i in e.get("val") or []]


def episode_indices(e: dict[str, Any]) -> list[int]:
    """An episodes-file entry's support and validation rows of the target pool."""
    support, val = _support_and_val(e)
    return support + val


def episode_digest(e: dict[str, Any]) -> str:
    """A short digest of an episode's support and validation indices (what its patterns and groups
    were computed from)."""
    return hashlib.sha256(json.dumps(list(_support_and_val(e))).encode()).hexdigest()[:16]


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


def episode_activations(
    model: nn.Module,
    ep_file: dict[str, Any],
    pool_x: torch.Tensor,
    spec: ActivationSpec,
    layers: list[str],
    device: torch.device,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The activation file's content for an episodes file ``ep_file`` of one benchmark and k.

    For each role of :data:`kshot.episodes.ROLES` present and each of its episodes, the patterns
    ``{layer: [N, M]}`` of ``layers`` on :func:`feature_images` (support rows of the target pool
    ``pool_x``, plus unlabeled pool images for ``support+pool``), streamed in batches. Every role
    is computed whichever stage reads the file: they cost little next to one fine-tuning.
    ``provenance``: :func:`made_from` (its seed, benchmark and k seed the pool draws).
    """
    roles: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        entries = {}
        for e in ep_file.get(role) or []:
            support = pool_x[torch.as_tensor(e["support"], dtype=torch.int64)]
            p = provenance
            ep_seed = role_seed(p["seed"], p["benchmark"], role, p["k"], int(e["id"]))
            images = feature_images(
                support, pool_x, spec.features, spec.pool_size, ep_seed, episode_indices(e)
            )
            entries[str(int(e["id"]))] = {
                "digest": episode_digest(e),
                "acts": layer_activations(model, images, layers, device, rectify=spec.rectify),
            }
        roles[role] = entries
    return {"format": FORMAT, "made_from": provenance, "layers": list(layers), "roles": roles}


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
