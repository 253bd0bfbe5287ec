"""LP-FT (Kumar, Raghunathan, Jones, Ma & Liang, "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022): linear probing, then full fine-tuning.

Phase 1 fits the new head on the frozen source features, ``min_{W,b} CE(W f(x) + b, y)`` over the
support set. Phase 2 fine-tunes every parameter from there. A random head's large early gradients
distort the pre-trained features; a probed head starts near a minimum, so the backbone moves less.

Choices the paper leaves open and what kshot chose:
- the probe trains on features cached once per episode (the approach of
  :mod:`kshot.methods.linear`: the same optimisation as back-propagating through the frozen
  network) with its own ``probe_steps`` and ``probe_lr``; momentum, weight decay, ``head_init``
  and ``eval_every`` (capped at ``probe_steps``) are the method's shared values;
- each phase keeps its own validation-selected state (the loop does the selection): phase 2
  starts from the probe's selected head, never re-initialised, and its selected state is the one
  reported (``val_acc``, ``test_acc``, ``steps``, ``best_step``, the curves); the probe's
  validation accuracy and selected step go to ``extra``, and ``train_time_s`` covers both phases;
- phase 2 uses the method's ``lr`` and ``steps`` (the shared ``finetune`` block unless
  overridden); the paper's smaller fine-tuning rate is then a per-method ``lr`` override.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError
from kshot.finetune import Tensors, TrainResult, accuracy, init_head, predict, train
from kshot.methods.base import EpisodeData, EpisodeResult, GradientMethod, TrainOverrides
from kshot.models import Backbone


@dataclass(frozen=True)
class LPFTOptions(TrainOverrides):
    probe_steps: int = 100
    probe_lr: float = 0.1

    def validate(self, where: str) -> None:
        if self.probe_steps < 1:
            raise ConfigError(f"{where}.probe_steps: expected an integer >= 1, found {self.probe_steps}")
        if self.probe_lr <= 0:
            raise ConfigError(f"{where}.probe_lr: expected a number > 0, found {self.probe_lr}")


def probe(model: Backbone, ep: EpisodeData, cfg: FinetuneConfig) -> TrainResult:
    """Train ``model.head`` in place on the frozen features of ``ep.support`` (selecting on
    ``ep.val``) with ``cfg``; the backbone is untouched. Seeded by ``ep.seed``."""
    model.eval()

    def feats(data: Tensors) -> Tensors:
        return predict(model.features, data[0], ep.device), data[1]  # ([N, D], [N])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ep.seed)
        return train(
            model.head, list(model.head.parameters()), feats(ep.support), feats(ep.val), cfg, ep.device
        )


class LPFT(GradientMethod):
    kind = "lpft"
    Options = LPFTOptions

    def probe_config(self) -> FinetuneConfig:
        steps = self.options.probe_steps
        return dataclasses.replace(
            self.cfg, steps=steps, lr=self.options.probe_lr, eval_every=min(self.cfg.eval_every, steps)
        )

    def run(self, ep: EpisodeData) -> EpisodeResult:
        model = ep.model.to(ep.device)
        init_head(model, ep.n_classes, ep.seed, self.cfg.head_init, ep.support, ep.device)
        probed = probe(model, ep, self.probe_config())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ep.seed)
            res = train(model, list(model.parameters()), ep.support, ep.val, self.cfg, ep.device)
        result = EpisodeResult.from_train(
            res,
            accuracy(res.model, *ep.test, ep.device),
            probe_val_acc=probed.val_acc,
            probe_best_step=probed.best_step,
        )
        result.train_time_s += probed.train_time_s
        return result
