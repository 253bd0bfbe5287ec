"""AdaFilter (Guo, Li, Wang and Rosing, "AdaFilter: Adaptive Filter Fine-tuning for Deep Transfer
Learning", AAAI 2020): every conv filter exists twice, frozen as pre-trained and trainable as a
fine-tuned copy, and a recurrent gate picks per example and per filter which of the two is used.

For conv layer ``l`` with input ``x_l [B, C_in, H, W]``, frozen filters ``W*_l`` and their fine-tuned
copy ``W_l`` (equal to ``W*_l`` at the start)::

    out_l = g_l * N_l(conv(x_l, W_l)) + (1 - g_l) * N*_l(conv(x_l, W*_l))   g_l in {0, 1}^[B, C_out]
    z_l = P_l(mean_hw(x_l))                        P_l: Linear(C_in -> hidden)
    (h_l, c_l) = LSTMCell(z_l, (h_{l-1}, c_{l-1}))   one cell shared by all layers, (h_0, c_0) = 0
    a_l = Q_l(h_l)                                 Q_l: Linear(hidden -> C_out), the gate logits

``N_l``/``N*_l`` are the branches' own BatchNorms ("gated BatchNorm"; identity where the conv has no
BN). Training: ``g = hard + s - stop_grad(s)`` with ``s = sigmoid((a + log u - log(1 - u)) / tau)``,
``u ~ U(0, 1)`` and ``hard = [s > 0.5]`` (the straight-through binary Gumbel-softmax; the difference of
two Gumbel samples is the logistic noise used here). Evaluation: ``g = [a > 0]``, no noise.

Choices the paper leaves open, and kshot's:
- gate input: the global average pool of the conv's input, i.e. the previous layer's activations
  (the normalised image for the first conv, the block input for a ResNet shortcut conv);
- widths differ between layers, so each layer has its own input projection ``P_l`` and output
  projection ``Q_l`` around the one shared ``LSTMCell`` of ``hidden`` units; the state runs through
  the convs in call order (registration order in every kshot backbone) and restarts at the first;
- gradients flow end to end, also from the gate into the activations it reads;
- ``tau`` (``temperature``) only shapes the backward pass: the hard forward is ``[a + noise > 0]``;
- ``Q_l``'s bias starts at ``gate_init`` (0: no prior preference). At the start both branches are
  equal, so the gate's decision changes nothing and it learns once the fine-tuned filters move;
- BatchNorm: each branch keeps its own copy; the fine-tuned copy trains its affine parameters, both
  keep the source running statistics (kshot's loop holds BN in eval mode); the gate mixes after BN;
- fully connected layers (LeNet's and WideCNN's ``fc1``) are not gated and fine-tune as usual; the
  new head trains as usual;
- the gate trains with the method's learning rate (kshot's SGD has one);
- ``force_gate`` (``pretrained``/``finetuned``) fixes every gate, for diagnostics: the gate and the
  unused branch are then left out of the trained parameters;
- ``extra["gate_open"]``: per conv layer, the fraction of gates choosing the fine-tuned filter on the
  test images at evaluation (a diagnostic; it selects nothing).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kshot.errors import ConfigError, check_choice
from kshot.methods.base import EpisodeData, EpisodeResult, GradientMethod, TrainOverrides
from kshot.models import Backbone

FORCE_CHOICES = ("pretrained", "finetuned")


@dataclass(frozen=True)
class AdaFilterOptions(TrainOverrides):
    hidden: int = 32
    temperature: float = 1.0
    gate_init: float = 0.0
    force_gate: str | None = None

    def validate(self, where: str) -> None:
        if self.hidden < 1:
            raise ConfigError(f"{where}.hidden: expected an integer >= 1, found {self.hidden}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"{where}.temperature: expected a number > 0, found {self.temperature}")
        if not math.isfinite(self.gate_init):
            raise ConfigError(f"{where}.gate_init: expected a finite number, found {self.gate_init}")
        if self.force_gate is not None:
            check_choice(f"{where}.force_gate", self.force_gate, FORCE_CHOICES)


class GateController(nn.Module):
    """The shared recurrent gate: per-layer projections around one ``LSTMCell``. Holds the
    recurrent state of the forward pass in progress (and, while ``tally`` is a dict, the summed
    gates per layer)."""

    def __init__(
        self, names: list[str], widths: list[tuple[int, int]], hidden: int, gate_init: float, tau: float
    ) -> None:
        super().__init__()
        self.names, self.tau = names, tau
        self.inp = nn.ModuleList(nn.Linear(c_in, hidden) for c_in, _ in widths)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.out = nn.ModuleList(nn.Linear(hidden, c_out) for _, c_out in widths)
        with torch.no_grad():
            for q in self.out:
                q.bias.fill_(gate_init)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.tally: dict[int, list[float]] | None = None

    def forward(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Gates ``[B, C_out]`` in {0, 1} of conv ``layer`` for its input ``x [B, C_in, H, W]``."""
        if layer == 0:
            self.state = None
        self.state = self.cell(self.inp[layer](x.mean(dim=(2, 3))), self.state)  # ([B, hidden],) * 2
        logits = self.out[layer](self.state[0])  # [B, C_out]
        if layer == len(self.inp) - 1:
            self.state = None  # drop the graph it references
        if not self.training:
            gate = (logits > 0).to(logits.dtype)
            if self.tally is not None:
                total = self.tally.setdefault(layer, [0.0, 0.0])
                total[0] += float(gate.sum())
                total[1] += gate.numel()
            return gate
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.tau)
        # hard + (soft - soft) is exactly hard in the forward pass; the gradient is the soft one's
        return (soft > 0.5).to(soft.dtype) + (soft - soft.detach())


