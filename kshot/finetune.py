"""The fine-tuning loop shared by every gradient-based method.

Full-batch SGD with momentum on the support set (k-shot support sets are tiny, so one batch is the
whole set). Every ``eval_every`` steps the validation accuracy is measured and the best state so far
is kept (later steps win ties); the test set is only ever evaluated on the selected state. A method
chooses which parameters train and changes the loop through :class:`TrainHook` objects: a penalty
added to the loss (L2-SP), a gradient transform after ``backward()`` (the group-shared gradient of
:mod:`kshot.shared_grad`), tensors trained in the parameters' place and folded back at the end. The
loop knows no method.
BatchNorm layers, where a backbone has them, stay in eval mode: batch statistics of a 5-image
support set are noise, so the source running statistics are kept (a documented choice).

**The hybrid loss** (``triplet_weight`` > 0): cross-entropy plus ``triplet_weight`` times a triplet
loss on the penultimate features (``model.features``), as secondary sources report the paper's
loss; its weighting and mining are not stated, so kshot's choices are: features L2-normalised (the
margin is then on a fixed scale), Euclidean distance, batch-hard mining over the whole support set
(each anchor's farthest positive and nearest negative, Hermans et al. 2017), torch's
``triplet_margin_loss`` on those triplets. At k = 1 no anchor has a positive, so it is an error
naming ``triplet_weight`` rather than a silent cross-entropy run. A head trained on fixed features
(the linear probe) has no features to shape: the term is constant there and is left out.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError
from kshot.optim import SGD

Tensors = tuple[torch.Tensor, torch.Tensor]  # (uint8 images [N, C, H, W], int64 labels [N])


def resolve_device(choice: str) -> torch.device:
    """``'auto'`` picks CUDA when present, else CPU; ``'cuda'`` without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: expected a CUDA GPU for 'cuda', found none; use 'auto' or 'cpu'")
    return torch.device(choice)


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float ``[N, C, H, W]`` in [0, 1] on ``device``, channels-last
    (faster convolutions on CPU for LeNet-sized nets; ``benchmarks/README.md``). Float inputs (e.g. cached
    features ``[N, D]``) pass through unchanged."""
    if images.dtype != torch.uint8:
        return images.to(device)
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


# Memory budgets, in input elements (images x channels x pixels) fed at once: a batch evaluated
# without gradients, and a training micro-batch (whose activations are kept for backward). LeNet-
# and 32x32 ResNet-sized inputs always fit in one batch of 256 / one support set of up to 1,024
# images; a ResNet-18 at 224x224 gets batches of 27 / micro-batches of 6 images (about 150 MiB of
# activations), which keeps a job on a 4,000-photo target under 2 GiB (benchmarks/README.md).
EVAL_ELEMENTS = 2**22
TRAIN_ELEMENTS = 2**20


def images_per_batch(images: torch.Tensor, budget: int, cap: int = 256) -> int:
    """How many of ``images [N, ...]`` fit in ``budget`` input elements, between 1 and ``cap``."""
    per_image = max(1, images[0].numel()) if len(images) else 1
    return max(1, min(cap, budget // per_image))


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    device: torch.device,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Apply ``fn`` to uint8 ``images`` in batches (bounded memory: at most 256 images or
    ``EVAL_ELEMENTS`` input elements a batch); returns outputs on CPU."""
    size = batch_size or images_per_batch(images, EVAL_ELEMENTS)
    outs = [fn(to_input(chunk, device)).cpu() for chunk in images.split(size)]
    return torch.cat(outs)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images [N, C, H, W]``, ``labels [N]``."""
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)
    logits = predict(model, images, device)
    model.train(was_training)
    return float((logits.argmax(1) == labels).float().mean())


def check_triplet(labels: torch.Tensor, weight: float) -> None:
    """Raise :class:`ConfigError` when a triplet term of ``weight`` is asked for a support set with
    ``labels [N]`` in which no class has two images (k = 1: no positive pair)."""
    if weight > 0 and int(torch.bincount(labels).max()) < 2:
        raise ConfigError(
            f"triplet_weight: expected 0 at k = 1 (a triplet needs two support images of a class), "
            f"found {weight}"
        )


def triplet_term(feats: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss of features ``feats [N, D]`` with ``labels [N]``: each anchor with a
    positive is paired with its farthest positive and nearest negative (L2-normalised features,
    Euclidean distance), and torch's ``triplet_margin_loss`` averages ``relu(d_ap - d_an +
    margin)`` over them. A scalar tensor."""
    z = F.normalize(feats, dim=1)
    dist = torch.cdist(z, z)  # [N, N]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    anchors = pos_mask.any(1) & neg_mask.any(1)
    far_pos = dist.masked_fill(~pos_mask, -1.0).argmax(1)  # [N]
    near_neg = dist.masked_fill(~neg_mask, math.inf).argmin(1)  # [N]
    return F.triplet_margin_loss(z[anchors], z[far_pos[anchors]], z[near_neg[anchors]], margin=margin)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
    """Cross-entropy of ``model`` on ``(x, y)``, plus the triplet term where one is asked for and
    the model has features to shape."""
    features = getattr(model, "features", None)
    if cfg.triplet_weight == 0 or features is None:
        return F.cross_entropy(model(x), y)
    feats = features(x)
    return F.cross_entropy(model.head(feats), y) + cfg.triplet_weight * triplet_term(
        feats, y, cfg.triplet_margin
    )


