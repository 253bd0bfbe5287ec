"""Grouping neurons by activations (GNA): cluster a layer's neurons by their activation patterns.

A *grouping* of a layer of ``N`` neurons is a LongTensor ``assign [N]`` mapping neuron -> group,
with groups labelled ``0..G-1`` and none empty. Groupings made here are *canonical*: groups are
numbered in order of their first neuron, so equal partitions give equal tensors.

Design choices (the paper does not state them):

- **Normalised patterns.** Each neuron's pattern (a row of ``acts [N, M]``) is z-scored across the
  ``M`` images and then L2-normalised. For such vectors ``||a - b||^2 = 2 - 2 corr(a, b)``, so both
  k-means and Ward's agglomerative clustering group neurons whose responses are *correlated*, which
  is the paper's "respond alike", regardless of each neuron's scale or offset (a filter with twice
  the weights of another is redundant with it). A neuron constant over the images has no pattern;
  it becomes the zero vector, equidistant from every other, so constant neurons tend to group
  together.
- **Algorithms.** ``kmeans`` (scikit-learn's KMeans, ``n_init`` restarts, seeded) and
  ``agglomerative`` (Ward linkage, deterministic). Ward minimises the same within-group sum of
  squares as k-means, greedily, so the two differ only in the optimiser.
- **Exactly G groups.** Duplicate patterns can leave k-means with fewer distinct clusters than
  asked; the largest groups are then split (their last neuron becomes a new group) so the count
  asked for is the count used: the controller's action means what it says.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from kshot.config import CLUSTERING
from kshot.errors import ConfigError, DataError, suggest
from kshot.models import Backbone


def normalise_patterns(acts: torch.Tensor) -> torch.Tensor:
    """``acts [N, M]`` -> z-scored (per neuron, across images) and L2-normalised rows ``[N, M]``.

    Constant rows become zero rows. Row ``i`` dotted with row ``j`` is the Pearson correlation of
    neurons ``i`` and ``j``.
    """
    raw = acts.double()
    x = raw - raw.mean(dim=1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    constant = norm <= 1e-6 * raw.norm(dim=1, keepdim=True)  # float noise of a constant row
    return torch.where(constant, torch.zeros_like(x), x / norm.clamp_min(1e-300)).float()


def resolve_count(spec: int | float, n_neurons: int, where: str) -> int:
    """Number of groups for a layer of ``n_neurons`` from a config value.

    An ``int`` is an absolute count in ``[1, n_neurons]``; a ``float`` in ``(0, 1]`` is a fraction
    of the neurons, rounded half up, at least 1 (so ``1`` means one group, ``1.0`` one group per
    neuron).
    """
    if isinstance(spec, bool) or not isinstance(spec, int | float):
        raise ConfigError(f"{where}: expected an integer count or a fraction, found {spec!r}")
    if isinstance(spec, int):
        if not 1 <= spec <= n_neurons:
            raise ConfigError(
                f"{where}: expected a group count in [1, {n_neurons}] (the layer's neurons), found {spec}"
            )
        return spec
    if not 0.0 < spec <= 1.0:
        raise ConfigError(f"{where}: expected a fraction of the neurons in (0, 1], found {spec!r}")
    return max(1, min(n_neurons, math.floor(spec * n_neurons + 0.5)))  # half up, not to even


def canonical(assign: torch.Tensor) -> torch.Tensor:
    """Relabel groups ``0..G-1`` in order of their first neuron; ``[N] -> [N]``."""
    _, first_seen, inverse = np.unique(assign.numpy(), return_index=True, return_inverse=True)
    relabel = np.empty(len(first_seen), dtype=np.int64)
    relabel[np.argsort(first_seen)] = np.arange(len(first_seen))
    return torch.from_numpy(relabel[inverse.reshape(-1)])


def _split_to(assign: np.ndarray, n_groups: int) -> np.ndarray:
    """Split the largest groups until there are ``n_groups`` (k-means may return fewer)."""
    assign = assign.copy()
    while len(np.unique(assign)) < n_groups:
        labels, counts = np.unique(assign, return_counts=True)
        biggest = labels[np.argmax(counts)]
        members = np.flatnonzero(assign == biggest)
        assign[members[-1]] = assign.max() + 1
    return assign


def group_neurons(
    acts: torch.Tensor, n_groups: int, algorithm: str = "kmeans", seed: int = 0, n_init: int = 4
) -> torch.Tensor:
    """Cluster the ``N`` neurons of ``acts [N, M]`` into exactly ``n_groups`` groups.

    Returns a canonical LongTensor ``[N]`` (groups ``0..n_groups-1``, none empty). One group per
    neuron returns ``arange(N)`` without clustering, and one group returns zeros.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans

    if acts.dim() != 2:
        raise DataError(f"acts: expected a [neurons, images] matrix, found shape {list(acts.shape)}")
    n = acts.shape[0]
    n_groups = resolve_count(n_groups, n, "n_groups")
    if algorithm not in CLUSTERING:
        raise ConfigError(f"algorithm: expected one of {list(CLUSTERING)}, found {algorithm!r}")
    if n_groups == n:
        return torch.arange(n)
    if n_groups == 1:
        return torch.zeros(n, dtype=torch.long)
    x = normalise_patterns(acts).double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer distinct clusters": handled by _split_to
        if algorithm == "kmeans":
            km = KMeans(n_clusters=n_groups, n_init=n_init, random_state=seed)
            labels = km.fit_predict(x)
        else:
            labels = AgglomerativeClustering(n_clusters=n_groups, linkage="ward").fit_predict(x)
    return canonical(torch.from_numpy(_split_to(labels.astype(np.int64), n_groups)))