class GatedConv(nn.Module):
    """A conv (with its BatchNorm, where one follows) as a frozen ``source`` branch and a trainable
    ``tuned`` branch, mixed per example and output channel by the controller's gate."""

    def __init__(self, branch: nn.Module, index: int, controller: GateController, force: str | None):
        super().__init__()
        self.tuned = branch
        self.source = copy.deepcopy(branch).requires_grad_(False)
        self.index, self.force = index, force
        # a plain attribute, not a submodule: the model registers the shared controller once
        object.__setattr__(self, "controller", controller)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.force == "pretrained":
            return self.source(x)
        if self.force == "finetuned":
            return self.tuned(x)
        g = self.controller(self.index, x)[:, :, None, None]  # [B, C_out, 1, 1]
        return g * self.tuned(x) + (1 - g) * self.source(x)


def wrap(model: Backbone, hidden: int, gate_init: float, tau: float, force: str | None) -> GateController:
    """Replace every ``Conv2d`` of ``model`` (with the ``BatchNorm2d`` registered right after it, which
    becomes an ``Identity``) by a :class:`GatedConv`; the controller is registered as
    ``model.adafilter_gate`` and returned. Its parameters draw from torch's global generator."""
    modules = dict(model.named_modules())
    order = [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    pairs: dict[str, str | None] = {}  # conv name -> its BatchNorm's name
    for name, nxt in zip(order, [*order[1:], None], strict=True):
        conv = modules[name]
        if isinstance(conv, nn.Conv2d):
            bn = modules.get(nxt or "")
            fits = isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
            pairs[name] = nxt if fits else None
    names = list(pairs)
    widths = [(modules[n].in_channels, modules[n].out_channels) for n in names]
    controller = GateController(names, widths, hidden, gate_init, tau)
    for i, (name, bn_name) in enumerate(pairs.items()):
        branch = modules[name]
        if bn_name is not None:
            branch = nn.Sequential(branch, modules[bn_name])
            _replace(model, bn_name, nn.Identity())
        _replace(model, name, GatedConv(branch, i, controller, force))
    model.adafilter_gate = controller
    return controller


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


class AdaFilter(GradientMethod):
    kind = "adafilter"
    Options = AdaFilterOptions

    def run(self, ep: EpisodeData) -> EpisodeResult:
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ep.seed)
            wrap(ep.model, o.hidden, o.gate_init, o.temperature, o.force_gate)
        return super().run(ep)

    def trainable(self, model: Backbone) -> list[torch.Tensor]:
        frozen = set()
        for m in model.modules():
            if isinstance(m, GatedConv):
                frozen |= {id(p) for p in m.source.parameters()}
                if m.force == "pretrained":
                    frozen |= {id(p) for p in m.tuned.parameters()}
        if self.options.force_gate is not None:
            frozen |= {id(p) for p in model.adafilter_gate.parameters()}
        return [p for p in model.parameters() if id(p) not in frozen]

    def test_accuracy(self, model: Backbone, ep: EpisodeData) -> float:
        """The test accuracy, counting the open gates of its pass over the test images."""
        model.adafilter_gate.tally = {}
        try:
            return super().test_accuracy(model, ep)
        finally:
            self._tally, model.adafilter_gate.tally = model.adafilter_gate.tally, None

    def extra(self, model: Backbone, ep: EpisodeData) -> dict[str, Any]:
        controller: GateController = model.adafilter_gate
        if self.options.force_gate is not None:
            value = float(self.options.force_gate == "finetuned")
            return {"gate_open": dict.fromkeys(controller.names, value)}
        tally = self._tally
        return {"gate_open": {n: tally[i][0] / tally[i][1] for i, n in enumerate(controller.names)}}
