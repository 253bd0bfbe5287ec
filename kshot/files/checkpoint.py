"""The checkpoint of a source network.

A checkpoint is a plain dict loadable with ``torch.load(weights_only=True)``:
``{"arch": {...}, "state_dict": {...}, "metrics": {...}}``, where ``arch`` names the backbone and its
geometry so that :func:`load_checkpoint` rebuilds the exact network and refuses any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kshot.config import SourceConfig
from kshot.errors import CheckpointError
from kshot.io import load_tensors, save_tensors
from kshot.models import BACKBONES, Backbone, build_backbone


def save_checkpoint(
    path: Path, model: Backbone, src: SourceConfig, image_size: int, metrics: dict[str, Any]
) -> None:
    """Write ``model`` with the architecture description :func:`load_checkpoint` needs."""
    arch = {
        "backbone": src.backbone,
        "in_channels": int(model.input_mean.shape[1]),
        "image_size": int(image_size),
        "n_classes": int(model.head.out_features),
        "width": float(src.width),
    }
    save_tensors(path, {"arch": arch, "state_dict": model.state_dict(), "metrics": metrics})


def checkpoint_arch(obj: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``arch`` description of the checkpoint content ``obj`` (loaded from ``path``); raises
    :class:`CheckpointError` when it lacks its description or its weights."""
    arch = obj.get("arch")
    if not isinstance(arch, dict) or "state_dict" not in obj:
        raise CheckpointError(
            f"checkpoint '{path}': expected keys 'arch' and 'state_dict', found {sorted(obj)}"
        )
    return arch


def load_checkpoint(path: Path) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights.

    Raises
    :class:`CheckpointError` naming the file for a corrupt file, an unknown or mismatched
    architecture, or unsafe content.
    """
    obj = load_tensors(path, what="checkpoint")
    arch = checkpoint_arch(obj, path)
    if arch.get("backbone") not in BACKBONES:
        raise CheckpointError(
            f"checkpoint '{path}': expected a backbone in {sorted(BACKBONES)}, found {arch.get('backbone')!r}"
        )
    try:
        model = build_backbone(
            arch["backbone"],
            arch["in_channels"],
            arch["image_size"],
            arch["n_classes"],
            arch["width"],
        )
        model.load_state_dict(obj["state_dict"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        detail = " ".join(str(err).split())  # load_state_dict lists every missing key: keep the start
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise CheckpointError(
            f"checkpoint '{path}': expected weights matching its description {arch}, "
            f"found another architecture ({type(err).__name__}: {detail})"
        ) from err
    # channels-last: faster convolutions on CPU for these small nets (benchmarks/README.md), fine on GPU
    return model.to(memory_format=torch.channels_last), obj.get("metrics", {})


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A local weights file (``sources.<name>.pretrained``): a torchvision state dict as
    ``torch.save`` writes it (ImageNet's ``resnet18-*.pth`` or one of the user's), or a dict holding
    one under ``state_dict``, loaded safely (``weights_only``). Returns the tensors and the name the
    model's errors use for the file."""
    where = f"weights file '{path}'"
    obj = load_tensors(path, what="weights file")
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{where}: expected a state dict (parameter name -> tensor), found {type(obj).__name__}"
        )
    return state, where


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
