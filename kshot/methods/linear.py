"""Last layer only (linear probe): the backbone is frozen and only the new head trains
("Baseline" of Chen et al., ICLR 2019).

Since the backbone never changes, its penultimate features are computed once per episode and the
head trains on them: the same optimisation as back-propagating through a frozen network, at a
fraction of the cost.
"""

from __future__ import annotations

import torch

from kshot.finetune import Tensors, accuracy, init_head, predict, train
from kshot.methods.base import EpisodeData, EpisodeResult, GradientMethod


class LinearProbe(GradientMethod):
    kind = "linear"
    trains_features = False  # a head on fixed features: a triplet term would be constant

    def run(self, ep: EpisodeData) -> EpisodeResult:
        model = ep.model.to(ep.device).eval()
        init_head(model, ep.n_classes, ep.seed, self.cfg.head_init, ep.support, ep.device)

        def feats(data: Tensors) -> Tensors:
            return predict(model.features, data[0], ep.device), data[1]  # ([N, D], [N])

        support, val, test = feats(ep.support), feats(ep.val), feats(ep.test)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ep.seed)
            res = train(model.head, list(model.head.parameters()), support, val, self.cfg, ep.device)
        return EpisodeResult.from_train(res, accuracy(res.model, *test, ep.device))
