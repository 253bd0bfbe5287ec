"""Nearest class centroid with cosine similarity on frozen penultimate features: SimpleShot (Wang
et al., arXiv:1911.04623, 2019) with L2-normalised features and no centring, easyfsl's
implementation (see :mod:`kshot.methods.fewshot`).

A class's centroid is the mean of its L2-normalised support features; a query goes to the centroid
of highest cosine similarity. No training, no hyper-parameters. Its predictions are those of
:func:`kshot.finetune.class_centroids` (the centroid head initialisation) and of ``simpleshot`` at
its defaults (``tests/test_fewshot.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from kshot.methods.fewshot import EasyFSLMethod

if TYPE_CHECKING:  # easyfsl is imported where a classifier is made (kshot.methods.fewshot says why)
    from easyfsl.methods import FewShotClassifier


@dataclass(frozen=True)
class CentroidOptions:
    """The centroid classifier has no options."""


class NearestCentroid(EasyFSLMethod):
    kind = "centroid"
    Options = CentroidOptions
    transductive = False

    def classifier(self, support: torch.Tensor) -> FewShotClassifier:
        from easyfsl.methods import SimpleShot

        return SimpleShot(nn.Identity(), feature_normalization=2)
