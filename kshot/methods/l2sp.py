"""L2-SP (Li et al., ICML 2018): fine-tune everything while penalising
``alpha/2 * ||w - w0||^2`` on the pre-trained weights and ``beta/2 * ||w||^2`` on the new head."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kshot.config import ConfigError
from kshot.finetune import Penalty
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


class L2SP(GradientMethod):
    kind = "l2sp"
    Options = L2SPOptions

    def penalty(self, model: Backbone, ep: EpisodeData) -> Penalty:
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head.")}
        alpha, beta = self.options.alpha, self.options.beta

        def pen(m: Backbone) -> torch.Tensor:
            total = torch.zeros((), device=ep.device)
            for n, p in m.named_parameters():
                if n.startswith("head."):
                    total = total + 0.5 * beta * p.pow(2).sum()
                else:
                    total = total + 0.5 * alpha * (p - anchor[n]).pow(2).sum()
            return total

        return pen
