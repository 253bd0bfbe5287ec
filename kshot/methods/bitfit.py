"""BitFit (Ben Zaken, Ravfogel & Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022): fine-tune only the bias terms.

The backbone's weights stay at the source values; every bias vector ``b`` of the backbone and the
whole new head (weight and bias) train with the shared loop, minimising the cross-entropy on the
support set over ``{b_l} ∪ {W_head, b_head}``.

Choices the paper leaves open (it studies Transformers) and what kshot chose:
- the new head trains whole, as the paper's task-specific classification layer does;
- a BatchNorm's shift ``beta`` (``bias``) counts as a bias and trains; its scale ``gamma`` is a
  weight and stays, and its running statistics stay at the source values (the loop keeps
  BatchNorm in eval mode);
- a layer without a bias (ResNet's convolutions) contributes nothing: no bias is added.
"""

from __future__ import annotations

import torch

from kshot.methods.base import GradientMethod
from kshot.models import Backbone


def bias_parameters(model: Backbone) -> list[torch.Tensor]:
    """The backbone's bias vectors (names ending in ``bias``, head excluded), then the head's
    parameters."""
    biases = [
        p for n, p in model.named_parameters() if not n.startswith("head.") and n.rsplit(".", 1)[-1] == "bias"
    ]
    return biases + list(model.head.parameters())


class BitFit(GradientMethod):
    kind = "bitfit"

    def trainable(self, model: Backbone) -> list[torch.Tensor]:
        return bias_parameters(model)
