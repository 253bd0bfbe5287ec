"""Last layer only (linear probe): the backbone is frozen, only the new head trains
("Baseline" of Chen et al., ICLR 2019)."""

import torch

from kshot.methods.base import GradientMethod, head_parameters
from kshot.models import Backbone


class LinearProbe(GradientMethod):
    kind = "linear"

    def trainable(self, model: Backbone) -> list[torch.Tensor]:
        return head_parameters(model)
