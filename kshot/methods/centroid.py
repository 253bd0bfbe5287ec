"""Nearest class centroid with cosine similarity on frozen penultimate features (SimpleShot /
ProtoNet-style; no training, no hyper-parameters)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kshot.finetune import Tensors, class_centroids, predict
from kshot.methods.base import EpisodeData, EpisodeResult, Method


@dataclass(frozen=True)
class CentroidOptions:
    """The centroid classifier has no options."""


class NearestCentroid(Method):
    kind = "centroid"
    Options = CentroidOptions

    def run(self, ep: EpisodeData) -> EpisodeResult:
        model = ep.model.to(ep.device).eval()
        centroids = class_centroids(model, ep.support, ep.n_classes, ep.device)  # [C, D]

        def acc(data: Tensors) -> float:
            feats = F.normalize(predict(model.features, data[0], ep.device), dim=1)  # [N, D]
            return float(((feats @ centroids.T).argmax(1) == data[1]).float().mean())

        with torch.no_grad():
            return EpisodeResult(test_acc=acc(ep.test), val_acc=acc(ep.val))
