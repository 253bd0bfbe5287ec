"""DELTA (Li, Xiong, Wang, Huan, Chen, Liu & Xu, "DELTA: Deep Learning Transfer using Feature Map
with Attention for Convolutional Networks", ICLR 2019): fine-tune everything while keeping the
conv feature maps close to the source network's, channel by channel, weighted by how much the
target task needs each channel.

    loss = CE + alpha * sum_l sum_j w_lj * mean_b ||FM_lj(w, x_b) - FM_lj(w*, x_b)||^2
              + beta/2 * ||head||^2

``FM_lj``: output map ``[H, W]`` of channel ``j`` of conv layer ``l`` (the backbone's groupable
Conv2d modules; LeNet: ``conv1``, ``conv2``) for the support image ``x_b``, under the fine-tuned
weights ``w`` and the source weights ``w*``; ``||head||^2`` sums over the new head's weight and bias.

Supervised attention (the paper's Eq. 4): ``w_lj`` measures how much the loss of the source
network on the target task rises when channel ``j`` of layer ``l`` is removed.

Choices the paper leaves open and what kshot chose:
- the maps are the conv modules' outputs (before any activation or pooling), captured by forward
  hooks during the loop's own forward pass; the source maps of the support batch are computed
  once before training (full-batch training feeds the same batch at every step);
- the distance is summed over each channel's pixels and averaged over the batch, without TLlib's
  ``C / (H W)`` and ``1/2`` factors: ``alpha`` absorbs the scale;
- the source network needs a target head to have a target loss: a linear probe fitted for
  ``attention_steps`` full-batch steps at ``attention_lr`` (the shared momentum) on cached
  source features of the support set, starting from the method's new head, kept at its last
  step: only support data is used, never validation or test;
- removing channel ``j`` zeroes its output map (the filter and its bias removed; after a
  BatchNorm that leaves the BatchNorm's constant); the support batch is repeated so that one
  forward pass measures many channels;
- the loss increases ``d_lj`` (mean cross-entropy over the support set) are standardised per layer
  and ``w_l = softmax(z_l / 5)``, as TLlib does (the raw increases' scale depends on the probed
  head's confidence); a layer whose increases are all equal gets uniform weights;
- ``attention: uniform`` gives ``w_lj = 1 / C_l``, the plain feature-map regulariser;
- preparation runs under forked, fixed random state, so with ``alpha = beta = 0`` the run equals
  full fine-tuning exactly.

The supervised attention is a function of the source network, its new head, the support set, the
probe's settings and the episode's seed alone, not of ``alpha``, ``beta`` or the learning rate: a
tuning job, which runs every candidate on the same episodes, computes it once per episode and
reuses it (:data:`ATTENTION_CACHE`, keyed by a digest of all of those inputs).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError, check_choice
from kshot.finetune import Tensors, TrainHook, predict, to_input, train
from kshot.methods.base import EpisodeData, GradientMethod, TrainOverrides
from kshot.models import Backbone

ATTENTIONS = ("supervised", "uniform")
TEMPERATURE = 5.0  # TLlib's softmax temperature on the standardised loss increases
CHANNEL_BATCH = 1024  # images per forward pass when measuring channel removals (bounds memory)
# supervised attentions computed in this process, by digest of their inputs (most recent last)
ATTENTION_CACHE: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
ATTENTION_CACHE_SIZE = 16  # a tuning job's search and selection episodes, with room to spare


@dataclass(frozen=True)
class DeltaOptions(TrainOverrides):
    alpha: float = 0.01
    beta: float = 0.01
    attention: str = "supervised"
    attention_steps: int = 100
    attention_lr: float = 0.1

    def validate(self, where: str) -> None:
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0, found {getattr(self, name)}")
        check_choice(f"{where}.attention", self.attention, ATTENTIONS)
        if self.attention_steps < 1:
            raise ConfigError(
                f"{where}.attention_steps: expected an integer >= 1, found {self.attention_steps}"
            )
        if self.attention_lr <= 0:
            raise ConfigError(f"{where}.attention_lr: expected a number > 0, found {self.attention_lr}")


def conv_layers(model: Backbone) -> list[str]:
    """The groupable Conv2d modules, in forward order: the layers DELTA regularises."""
    modules = dict(model.named_modules())
    return [name for name in model.groupable() if isinstance(modules[name], nn.Conv2d)]


@torch.no_grad()
def feature_maps(model: nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output maps ``{layer: [N, C, H, W]}`` of ``layers`` for the float input ``x`` (one forward)."""
    modules = dict(model.named_modules())
    maps: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, out, name=name: maps.__setitem__(name, out))
        for name in layers
    ]
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
    return maps


