"""Linear centered kernel alignment (CKA): how alike two representations of the same images are.

Kornblith, Norouzi, Lee and Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019. For representations ``X [n, p]`` and ``Y [n, q]`` of the same ``n`` images, with
columns centred,

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F),

which is 1 for ``Y = X``, invariant to orthogonal transforms and isotropic scaling of either side,
and in [0, 1]. The source-effect study measures each source network's features against the
target *task*: :func:`label_cka` is the CKA of the features with the one-hot labels, i.e. how much
of the features' (centred, linear) similarity structure is the structure of the classes. A
network whose features separate the target classes scores high before any fine-tuning.

Choices the paper leaves to the user: the computation is in float64 (the Frobenius norms square
large numbers), and the feature-space form above is used (cost ``n·p·q``), whichever of ``n`` and
``p`` is larger, since it equals the Gram-matrix form exactly.
"""

from __future__ import annotations

import torch

from kshot.activations import layer_activations
from kshot.errors import ConfigError
from kshot.finetune import predict
from kshot.models import Backbone


def _centred(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ConfigError(f"{name}: expected a matrix [n, features], found shape {list(x.shape)}")
    x = x.double()
    return x - x.mean(dim=0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``x [n, p]`` and ``y [n, q]``, rows the same ``n`` images; in [0, 1].

    A side with no variance (every image the same) has no similarity structure: its CKA is 0.
    """
    if len(x) != len(y):
        raise ConfigError(f"y: expected the same {len(x)} images as x (rows), found {len(y)}")
    if len(x) < 2:
        raise ConfigError(f"x: expected at least 2 images to centre, found {len(x)}")
    x, y = _centred(x, "x"), _centred(y, "y")
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norms) if norms > 0 else 0.0


def label_cka(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Linear CKA of ``features [n, p]`` with the one-hot matrix of ``labels [n]`` (int64)."""
    if labels.dim() != 1 or len(labels) != len(features):
        raise ConfigError(
            f"labels: expected one label per image ({len(features)}), found shape {list(labels.shape)}"
        )
    _, codes = torch.unique(labels, return_inverse=True)
    return linear_cka(features, torch.nn.functional.one_hot(codes).double())


@torch.no_grad()
def task_similarity(
    model: Backbone, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """:func:`label_cka` of each groupable layer's activation patterns (the responses the grouping
    clusters, :func:`kshot.activations.layer_activations`) and of the penultimate ``features`` on
    uint8 ``images [M, C, H, W]`` with ``labels [M]``: ``{layer: cka, ..., "features": cka}``."""
    was_training = model.training
    model.eval()
    try:
        acts = layer_activations(model, images, model.groupable(), device)
        out = {layer: label_cka(a.T, labels) for layer, a in acts.items()}
        out["features"] = label_cka(predict(model.features, images, device), labels)
    finally:
        model.train(was_training)
    return out