def micro_batches(support: Tensors, hooks: Sequence[TrainHook], cfg: FinetuneConfig) -> list[Tensors]:
    """The support set as the micro-batches one training step feeds (one, unless its images exceed
    ``TRAIN_ELEMENTS``: photo-sized images). A step's gradient is the same either way (BatchNorm
    is frozen, so an example's loss does not depend on its batch); a whole-batch term (a hook's
    :attr:`~TrainHook.whole_batch` penalty, the triplet term's mining) cannot be split, and is an
    error then. A method that draws random numbers per example (AdaFilter's gates) draws them in
    another order over micro-batches: the same distribution, other numbers."""
    size = images_per_batch(support[0], TRAIN_ELEMENTS, cap=max(1, len(support[1])))
    if size >= len(support[1]):
        return [support]
    whole = [type(h).__name__ for h in hooks if h.whole_batch]
    whole += ["the triplet term (triplet_weight)"] if cfg.triplet_weight > 0 else []
    if whole:
        shape = "x".join(str(d) for d in support[0].shape[1:])
        raise ConfigError(
            f"finetune: the support set of {len(support[1])} images of {shape} is fed in micro-batches "
            f"of {size} to bound memory, and {', '.join(whole)} needs the whole batch at once; "
            "expected smaller images or fewer support images for this method"
        )
    return list(zip(support[0].split(size), support[1].split(size), strict=True))


def _step_loss(
    model: nn.Module, chunks: list[Tensors], hooks: Sequence[TrainHook], cfg: FinetuneConfig
) -> torch.Tensor | None:
    """Forward and backward of one step over ``chunks`` (model inputs and labels on the device);
    the loss, or ``None`` where it is not finite (the step is abandoned), the task loss checked
    before any penalty reads the step's features (BSS's singular values of non-finite features
    raise). With several chunks each contributes its share ``n_c / N`` of the mean loss and of the
    penalties (a mean over examples plus a constant, so the shares add up to the whole batch's)."""
    total = sum(len(c[1]) for c in chunks)
    loss_sum = None
    for x, y in chunks:
        loss = _loss(model, x, y, cfg)
        if not math.isfinite(float(loss.detach())):
            return None
        penalised = False
        for h in hooks:
            term = h.penalty(model)
            if term is not None:
                loss, penalised = loss + term, True
        if penalised and not math.isfinite(float(loss.detach())):
            return None
        share = loss if len(chunks) == 1 else loss * (len(y) / total)
        share.backward()
        loss_sum = share.detach() if loss_sum is None else loss_sum + share.detach()
    return loss_sum


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