@torch.no_grad()
def removal_losses(model: Backbone, layer: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[C]``: the mean cross-entropy of ``model`` on ``(x [N, ...], y [N])`` less its intact loss,
    with output channel ``j`` of conv ``layer`` zeroed, for each ``j``. Several channels share a
    forward pass: the batch is repeated, each copy with one channel removed. Where the model can
    resume its forward at a module before ``layer`` (:meth:`~kshot.models.Backbone.resume_points`,
    ResNet-18's stages), only the rest runs, from that module's input computed once."""
    model.eval()
    modules = dict(model.named_modules())
    resume = model.resume_points()
    start = next((name for name in resume if layer.startswith(f"{name}.")), None)
    run, inputs = model, x
    if start is not None:
        seen: list[torch.Tensor] = []
        handle = modules[start].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            model(x)
        finally:
            handle.remove()
        run, inputs = resume[start], seen[0]
    base = F.cross_entropy(run(inputs), y)
    n, c = len(y), modules[layer].out_channels
    rises = []
    for chunk in torch.arange(c, device=x.device).split(max(1, CHANNEL_BATCH // n)):
        keep = torch.ones(len(chunk), c, device=x.device)
        keep[torch.arange(len(chunk)), chunk] = 0.0
        keep = keep.repeat_interleave(n, 0)[:, :, None, None]  # [len(chunk) * N, C, 1, 1]
        handle = modules[layer].register_forward_hook(lambda m, i, out, keep=keep: out * keep)
        try:
            logits = run(inputs.repeat(len(chunk), *([1] * (inputs.dim() - 1))))
        finally:
            handle.remove()
        loss = F.cross_entropy(logits, y.repeat(len(chunk)), reduction="none").view(len(chunk), n)
        rises.append(loss.mean(1) - base)
    return torch.cat(rises)


def attention_weights(rises: torch.Tensor) -> torch.Tensor:
    """``[C]`` non-negative weights summing to 1 from the loss increases ``rises [C]``:
    ``softmax(standardised(rises) / TEMPERATURE)`` (uniform when all increases are equal)."""
    std = rises.std(unbiased=False) if len(rises) > 1 else rises.new_zeros(())
    z = (rises - rises.mean()) / std if std > 0 else torch.zeros_like(rises)
    return torch.softmax(z / TEMPERATURE, dim=0)


def supervised_attention(
    model: Backbone, layers: list[str], support: Tensors, cfg: FinetuneConfig, device: torch.device
) -> list[torch.Tensor]:
    """Per layer, ``[C_l]`` attention weights from channel removals in the source ``model``
    with a head probed on the support set's cached features (``cfg``: the probe's steps and rate).
    ``model`` is left unchanged."""
    source = copy.deepcopy(model).eval()
    feats = predict(source.features, support[0], device), support[1]  # ([N, D], [N])
    train(source.head, list(source.head.parameters()), feats, feats, cfg, device)
    x, y = to_input(support[0], device), support[1].to(device)
    return [attention_weights(removal_losses(source, name, x, y)) for name in layers]


def attention_key(model: nn.Module, layers: list[str], support: Tensors, *settings: object) -> str:
    """A digest of everything the supervised attention reads: every tensor of ``model``'s state,
    ``layers``, the ``support`` images and labels, and ``settings`` (probe, seed, device)."""
    h = hashlib.blake2b(repr((layers, settings)).encode(), digest_size=20)
    for name, value in [*model.state_dict().items(), ("support_x", support[0]), ("support_y", support[1])]:
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy())
    return h.hexdigest()


class FeatureMapPenalty(TrainHook):
    """``alpha * sum_l sum_j w_lj * mean_b ||FM_lj - FM*_lj||^2 + beta/2 * ||head||^2``.

    ``source_maps``: ``{layer: [N, C, H, W]}`` of the source network on the support batch;
    ``attention``: ``[C_l]`` per layer. The fine-tuned maps are captured by forward hooks,
    registered in :meth:`prepare` and removed in :meth:`finish`, from the loop's training
    forward (modules in training mode; validation passes run in eval mode and are not kept).
    """

    penalises = True
    whole_batch = True  # the source maps are the whole support set's, image for image

    def __init__(
        self,
        model: Backbone,
        source_maps: dict[str, torch.Tensor],
        attention: list[torch.Tensor],
        alpha: float,
        beta: float,
        device: torch.device,
    ) -> None:
        self.model, self.source_maps = model, source_maps
        self.attention = dict(zip(source_maps, attention, strict=True))
        self.alpha, self.beta, self.device = alpha, beta, device
        self.maps: dict[str, torch.Tensor] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _capture(self, name: str):
        def hook(module: nn.Module, inputs: object, out: torch.Tensor) -> None:
            if module.training:
                self.maps[name] = out

        return hook

    def prepare(self, trainable: list[torch.Tensor], linear_update: bool) -> list[torch.Tensor]:
        modules = dict(self.model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._capture(name)) for name in self.source_maps]
        return trainable

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for name, source in self.source_maps.items():
            per_channel = (self.maps.pop(name) - source).pow(2).sum((2, 3)).mean(0)  # [C]
            total = total + self.alpha * (self.attention[name] * per_channel).sum()
        for p in self.model.head.parameters():
            total = total + 0.5 * self.beta * p.pow(2).sum()
        return total

    def finish(self, model: nn.Module) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.maps = [], {}


class Delta(GradientMethod):
    kind = "delta"
    Options = DeltaOptions

    def channel_probe(self) -> FinetuneConfig:
        """How the supervised attention's linear probe is fitted: the options' steps and rate."""
        steps = self.options.attention_steps
        return FinetuneConfig(
            steps=steps, lr=self.options.attention_lr, momentum=self.cfg.momentum, eval_every=steps
        )

    def channel_weights(self, model: Backbone, layers: list[str], ep: EpisodeData) -> list[torch.Tensor]:
        """Per layer in ``layers``, the ``[C_l]`` channel weights the options ask for."""
        if self.options.attention == "uniform":
            modules = dict(model.named_modules())
            return [
                torch.full((modules[n].out_channels,), 1.0 / modules[n].out_channels, device=ep.device)
                for n in layers
            ]
        probe_cfg = self.channel_probe()
        key = attention_key(model, layers, ep.support, probe_cfg, ep.seed, str(ep.device))
        if key not in ATTENTION_CACHE:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ep.seed)
                ATTENTION_CACHE[key] = supervised_attention(model, layers, ep.support, probe_cfg, ep.device)
            while len(ATTENTION_CACHE) > ATTENTION_CACHE_SIZE:
                ATTENTION_CACHE.popitem(last=False)
        ATTENTION_CACHE.move_to_end(key)
        return ATTENTION_CACHE[key]

    def hooks(self, model: Backbone, ep: EpisodeData) -> list[TrainHook]:
        layers = conv_layers(model)
        # the memory layout the loop trains in, so the first step's maps match the source's exactly
        model.to(memory_format=torch.channels_last)
        source_maps = feature_maps(model, layers, to_input(ep.support[0], ep.device))
        attention = self.channel_weights(model, layers, ep)
        return [
            FeatureMapPenalty(model, source_maps, attention, self.options.alpha, self.options.beta, ep.device)
        ]
