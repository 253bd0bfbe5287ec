"""Source pre-training: the network every method adapts (its file: :mod:`kshot.files.checkpoint`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kshot.config import SourceConfig
from kshot.finetune import accuracy, to_input
from kshot.models import Backbone, build_backbone


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
    weights: tuple[dict[str, torch.Tensor], str] | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """Train ``src.backbone`` on the source split; returns the model and its metrics. ``seed``: the
    top-level seed, which the source's own ``seed`` replaces where it is set. ``weights``: a
    torchvision state dict to start from and the name of its file (``src.pretrained``'s content),
    or ``None``. With ``src.epochs == 0`` the start is kept as it is and only the source head is
    fitted (a linear probe on the source split), so the source accuracy still means something."""
    seed = src.pretrain_seed(seed)
    torch.manual_seed(seed)
    n_classes = int(train_y.max()) + 1
    model = build_backbone(src.backbone, train_x.shape[1], train_x.shape[-1], n_classes, src.width)
    if weights is not None:
        model.load_torchvision(*weights)  # type: ignore[attr-defined]
    elif src.pretrained == "imagenet":
        model.load_imagenet()  # type: ignore[attr-defined]
    model.set_input_stats(*input_stats(train_x))
    model.to(device).train()
    if src.epochs == 0:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        model.head.requires_grad_(True)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trained, lr=src.lr, momentum=src.momentum, weight_decay=src.weight_decay)
    epochs = max(src.epochs, 1)  # epochs 0: one epoch of the head alone
    steps_per_epoch = -(-len(train_y) // src.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=src.lr, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
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
    model.requires_grad_(True)
    metrics = {
        "source_test_acc": accuracy(model, test_x, test_y, device),
        "source_train_acc": accuracy(model, train_x[:10000], train_y[:10000], device),
        "epochs": history,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    return model.cpu(), metrics
