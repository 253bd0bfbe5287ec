"""The fine-tuning loop shared by every gradient-based method.

Full-batch SGD with momentum on the support set (k-shot support sets are tiny, so one batch is the
whole set). Every ``eval_every`` steps the validation accuracy is measured and the best state so far
is kept (later steps win ties); the test set is only ever evaluated on the selected state. A method
plugs in through three hooks: which parameters train, an optional penalty added to the loss (L2-SP),
and an optional gradient transform applied after ``backward()`` (the group-shared gradient).
BatchNorm layers, where a backbone has them, stay in eval mode: batch statistics of a 5-image
support set are noise, so the source running statistics are kept (a documented choice).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError
from kshot.optim import SGD
from kshot.shared_grad import GroupedGradient


def resolve_device(choice: str) -> torch.device:
    """``'auto'`` picks CUDA when present, else CPU; ``'cuda'`` without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: expected a CUDA GPU for 'cuda', found none; use 'auto' or 'cpu'")
    return torch.device(choice)


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float ``[N, C, H, W]`` in [0, 1] on ``device``, channels-last
    (1.5x faster convolutions on CPU for LeNet-sized nets, measured). Float inputs (e.g. cached
    features ``[N, D]``) pass through unchanged."""
    if images.dtype != torch.uint8:
        return images.to(device)
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """Apply ``fn`` to uint8 ``images`` in batches (bounded memory); returns outputs on CPU."""
    outs = [fn(to_input(chunk, device)).cpu() for chunk in images.split(batch_size)]
    return torch.cat(outs)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images [N, C, H, W]``, ``labels [N]``."""
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)
    logits = predict(model, images, device)
    model.train(was_training)
    return float((logits.argmax(1) == labels).float().mean())


def freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@dataclass
class TrainResult:
    """What one fine-tuning run produced; ``model`` holds the validation-selected state."""

    model: nn.Module
    val_acc: float
    best_step: int
    steps_run: int
    val_curve: list[list[float]] = field(default_factory=list)
    loss_curve: list[list[float]] = field(default_factory=list)
    diverged_step: int | None = None
    train_time_s: float = 0.0


Penalty = Callable[[nn.Module], torch.Tensor]
GradHook = Callable[[nn.Module], None]


def train(
    model: nn.Module,
    trainable: list[torch.Tensor],
    support: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: FinetuneConfig,
    device: torch.device,
    penalty: Penalty | None = None,
    grad_hook: GradHook | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``support`` and return the validation-selected state.

    ``support`` and ``val`` are ``(uint8 images [N, C, H, W], int64 labels [N])``. Parameters not in
    ``trainable`` are frozen for the run. A non-finite loss stops the run and records its step.
    """
    start = time.perf_counter()
    # Momentum SGD without weight decay or penalty: coarsely grouped linear layers can train through
    # their group deltas, the same updates for less work (kshot.shared_grad); folded back at the end.
    deltas = isinstance(grad_hook, GroupedGradient) and penalty is None and cfg.weight_decay == 0
    if deltas:
        trainable = grad_hook.attach(trainable)
    try:
        model.to(memory_format=torch.channels_last)
        wanted = {id(p) for p in trainable}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        x = to_input(support[0], device)
        y = support[1].to(device)
        opt = SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        best_state, best_acc, best_step = None, -1.0, 0
        result = TrainResult(model=model, val_acc=0.0, best_step=0, steps_run=0)
        model.train()
        freeze_batchnorm(model)
        for step in range(1, cfg.steps + 1):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if penalty is not None:
                loss = loss + penalty(model)
            if not math.isfinite(float(loss.detach())):
                result.diverged_step = step
                break
            loss.backward()
            if grad_hook is not None:
                grad_hook(model)
            opt.step()
            result.steps_run = step
            if step % cfg.eval_every == 0 or step == cfg.steps:
                result.loss_curve.append([step, float(loss.detach())])
                acc = accuracy(model, val[0], val[1], device)
                result.val_curve.append([step, acc])
                if acc >= best_acc:
                    best_acc, best_step = acc, step
                    best_state = copy.deepcopy(model.state_dict())
                model.train()
                freeze_batchnorm(model)
        if best_state is not None:
            model.load_state_dict(best_state)
            result.val_acc, result.best_step = best_acc, best_step
    finally:
        if deltas:
            grad_hook.detach()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    if best_state is None:  # no validation measured (diverged at once): the state as it is
        result.val_acc = accuracy(model, *val, device)
    result.train_time_s = time.perf_counter() - start
    return result