class TrainHook:
    """How a method changes :func:`train`; this base changes nothing.

    :meth:`prepare` runs once before the first step, :meth:`penalty` at every step after the
    loss, :meth:`after_backward` between ``backward()`` and the optimiser step, :meth:`after_step`
    after it, :meth:`finish` once at the end, also when the run fails.
    """

    penalises = False  # whether :meth:`penalty` adds a term to the loss
    # whether the penalty is a function of the batch as a whole (e.g. its singular values), not a
    # mean over examples plus a constant: such a penalty cannot be split over micro-batches
    whole_batch = False
    # whether the hook reads the layers' own modules and weights during training, so that no hook
    # may swap them for a reparametrisation (the update is then made on the weights themselves)
    reads_weights = False

    def prepare(self, trainable: list[torch.Tensor], linear_update: bool) -> list[torch.Tensor]:
        """The tensors the optimiser trains instead of ``trainable``. ``linear_update``: the update
        is momentum SGD linear in the loss gradient and blind to the weights (no weight decay, no
        penalty), so a hook may train a reparametrisation giving the same updates."""
        return trainable

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the loss (``None``: nothing)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Change the gradients of ``model`` in place."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Look at ``model`` after update ``step`` (1, 2, ...), before any validation."""

    def finish(self, model: nn.Module) -> None:
        """Undo what :meth:`prepare` did (the parameters then hold the trained values)."""


def train(
    model: nn.Module,
    trainable: list[torch.Tensor],
    support: Tensors,
    val: Tensors,
    cfg: FinetuneConfig,
    device: torch.device,
    hooks: Sequence[TrainHook] = (),
) -> TrainResult:
    """Fine-tune ``model`` in place on ``support`` and return the validation-selected state.

    ``support`` and ``val`` are ``(uint8 images [N, C, H, W], int64 labels [N])``. Parameters not in
    ``trainable`` are frozen for the run. A non-finite loss stops the run and records its step.
    """
    start = time.perf_counter()
    linear_update = cfg.weight_decay == 0 and not any(h.penalises or h.reads_weights for h in hooks)
    prepared: list[TrainHook] = []
    try:
        for h in hooks:
            trainable = h.prepare(trainable, linear_update)
            prepared.append(h)
        model.to(memory_format=torch.channels_last)
        wanted = {id(p) for p in trainable}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        check_triplet(support[1], cfg.triplet_weight)
        chunks = [(to_input(x, device), y.to(device)) for x, y in micro_batches(support, hooks, cfg)]
        opt = SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        best_state, best_acc, best_step = None, -1.0, 0
        result = TrainResult(model=model, val_acc=0.0, best_step=0, steps_run=0)
        model.train()
        freeze_batchnorm(model)
        for step in range(1, cfg.steps + 1):
            opt.zero_grad()
            loss = _step_loss(model, chunks, hooks, cfg)
            if loss is None:
                result.diverged_step = step
                break
            for h in hooks:
                h.after_backward(model)
            opt.step()
            for h in hooks:
                h.after_step(model, step)
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
        for h in reversed(prepared):
            h.finish(model)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    if best_state is None:  # no validation measured (diverged at once): the state as it is
        result.val_acc = accuracy(model, *val, device)
    result.train_time_s = time.perf_counter() - start
    return result


@torch.no_grad()
def class_centroids(model: nn.Module, support: Tensors, n_classes: int, device: torch.device) -> torch.Tensor:
    """L2-normalised mean penultimate feature (``model.features``) per class: ``[n_classes, D]``."""
    model.eval()
    feats = F.normalize(predict(model.features, support[0], device), dim=1)
    sums = torch.zeros(n_classes, feats.shape[1]).index_add_(0, support[1], feats)
    return F.normalize(sums, dim=1)


def init_head(
    model: nn.Module, n_classes: int, seed: int, how: str, support: Tensors, device: torch.device
) -> None:
    """Replace the source head of a :class:`kshot.models.Backbone` by a target head of
    ``n_classes`` outputs.

    ``random``: torch's default init under ``seed``; ``zero``: all zeros; ``centroid``: weight rows
    are the normalised class centroids of ``support`` scaled to the default init's norm (imprinting).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.replace_head(n_classes)
    head = model.head
    with torch.no_grad():
        if how == "zero":
            head.weight.zero_()
            head.bias.zero_()
        elif how == "centroid":
            scale = head.weight.norm(dim=1).mean()
            centroids = class_centroids(model, support, n_classes, device)
            head.weight.copy_(centroids.to(head.weight.device) * scale)
            head.bias.zero_()
