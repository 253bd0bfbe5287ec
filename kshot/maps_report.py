"""The activation-maps study's outputs: per benchmark, the Mapper graphs of one layer
(:mod:`kshot.maps`) as a static figure and as kmapper's interactive pages, and a summary; and the
study's findings over the benchmarks."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kmapper
import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import torch

from kshot.activations import layer_activations
from kshot.errors import ConfigError, DataError
from kshot.figures import GROUP_COLORS, save
from kshot.files.checkpoint import check_geometry, load_checkpoint
from kshot.files.prepared import load_target
from kshot.grouping import group_neurons, resolve_count
from kshot.io import read_json, write_json, write_text
from kshot.maps import MapperGraph, image_points, mapper_graph, neuron_points


def write_page(graph: MapperGraph, path: Path, title: str, label_names: list[str], what: str) -> None:
    """kmapper's interactive page of ``graph`` at ``path`` (written atomically): one colouring per
    label (a node's share of members with that label), tooltips naming each member's label."""
    raw = {"nodes": graph.nodes, "links": graph.links, "simplices": [], "meta_data": {}, "meta_nodes": {}}
    one_hot = np.eye(len(label_names))[graph.labels]
    page = kmapper.KeplerMapper(verbose=0).visualize(
        raw,
        path_html=str(path),
        title=title,
        color_values=one_hot,
        color_function_name=[f"share of {what} {name}" for name in label_names],
        custom_tooltips=np.array([f"{what} {label_names[i]}" for i in graph.labels]),
        X=graph.points,
        lens=graph.lens,
        save_file=False,
    )
    write_text(path, page)


def _draw(ax: plt.Axes, graph: MapperGraph, title: str, s: dict[str, Any]) -> None:
    """A node per Mapper cluster (area by members, colour its most common label, paler where
    mixed), an edge per shared member; spring layout, seeded; ``s``: the graph's summary."""
    g = nx.Graph()
    g.add_nodes_from(graph.nodes)
    g.add_edges_from((a, b) for a, targets in graph.links.items() for b in targets)
    pos = nx.spring_layout(g, seed=0)
    colours, sizes, alphas = [], [], []
    for node in g.nodes:
        members = graph.nodes[node]
        label, count = Counter(graph.labels[members].tolist()).most_common(1)[0]
        colours.append(GROUP_COLORS[label % len(GROUP_COLORS)])
        sizes.append(12 * math.sqrt(len(members)))
        alphas.append(0.3 + 0.7 * count / len(members))
    nx.draw_networkx_edges(g, pos, ax=ax, width=0.6, edge_color="#999999")
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=sizes, alpha=alphas, linewidths=0)
    ax.set_title(f"{title}\n{s['nodes']} nodes, {s['edges']} edges, purity {s['purity']:.2f}")
    ax.set_axis_off()


def write_activation_maps(
    checkpoint: Path,
    target: Path,
    benchmark: str,
    out_dir: Path,
    layer: str = "last",
    n_images: int = 1000,
    groups: float | int = 0.25,
    cubes: int = 10,
    overlap: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """The maps of ``layer`` (``last``: the last groupable layer) of the source network on
    ``n_images`` of the target's training pool (seeded; never test images): writes to ``out_dir``
    ``<benchmark>.{png,svg}`` (both maps), ``<benchmark>_images.html`` and
    ``<benchmark>_neurons.html`` (kmapper's pages) and ``<benchmark>.json`` (their summaries),
    whose content it returns. The neurons are grouped into ``groups`` (count or fraction) by
    k-means as the grouped methods group them."""
    data = load_target(target, benchmark, ("pool_x", "pool_y"))
    check_geometry(checkpoint, target, data["meta"])
    model, _ = load_checkpoint(checkpoint)
    layers = model.groupable()
    name = layers[-1] if layer == "last" else layer
    if name not in layers:
        raise ConfigError(f"maps.layer: expected 'last' or a groupable layer of {layers}, found '{layer}'")
    pick = torch.randperm(len(data["pool_y"]), generator=torch.Generator().manual_seed(seed))[:n_images]
    images, labels = data["pool_x"][pick], data["pool_y"][pick]
    acts = layer_activations(model, images, [name], torch.device("cpu"))[name]
    count = resolve_count(groups, acts.shape[0], "maps.groups")
    assign = group_neurons(acts, count, algorithm="kmeans", seed=seed)
    classes = [str(c) for c in data["meta"]["classes"]]
    image_graph = mapper_graph(image_points(acts), labels.numpy(), cubes, overlap)
    neuron_graph = mapper_graph(neuron_points(acts), assign.numpy(), cubes, overlap)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_page(
        image_graph,
        out_dir / f"{benchmark}_images.html",
        f"{benchmark}: images by {name}",
        classes,
        "class",
    )
    write_page(
        neuron_graph,
        out_dir / f"{benchmark}_neurons.html",
        f"{benchmark}: neurons of {name}",
        [str(g) for g in range(count)],
        "group",
    )
    summary = {
        "benchmark": benchmark,
        "layer": name,
        "images": image_graph.summary(),
        "neurons": neuron_graph.summary(),
        "groups": count,
        "classes": classes,
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    title = f"{benchmark}: target images in {name}'s activation space (colour: class)"
    _draw(axes[0], image_graph, title, summary["images"])
    title = f"{name}'s {acts.shape[0]} neurons (colour: k-means group of {count})"
    _draw(axes[1], neuron_graph, title, summary["neurons"])
    fig.tight_layout()
    save(fig, out_dir / benchmark)
    write_json(out_dir / f"{benchmark}.json", summary)
    return summary


def write_maps_findings(summaries: Sequence[Path], out: Path) -> str:
    """The study's findings (the README's block) from the benchmarks' summaries."""
    lines = []
    for path in summaries:
        s = read_json(path, what="activation map summary")
        if not isinstance(s, dict) or "images" not in s or "neurons" not in s:
            raise DataError(f"activation map summary '{path}': expected 'images' and 'neurons', found {s!r}")
        lines.append(
            f"- **{s['benchmark']}**, layer `{s['layer']}`: the images' map has {s['images']['nodes']} "
            f"nodes of class purity {s['images']['purity']:.2f} (labels shuffled: "
            f"{s['images']['chance_purity']:.2f}); the neurons' map has {s['neurons']['nodes']} nodes "
            f"of k-means group purity {s['neurons']['purity']:.2f} over {s['groups']} groups "
            f"(shuffled: {s['neurons']['chance_purity']:.2f})."
        )
    text = "\n".join(lines) + "\n"
    write_text(out, text)
    return text
