"""BSS (Chen, Wang, Long & Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
Shrinkage for Safe Transfer Learning", NeurIPS 2019): fine-tune everything while shrinking the
smallest singular values of the batch's feature matrix.

    loss = CE + eta * sum_{i=1..k} sigma_{-i}(F)^2

``F``: the penultimate features ``[N, D]`` (``model.features``, the head's input) of the support
batch under the fine-tuned weights; ``sigma_{-i}``: its ``i``-th smallest singular value. The
small singular directions carry the source-specific, untransferable components (negative
transfer); shrinking them suppresses those.

Choices the paper leaves open and what kshot chose:
- the features are the head's input, captured by a forward pre-hook on ``model.head`` during the
  loop's own forward pass (no second forward); the matrix is used as it is, not centred;
- ``F`` has ``min(N, D)`` singular values (with k-shot support sets ``N < D``, so ``N``), and
  ``k`` must be below that: penalising all of them is the squared Frobenius norm, a feature-norm
  penalty rather than spectral shrinkage. A larger ``k`` is an error at run time, when ``N`` and
  ``D`` are known;
- full-batch training, so ``F`` is the whole support set at every step (the paper's mini-batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kshot.errors import ConfigError
from kshot.finetune import TrainHook
from kshot.methods.base import EpisodeData, GradientMethod, TrainOverrides
from kshot.models import Backbone


@dataclass(frozen=True)
class BSSOptions(TrainOverrides):
    eta: float = 0.001
    k: int = 1

    def validate(self, where: str) -> None:
        if self.eta < 0:
            raise ConfigError(f"{where}.eta: expected a number >= 0, found {self.eta}")
        if self.k < 1:
            raise ConfigError(f"{where}.k: expected an integer >= 1, found {self.k}")


def spectral_shrinkage(features: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the squares of the ``k`` smallest singular values of ``features [N, D]`` (a scalar)."""
    sigma = torch.linalg.svdvals(features)  # [min(N, D)], descending
    return sigma[-k:].pow(2).sum()


class SpectralShrinkagePenalty(TrainHook):
    """``eta * sum_{i<=k} sigma_{-i}(F)^2`` on the features ``F [N, D]`` entering ``model.head``,
    captured by a pre-hook registered in :meth:`prepare` and removed in :meth:`finish` (only the
    training forward is kept; validation passes run in eval mode)."""

    penalises = True
    whole_batch = True  # singular values of the batch's features

    def __init__(self, model: Backbone, eta: float, k: int) -> None:
        self.model, self.eta, self.k = model, eta, k
        self.features: torch.Tensor | None = None
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            self.features = inputs[0]

    def prepare(self, trainable: list[torch.Tensor], linear_update: bool) -> list[torch.Tensor]:
        self.handle = self.model.head.register_forward_pre_hook(self._capture)
        return trainable

    def penalty(self, model: nn.Module) -> torch.Tensor:
        features, self.features = self.features, None
        return self.eta * spectral_shrinkage(features, self.k)

    def finish(self, model: nn.Module) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle, self.features = None, None


class BSS(GradientMethod):
    kind = "bss"
    Options = BSSOptions

    def hooks(self, model: Backbone, ep: EpisodeData) -> list[TrainHook]:
        n, d = len(ep.support[1]), model.head.in_features
        if self.options.k >= min(n, d):
            raise ConfigError(
                f"{self.where}.k: expected fewer than the {min(n, d)} singular values of the "
                f"support features ({n} images x {d} features), found {self.options.k}"
            )
        return [SpectralShrinkagePenalty(model, self.options.eta, self.options.k)]
