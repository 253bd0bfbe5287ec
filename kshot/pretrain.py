"""Source pre-training and the checkpoint format.

A checkpoint is a plain dict loadable with ``torch.load(weights_only=True)``:
``{"arch": {...}, "state_dict": {...}, "metrics": {...}}``, where ``arch`` names the backbone and its
geometry so that :func:`load_checkpoint` rebuilds the exact network and refuses any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kshot.config import SourceConfig
from kshot.errors import CheckpointError
from kshot.finetune import accuracy, to_input
from kshot.io import load_tensors, save_tensors
from kshot.models import BACKBONES, Backbone, build_backbone


def input_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images scaled to [0, 1]: two ``[C]``."""
    x = images.float().div_(255.0)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


def pretrain(
    src: SourceConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    seed: int,
    device: torch.device,
) -> tuple[Backbone, dict[str, Any]]:
    """Train ``src.backbone`` on the source split; returns the model and its metrics. ``seed``: the
    top-level seed, which the source's own ``seed`` replaces where it is set."""
    seed = src.pretrain_seed(seed)
    torch.manual_seed(seed)
    n_classes = int(train_y.max()) + 1
    model = build_backbone(src.backbone, train_x.shape[1], train_x.shape[-1], n_classes, src.width)
    if src.pretrained == "imagenet":
        model.load_imagenet()  # type: ignore[attr-defined]
    model.set_input_stats(*input_stats(train_x))
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=src.lr, momentum=src.momentum, weight_decay=src.weight_decay)
    steps_per_epoch = -(-len(train_y) // src.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=src.lr, total_steps=src.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(src.epochs):
        order = torch.randperm(len(train_y), generator=gen)
        total = 0.0
        for idx in order.split(src.batch_size):
            x, y = to_input(train_x[idx], device), train_y[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "train_loss": total / len(train_y)})
    metrics = {
        "source_test_acc": accuracy(model, test_x, test_y, device),
        "source_train_acc": accuracy(model, train_x[:10000], train_y[:10000], device),
        "epochs": history,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    return model.cpu(), metrics


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
    # channels-last: 1.5-2x faster convolutions on CPU for these small nets (measured), fine on GPU
    return model.to(memory_format=torch.channels_last), obj.get("metrics", {})
