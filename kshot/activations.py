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

Which images and whether rectified is a :class:`kshot.config.ActivationSpec`. The pipeline's
activation file (:mod:`kshot.files.activations`) holds the patterns of every groupable layer on
every episode of one benchmark and k for one spec.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kshot.config import ActivationSpec
from kshot.episodes import ROLES, episode_indices, role_seed, seed_name
from kshot.errors import ConfigError, DataError, suggest
from kshot.finetune import EVAL_ELEMENTS, images_per_batch, to_input


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
    batch_size: int | None = None,
    rectify: bool = True,
) -> dict[str, torch.Tensor]:
    """Activation patterns of the neurons of ``layers`` on uint8 ``images [M, C, H, W]``.

    Returns ``{layer: float32 [N_layer, M]}`` on CPU. Images are streamed in batches of
    ``batch_size`` (default: :func:`kshot.finetune.predict`'s, 256 or fewer photo-sized images)
    and each hook pools its map to ``[B, N]`` at once, so memory is bounded by one
    batch's feature maps whatever ``M``. The model runs in eval mode (BatchNorm uses its running
    statistics) and its previous mode is restored. If the model has a ``features`` method (every
    :class:`kshot.models.Backbone`), only it runs: the head is never grouped.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ConfigError(f"images: expected uint8 [M, C, H, W], found {images.dtype} {list(images.shape)}")
    if len(images) == 0:
        raise ConfigError("images: expected at least one image to compute activations, found 0")
    batch_size = batch_size or images_per_batch(images, EVAL_ELEMENTS)
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


def episode_patterns(
    model: nn.Module,
    ep_file: dict[str, Any],
    pool_x: torch.Tensor,
    spec: ActivationSpec,
    layers: list[str],
    device: torch.device,
    seed: int,
) -> dict[str, list[tuple[dict[str, Any], dict[str, torch.Tensor]]]]:
    """The patterns ``{layer: [N, M]}`` of ``layers`` on every episode of every role of
    :data:`~kshot.episodes.ROLES` of an episodes file's content ``ep_file``: per role, pairs of an
    episode entry and its patterns, on :func:`feature_images` (the entry's support rows of the target
    pool ``pool_x``, plus unlabeled pool images drawn with the episode's seed for ``support+pool``).
    Every role is computed whichever stage reads them: they cost little next to one fine-tuning."""
    benchmark, k = seed_name(ep_file, ep_file["benchmark"]), int(ep_file["k"])
    roles = {}
    for role in ROLES:
        pairs = []
        for e in ep_file.get(role) or []:
            support = pool_x[torch.as_tensor(e["support"], dtype=torch.int64)]
            ep_seed = role_seed(seed, benchmark, role, k, int(e["id"]))
            images = feature_images(
                support, pool_x, spec.features, spec.pool_size, ep_seed, episode_indices(e)
            )
            pairs.append((e, layer_activations(model, images, layers, device, rectify=spec.rectify)))
        roles[role] = pairs
    return roles