def check_assignment(assign: torch.Tensor, n_neurons: int, where: str) -> int:
    """Check ``assign`` is a LongTensor ``[n_neurons]`` labelled ``0..G-1`` with no empty group;
    return ``G``. Raises :class:`DataError` naming ``where``."""
    if not isinstance(assign, torch.Tensor):
        raise DataError(f"{where}: expected an int64 tensor [{n_neurons}], found a {type(assign).__name__}")
    if assign.dtype != torch.long or assign.dim() != 1 or len(assign) != n_neurons:
        raise DataError(
            f"{where}: expected an int64 tensor [{n_neurons}] (one group per neuron), "
            f"found {assign.dtype} {list(assign.shape)}"
        )
    if n_neurons == 0:
        return 0
    g = int(assign.max()) + 1
    if int(assign.min()) < 0 or bool((torch.bincount(assign.cpu(), minlength=g) == 0).any()):
        raise DataError(
            f"{where}: expected groups labelled 0..G-1 with none empty, found "
            f"labels {sorted(set(assign.tolist()))[:10]}..."
        )
    return g


def cluster_quality(acts: torch.Tensor, assign: torch.Tensor) -> dict[str, Any]:
    """How well ``assign [N]`` groups the patterns ``acts [N, M]`` (JSON-ready).

    ``silhouette``: scikit-learn's silhouette on the normalised patterns (``None`` unless
    ``2 <= G <= N-1``); ``intra_corr`` / ``inter_corr``: mean Pearson correlation over pairs of
    distinct neurons in the same / different groups (``None`` when there are no such pairs);
    group count and sizes.
    """
    from sklearn.metrics import silhouette_score

    n = acts.shape[0]
    g = check_assignment(assign, n, "assign")
    z = normalise_patterns(acts)
    corr = z @ z.T  # [N, N]
    same = assign[:, None] == assign[None, :]
    off_diag = ~torch.eye(n, dtype=torch.bool)

    def mean_over(mask: torch.Tensor) -> float | None:
        return float(corr[mask].mean()) if bool(mask.any()) else None

    sizes = torch.bincount(assign, minlength=g)
    silhouette = None
    if 2 <= g <= n - 1:
        silhouette = float(silhouette_score(z.double().numpy(), assign.numpy()))
    return {
        "n_neurons": n,
        "n_groups": g,
        "silhouette": silhouette,
        "intra_corr": mean_over(same & off_diag),
        "inter_corr": mean_over(~same),
        "largest_group": int(sizes.max()) if g else 0,
        "singletons": int((sizes == 1).sum()),
    }


def random_grouping(sizes_from: torch.Tensor, seed: int) -> torch.Tensor:
    """A random grouping with exactly the group sizes of ``sizes_from [N]``: the ablation that keeps
    the degrees of freedom of an activation grouping but not its membership. Returns ``[N]``."""
    check_assignment(sizes_from, len(sizes_from), "sizes_from")
    gen = torch.Generator().manual_seed(seed)
    return sizes_from.cpu()[torch.randperm(len(sizes_from), generator=gen)]


def group_layers(
    acts: dict[str, torch.Tensor],
    counts: dict[str, int],
    algorithm: str = "kmeans",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Group every layer of ``counts``: ``{layer: acts [N, M]}`` -> ``{layer: assign [N]}``."""
    missing = sorted(set(counts) - set(acts))
    if missing:
        raise ConfigError(f"counts: layers {missing} have no activations; found {sorted(acts)}")
    return {name: group_neurons(acts[name], g, algorithm=algorithm, seed=seed) for name, g in counts.items()}


LAYER_KINDS = {"conv": torch.nn.Conv2d, "fc": torch.nn.Linear}


def select_layers(model: Backbone, layers: list[str] | None) -> list[str]:
    """Expand a ``layers`` option into groupable layer names, in forward order.

    ``None`` is every groupable layer; the selectors ``conv`` and ``fc`` stand for every groupable
    Conv2d / Linear layer, so one option reads the same on backbones with other layer names.
    """
    groupable = model.groupable()
    if layers is None:
        return groupable
    picked: list[str] = []
    for name in layers:
        if name in LAYER_KINDS:
            kind = LAYER_KINDS[name]
            picked += [n for n in groupable if isinstance(model.get_submodule(n), kind)]
        else:
            picked.append(name)
    return list(dict.fromkeys(picked))


def layer_sizes(model: Backbone, layers: list[str], where: str = "layers") -> dict[str, int]:
    """Neurons (output channels / units) of each layer of ``layers``, checked to be groupable
    (``where``: the field an error names)."""
    groupable = model.groupable()
    for name in layers:
        if name not in groupable:
            raise ConfigError(
                f"{where}: '{name}' is not a groupable layer of this backbone"
                f"{suggest(name, groupable)}; expected some of {groupable}"
            )
    return {name: model.get_submodule(name).weight.shape[0] for name in layers}
