"""Activation-space maps of one layer (after TopoAct): Mapper graphs, with the kmapper library, of
the target images' activation vectors and of the layer's neurons with their k-means groups.

Rathore, Chalapathi, Palande and Wang, "TopoAct: Visually Exploring the Shape of Activations in
Deep Learning", 2021, draw the *images* side: a Mapper graph of the activation vectors, whose
nodes are clusters of images and whose edges join clusters that share images. kshot adds the
*neuron* side, the space the grouping clusters: a Mapper graph of the neurons' activation
patterns (each neuron a point, its responses over the same images), coloured by the k-means
group it gets (:func:`kshot.grouping.group_neurons`). Together they show what the grouping puts
together: where groups follow the map's branches, similar neurons share a gradient.

Choices (Mapper leaves them to the user):

- **Points.** Images: the layer's pooled, rectified responses (the patterns the grouping uses,
  :func:`kshot.activations.layer_activations`), one row per image. Neurons: the same matrix's rows,
  z-scored and L2-normalised as the grouping normalises them.
- **Lens and cover.** The first two principal components (scikit-learn's PCA), covered by
  ``cubes`` x ``cubes`` overlapping hypercubes (``overlap``).
- **Clustering** inside each hypercube: DBSCAN with ``min_samples = 3`` and ``eps`` the median
  distance of a point to its third nearest neighbour over the whole set (the k-distance rule of
  thumb), so the scale adapts to the layer.
- **Purity.** A node's purity is the share of its members with its most common label (class, or
  group); the mean over nodes, weighted by members, sums each map up in one number, beside its
  chance level: the same nodes with the labels shuffled among the points.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import kmapper
import numpy as np
import torch
from sklearn.cluster import DBSCAN
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from kshot.errors import ConfigError, DataError
from kshot.grouping import normalise_patterns

MIN_SAMPLES = 3


@dataclass
class MapperGraph:
    """A Mapper graph of ``points [n, d]``: ``nodes`` maps a node id to its members' rows;
    ``links`` joins nodes that share members; ``labels [n]`` colours the points."""

    nodes: dict[str, list[int]]
    links: dict[str, list[str]]
    labels: np.ndarray
    points: np.ndarray
    lens: np.ndarray

    def purity(self, labels: np.ndarray | None = None) -> float:
        """Mean share of a node's members with its most common label (of ``labels``, default the
        graph's), weighted by members."""
        labels = self.labels if labels is None else labels
        sizes = [len(m) for m in self.nodes.values()]
        if not sizes:
            return float("nan")
        top = [Counter(labels[m].tolist()).most_common(1)[0][1] for m in self.nodes.values()]
        return float(sum(top) / sum(sizes))

    def chance_purity(self, seed: int = 0, draws: int = 20) -> float:
        """The purity the same nodes would have with the labels shuffled among the points (mean of
        ``draws`` seeded permutations): what a map blind to the labels scores."""
        rng = np.random.default_rng(seed)
        return float(np.mean([self.purity(rng.permutation(self.labels)) for _ in range(draws)]))

    def summary(self) -> dict[str, Any]:
        covered = sorted({i for m in self.nodes.values() for i in m})
        return {
            "points": len(self.labels),
            "nodes": len(self.nodes),
            "edges": sum(len(v) for v in self.links.values()),
            "covered": len(covered),
            "purity": self.purity(),
            "chance_purity": self.chance_purity(),
        }


def mapper_graph(
    points: np.ndarray, labels: np.ndarray, cubes: int = 10, overlap: float = 0.5
) -> MapperGraph:
    """The Mapper graph of ``points [n, d]`` (float), points coloured by ``labels [n]`` (int)."""
    if points.ndim != 2 or len(points) != len(labels):
        raise ConfigError(
            f"points: expected a matrix [n, d] with one label per row ({len(labels)}), "
            f"found {list(points.shape)}"
        )
    if len(points) <= MIN_SAMPLES:
        raise DataError(
            f"points: expected more than {MIN_SAMPLES} points for a Mapper graph, found {len(points)}"
        )
    if cubes < 1 or not 0.0 < overlap < 1.0:
        raise ConfigError(
            f"maps: expected cubes >= 1 and 0 < overlap < 1, found cubes={cubes}, overlap={overlap}"
        )
    points = np.asarray(points, dtype=np.float64)
    mapper = kmapper.KeplerMapper(verbose=0)
    n_components = min(2, points.shape[1], len(points))
    lens = mapper.fit_transform(
        points, projection=PCA(n_components=n_components, random_state=0), scaler=None
    )
    dist = NearestNeighbors(n_neighbors=MIN_SAMPLES + 1).fit(points).kneighbors(points)[0][:, -1]
    eps = float(np.median(dist)) or 1e-6  # duplicate points: any positive radius joins them
    graph = mapper.map(
        lens,
        points,
        clusterer=DBSCAN(eps=eps, min_samples=MIN_SAMPLES),
        cover=kmapper.Cover(n_cubes=cubes, perc_overlap=overlap),
    )
    return MapperGraph(
        nodes={k: list(v) for k, v in graph["nodes"].items()},
        links={k: list(v) for k, v in graph["links"].items()},
        labels=np.asarray(labels),
        points=points,
        lens=np.asarray(lens),
    )


def image_points(acts: torch.Tensor) -> np.ndarray:
    """A layer's patterns ``[N, M]`` -> the images' activation vectors ``[M, N]``."""
    return acts.T.double().numpy()


def neuron_points(acts: torch.Tensor) -> np.ndarray:
    """A layer's patterns ``[N, M]`` -> the neurons' normalised patterns ``[N, M]``."""
    return normalise_patterns(acts).double().numpy()
