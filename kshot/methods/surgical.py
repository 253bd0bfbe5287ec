"""Surgical fine-tuning (Lee, Chen, Tajwar, Kumar, Yao, Liang & Finn, "Surgical Fine-Tuning
Improves Adaptation to Distribution Shifts", ICLR 2023); with ``layers: [last]`` it is the usual
last-block fine-tuning.

Only a chosen subset of the backbone trains, with the new head: the cross-entropy on the support
set is minimised over ``{theta_l : l in layers} ∪ {W_head, b_head}``, every other parameter frozen
at its source value. The paper finds the best block depends on the shift (input-level shifts favour
the first block, output-level shifts the last).

Choices the paper leaves open and what kshot chose:
- a block is named as in the backbone: a groupable module (``groupable()``: a Conv2d or Linear,
  e.g. LeNet's ``conv1``, ``fc1``) or any module containing one (e.g. ResNet's ``body.layer4``,
  which brings its BatchNorm affine parameters along); ``last`` is the last groupable module
  (LeNet: ``fc1``; ResNet-18: its last convolution);
- the new head always trains (a frozen random head would not be fine-tuning);
- the paper tunes which block per shift on held-out data; here ``layers`` is an option, so the
  tuning stage can search it like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kshot.errors import ConfigError, unknown
from kshot.methods.base import GradientMethod, TrainOverrides
from kshot.models import Backbone


@dataclass(frozen=True)
class SurgicalOptions(TrainOverrides):
    layers: list[str] = field(default_factory=lambda: ["last"])

    def validate(self, where: str) -> None:
        if not self.layers:
            raise ConfigError(f"{where}.layers: expected at least one layer name, found []")


def block_names(model: Backbone) -> list[str]:
    """Names a block may take: each groupable module and every module above one (head excluded)."""
    names: set[str] = set()
    for name in model.groupable():
        parts = name.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(names)


def surgical_parameters(model: Backbone, layers: list[str], where: str) -> list[torch.Tensor]:
    """The parameters of the modules named in ``layers`` (``last``: the last groupable module),
    then the head's. An unknown name is a :class:`ConfigError` naming ``where`` and the valid names."""
    valid = block_names(model)
    chosen = []
    for name in layers:
        if name == "last":
            name = model.groupable()[-1]
        elif name not in valid:
            raise unknown(where, name, ["last", *valid])
        chosen.append(name)
    prefixes = tuple(f"{name}." for name in chosen)
    picked = [p for n, p in model.named_parameters() if n.startswith(prefixes)]
    return picked + list(model.head.parameters())


class Surgical(GradientMethod):
    kind = "surgical"
    Options = SurgicalOptions

    def trainable(self, model: Backbone) -> list[torch.Tensor]:
        return surgical_parameters(model, self.options.layers, f"{self.where}.layers")
