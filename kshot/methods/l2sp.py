"""L2-SP (Li et al., ICML 2018): fine-tune everything while penalising
``alpha/2 * ||w - w0||^2`` on the pre-trained weights and ``beta/2 * ||w||^2`` on the new head."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kshot.errors import ConfigError
from kshot.finetune import TrainHook
from kshot.methods.base import EpisodeData, GradientMethod, TrainOverrides
from kshot.models import Backbone


@dataclass(frozen=True)
class L2SPOptions(TrainOverrides):
    alpha: float = 0.01
    beta: float = 0.01

    def validate(self, where: str) -> None:
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0, found {getattr(self, name)}")


class L2SPPenalty(TrainHook):
    """``alpha/2 * ||w - w0||^2`` over the backbone's parameters (``w0``: their values when the
    hook is made) plus ``beta/2 * ||w||^2`` over the head's."""

    penalises = True

    def __init__(self, model: Backbone, alpha: float, beta: float, device: torch.device) -> None:
        self.anchor = {
            n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head.")
        }
        self.alpha, self.beta, self.device = alpha, beta, device

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for n, p in model.named_parameters():
            if n.startswith("head."):
                total = total + 0.5 * self.beta * p.pow(2).sum()
            else:
                total = total + 0.5 * self.alpha * (p - self.anchor[n]).pow(2).sum()
        return total


class L2SP(GradientMethod):
    kind = "l2sp"
    Options = L2SPOptions

    def hooks(self, model: Backbone, ep: EpisodeData) -> list[TrainHook]:
        return [L2SPPenalty(model, self.options.alpha, self.options.beta, ep.device)]
