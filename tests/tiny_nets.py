"""Tiny models and data shared by the grouping tests (made in memory, seeded, CPU, milliseconds)."""

from __future__ import annotations

import torch

from kshot.models import LeNet


def tiny_lenet(n_classes: int = 3, seed: int = 0) -> LeNet:
    """A LeNet at 16x16 with width 0.25: conv1 5 filters, conv2 12 filters, fc1 125 units."""
    torch.manual_seed(seed)
    return LeNet(in_channels=1, image_size=16, n_classes=n_classes, width=0.25)


def tiny_images(n: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images ``[n, 1, 16, 16]``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 16, 16), generator=gen, dtype=torch.uint8)


def tiny_task(n_classes: int = 3, per_class: int = 2, seed: int = 0):
    """``(images [C*per_class, 1, 16, 16] uint8, labels [C*per_class] int64)``."""
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return tiny_images(len(labels), seed), labels
