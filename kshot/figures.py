"""Figures of the results, each saved as PNG (150 dpi) and SVG.

Conventions every figure keeps, so that figures read alike and survive grey-scale printing: one
colour *and* one marker per method (Okabe-Ito colour-blind-safe palette), the same method keeps
its colour across figures, the baseline is drawn dashed, axes name their quantity and unit.

- :func:`plot_forest`: paired differences to the baseline with their 95% CIs (a forest plot), the
  numbers the conclusions rest on.
- :func:`plot_accuracy_vs_k`: mean test accuracy against shots per class with 95% CI bands.
- :func:`plot_episode_differences`: each episode's paired difference to the baseline, with the
  episodes won, tied and lost.
- :func:`plot_filter_groups`: the paper's Fig. 1 view, first-layer filters ordered and framed by group.
- :func:`plot_neuron_embedding`: a 2-D PCA of one layer's normalised activation patterns (what the
  clustering sees), coloured by group.
- :func:`plot_search_curves`, :func:`plot_group_counts`: the group-count search (RL vs random).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

# Files only (no window) unless a backend is asked for: a Jupyter kernel asks for its inline one
# (MPLBACKEND), so the notebook's figures show.
if "MPLBACKEND" not in os.environ:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from kshot.errors import DataError
from kshot.grouping import normalise_patterns
from kshot.io import atomic_path
from kshot.tables import FOREST_COLUMNS, chosen_counts, trace_curve

PALETTE = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
GROUP_CMAP = "tab20"
# dark enough for frames and text on white: tab10 without its light grey and olive
GROUP_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

plt.rcParams.update(
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.fonttype": "none",  # text stays text in SVG (searchable, editable)
        "svg.hashsalt": "kshot",  # deterministic SVG ids: same inputs, same bytes
    }
)


def save(fig: Figure, out_stem: Path) -> list[Path]:
    """Write ``out_stem``.png and .svg atomically and close ``fig``; returns the two paths."""
    paths = []
    for ext in ("png", "svg"):
        path = Path(out_stem).with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(
                tmp,
                format=ext,
                dpi=150,
                bbox_inches="tight",
                metadata={"Date": None} if ext == "svg" else {"Software": None},
            )
        paths.append(path)
    plt.close(fig)
    return paths


def method_styles(methods: Sequence[str], baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """Colour, marker and line style per method: the baseline black and dashed, others in sorted
    order, so the same set of methods gets the same styles in every figure."""
    ordered = ([baseline] if baseline in methods else []) + sorted(m for m in set(methods) if m != baseline)
    styles = {}
    for i, m in enumerate(ordered):
        styles[m] = {
            "color": PALETTE[i % len(PALETTE)],
            "marker": MARKERS[i % len(MARKERS)],
            "linestyle": "--" if m == baseline else "-",
        }
    return styles


def save_with_top_legend(fig: Figure, ax: plt.Axes, out_stem: Path) -> list[Path]:
    """:func:`save` ``fig`` with one legend above its panels, of ``ax``'s labelled lines."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=max(len(labels), 1),
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save(fig, out_stem)


def plot_forest(
    rows: pd.DataFrame, out_stem: Path, title: str, xlabel: str, baseline: str | None = None
) -> list[Path]:
    """A forest plot: one panel per ``panel``, one row per ``row`` (top to bottom in the order they
    first appear), its ``diff`` as a marker with the 95% interval ``ci`` as a bar, and a dashed line
    at 0. The marker is filled where ``significant`` (the interval excludes 0), hollow otherwise;
    colour and marker follow ``series`` (e.g. the method) as in the other figures with the same
    ``baseline``.
    """
    if missing := sorted(set(FOREST_COLUMNS) - set(rows.columns)):
        raise DataError(f"forest plot: expected columns {sorted(FOREST_COLUMNS)}, missing {missing}")
    if rows.empty:
        raise DataError("forest plot: expected at least one row, found none")
    panels = list(dict.fromkeys(rows.panel))
    labels = list(dict.fromkeys(rows.row))
    series = list(dict.fromkeys(rows.series))
    styles = method_styles(series + ([baseline] if baseline else []), baseline)
    y_of = {label: len(labels) - 1 - i for i, label in enumerate(labels)}
    series_of = dict(zip(rows.row, rows.series, strict=True))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.4 * len(panels) + 1.6, 0.26 * len(labels) + 1.5),
        sharey=True,
        squeeze=False,
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        g = rows[rows.panel == panel]
        for r in g.itertuples():
            st = styles[r.series]
            ax.errorbar(
                r.diff,
                y_of[r.row],
                xerr=0.0 if pd.isna(r.ci) else r.ci,
                fmt=st["marker"],
                color=st["color"],
                mfc=st["color"] if r.significant else "white",
                ms=5,
                capsize=2,
                lw=1.2,
            )
        for previous, label in pairwise(labels):  # a rule between series
            if series_of[previous] != series_of[label]:
                ax.axhline(y_of[label] + 0.5, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0, color="grey", lw=1, ls="--", zorder=0)
        ax.set_title(str(panel))
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks([y_of[label] for label in labels], labels)
    axes[0][0].set_ylim(-0.6, len(labels) - 0.4)
    fig.suptitle(title + "\nmarker: mean; bar: 95% CI; filled: the CI excludes 0")
    fig.set_layout_engine("constrained")
    return save(fig, out_stem)


def plot_accuracy_vs_k(
    summary: pd.DataFrame,
    out_stem: Path,
    baseline: str | None = None,
    chance: Mapping[str, float] | None = None,
) -> list[Path]:
    """Mean test accuracy (%) against k with 95% CI bands, one panel per benchmark, one legend.

    ``summary``: :func:`kshot.report.summarise` output. ``chance``: optional benchmark -> chance
    accuracy (%), stated in the panel title (a line at chance would squash the curves).
    """
    benches = sorted(summary.benchmark.unique())
    styles = method_styles(summary.method.unique().tolist(), baseline)
    fig, axes = plt.subplots(1, len(benches), figsize=(4.6 * len(benches), 3.8), squeeze=False, sharey=False)
    for ax, bench in zip(axes[0], benches, strict=True):
        g = summary[summary.benchmark == bench]
        for method, st in styles.items():
            m = g[g.method == method].sort_values("k")
            if m.empty:
                continue
            ci = m.ci95.fillna(0)
            ax.fill_between(m.k, m.test_acc - ci, m.test_acc + ci, color=st["color"], alpha=0.12, lw=0)
            label = f"{method} (baseline)" if method == baseline else method
            ax.plot(m.k, m.test_acc, label=label, ms=5, lw=1.6, **st)
        ks = sorted(int(k) for k in g.k.unique())
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("shots per class k (log scale)")
        ax.set_ylabel("test accuracy (%)")
        n = sorted({int(x) for x in g.n_episodes}) if "n_episodes" in g else []
        extra = [f"{'/'.join(map(str, n))} episodes"] if n else []
        if chance and bench in chance:
            extra.append(f"chance {chance[bench]:.0f}%")
        ax.set_title(bench + (f" ({', '.join(extra)})" if extra else ""))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)
    fig.suptitle("Test accuracy vs shots per class (mean, band: 95% CI over episodes)")
    fig.set_layout_engine("constrained")
    return save(fig, out_stem)


def plot_episode_differences(
    df: pd.DataFrame, baseline: str, out_stem: Path, baseline_of: Mapping[str, str] | None = None
) -> list[Path]:
    """Each episode's paired difference in test accuracy to its baseline (percentage points): one
    panel per benchmark, one row per method and k (as in :func:`plot_forest`), a dot per episode, a
    bar at the mean, and the episodes won / tied / lost at the row's end. Shows what per-episode
    accuracies hide: a small difference that holds on almost every episode, or a mean carried by a
    few. ``df``: :func:`kshot.report.load_runs` output; ``baseline_of``: method -> the baseline it
    is compared with (:func:`kshot.report.blocks`; default ``baseline`` for every method)."""
    baseline_of = dict(baseline_of or {})
    bases = {baseline_of.get(m, baseline) for m in set(df.method)}
    others = sorted(m for m in set(df.method) if m not in bases and m != baseline)
    if baseline not in set(df.method) or not others:
        raise DataError(
            f"episode differences: expected '{baseline}' and another method, found {sorted(set(df.method))}"
        )
    benches = sorted(df.benchmark.unique())
    ks = sorted(int(k) for k in df.k.unique())
    rows = [(m, k) for m in others for k in ks]
    y_of = {row: len(rows) - 1 - i for i, row in enumerate(rows)}
    styles = method_styles([baseline, *others], baseline)
    by_base = {b: df[df.method == b].set_index(["benchmark", "k", "episode"])["test_acc"] for b in bases}
    fig, axes = plt.subplots(
        1,
        len(benches),
        figsize=(3.8 * len(benches) + 1.6, 0.26 * len(rows) + 1.5),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, bench in zip(axes[0], benches, strict=True):
        for method, k in rows:
            sel = df[(df.method == method) & (df.benchmark == bench) & (df.k == k)]
            acc = sel.set_index(["benchmark", "k", "episode"])["test_acc"]
            base = by_base[baseline_of.get(method, baseline)]
            common = acc.index.intersection(base.index)
            if common.empty:
                continue
            diff = 100 * (acc[common] - base[common]).to_numpy()
            y = (
                y_of[(method, k)] + np.linspace(-0.25, 0.25, len(diff))
                if len(diff) > 1
                else [y_of[(method, k)]]
            )
            st = styles[method]
            ax.scatter(diff, y, s=9, color=st["color"], marker=st["marker"], alpha=0.6, lw=0)
            ax.plot(
                [diff.mean()] * 2,
                [y_of[(method, k)] - 0.35, y_of[(method, k)] + 0.35],
                color=st["color"],
                lw=2,
            )
            won, lost = int((diff > 0).sum()), int((diff < 0).sum())
            ax.annotate(
                f"{won}/{len(diff) - won - lost}/{lost}",
                (1.0, y_of[(method, k)]),
                xycoords=("axes fraction", "data"),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.axvline(0, color="grey", lw=1, ls="--", zorder=0)
        ax.set_title(f"{bench} (won/tied/lost)", fontsize=10)
        ax.set_xlabel(f"test accuracy − {baseline}'s, per episode (pp)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks([y_of[r] for r in rows], [f"{m}, k={k}" for m, k in rows])
    axes[0][0].set_ylim(-0.6, len(rows) - 0.4)
    others_base = sorted({baseline_of.get(m, baseline) for m in others} - {baseline})
    fig.suptitle(
        f"Per-episode paired difference to {baseline}"
        + (f" (tuned methods: to {', '.join(others_base)})" if others_base else "")
        + " (dot: an episode; bar: the mean)"
    )
    return save(fig, out_stem)


def group_order(assign: torch.Tensor) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Neuron order that puts groups together: ``assign [N]`` -> (permutation ``[N]``,
    ``[(group, start, size)]`` in display order), groups by decreasing size, then by label."""
    a = assign.cpu().numpy()
    labels, counts = np.unique(a, return_counts=True)
    order_groups = sorted(zip(labels.tolist(), counts.tolist(), strict=True), key=lambda lc: (-lc[1], lc[0]))
    perm, spans, start = [], [], 0
    for g, n in order_groups:
        perm += np.flatnonzero(a == g).tolist()
        spans.append((int(g), start, int(n)))
        start += n
    return np.asarray(perm), spans


def _filter_image(w: np.ndarray) -> np.ndarray:
    """One filter ``[C, h, w]`` -> displayable ``[h, w]`` (grey) or ``[h, w, 3]`` (RGB) in [0, 1],
    scaled by its own max |w| so a filter's pattern is visible whatever its norm (0.5 = zero)."""
    scale = np.abs(w).max() or 1.0
    img = 0.5 + 0.5 * w / scale
    return img[0] if img.shape[0] != 3 else np.transpose(img, (1, 2, 0))


def plot_filter_groups(
    weight: torch.Tensor,
    assign: torch.Tensor,
    out_stem: Path,
    title: str,
    notes: Mapping[int, str] | None = None,
    per_row: int = 10,
) -> list[Path]:
    """First-layer filters ``weight [N, C, h, w]`` as an image grid, one framed row per group
    (the paper's Fig. 1 view with GNA's groups), largest group first.

    A group of more than ``per_row`` filters wraps onto further rows inside its frame. Each row is
    labelled at the left with the group, its size and ``notes[group]`` (e.g. its mean
    within-group correlation). Each filter is scaled by its own max |w| (grey 0.5 = weight 0).
    """
    if weight.dim() != 4 or weight.shape[0] != len(assign):
        raise DataError(
            f"filters: expected weight [N, C, h, w] with N = {len(assign)} (the grouping), "
            f"found {list(weight.shape)}"
        )
    w = weight.detach().cpu().float().numpy()
    perm, spans = group_order(assign)
    cols = min(per_row, max(size for _, _, size in spans))
    layout = []  # (group, row offset, rows used)
    row = 0
    for g, _, size in spans:
        used = math.ceil(size / cols)
        layout.append((g, row, used))
        row += used
    rows = row
    label_w = 2.6  # in filter cells
    gap = 0.12
    fig, ax = plt.subplots(figsize=(0.62 * (cols + label_w) + 0.3, 0.62 * rows + 0.9))
    for (g, start, size), (_, r0, used) in zip(spans, layout, strict=True):
        color = GROUP_COLORS[g % len(GROUP_COLORS)]
        for i, idx in enumerate(perm[start : start + size]):
            r, c = divmod(i, cols)
            y = r0 + r
            img = _filter_image(w[idx])
            ax.imshow(
                img,
                cmap="gray" if img.ndim == 2 else None,
                vmin=0,
                vmax=1,
                extent=(c + gap, c + 1 - gap, -(y + 1 - gap), -(y + gap)),
                interpolation="nearest",
            )
        width = min(size, cols)
        ax.add_patch(
            Rectangle((0.02, -(r0 + used) + 0.02), width - 0.04, used - 0.04, fill=False, ec=color, lw=2)
        )
        note = f", {notes[g]}" if notes and g in notes else ""
        ax.text(
            -0.15,
            -(r0 + used / 2),
            f"group {g}\n{size} filter{'s' * (size != 1)}{note}",
            ha="right",
            va="center",
            fontsize=8,
            color="black",
        )
    ax.set_xlim(-label_w, cols)
    ax.set_ylim(-rows - 0.05, 0.05)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return save(fig, out_stem)


def plot_neuron_embedding(
    patterns: torch.Tensor,
    assign: torch.Tensor,
    out_stem: Path,
    title: str,
    method: str = "pca",
    seed: int = 0,
) -> list[Path]:
    """2-D embedding of a layer's normalised activation patterns ``[N, M]`` (as clustered by
    :func:`kshot.grouping.group_neurons`), one colour per group; ``method``: ``pca`` | ``tsne``.
    PCA axes give the share of variance they explain."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if patterns.dim() != 2 or patterns.shape[0] != len(assign):
        raise DataError(
            f"embedding: expected patterns [N, M] with N = {len(assign)}, found {list(patterns.shape)}"
        )
    z = normalise_patterns(patterns).double().numpy()
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(z)
        ev = pca.explained_variance_ratio_ * 100
        xlabel, ylabel = f"PC 1 ({ev[0]:.0f}% of variance)", f"PC 2 ({ev[1]:.0f}% of variance)"
    elif method == "tsne":
        xy = TSNE(
            n_components=2, perplexity=min(30.0, max(2.0, (len(z) - 1) / 3)), random_state=seed
        ).fit_transform(z)
        xlabel, ylabel = "t-SNE 1 (a.u.)", "t-SNE 2 (a.u.)"
    else:
        raise DataError(f"embedding method: expected 'pca' or 'tsne', found {method!r}")
    a = assign.cpu().numpy()
    cmap = plt.get_cmap(GROUP_CMAP)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    groups = np.unique(a)
    for g in groups:
        sel = a == g
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            s=30,
            color=cmap(int(g) % cmap.N),
            label=f"g{g} ({int(sel.sum())})",
            marker=MARKERS[int(g) % len(MARKERS)],
            alpha=0.85,
            edgecolors="none",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(groups) <= 20:
        ax.legend(
            title="group (neurons)",
            fontsize=7,
            title_fontsize=8,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
            ncol=1 if len(groups) <= 12 else 2,
        )
    return save(fig, out_stem)


def plot_search_curves(traces: Mapping[str, Mapping[str, Mapping[str, Any]]], out_stem: Path) -> list[Path]:
    """Best-so-far validation reward (%) against evaluations, one panel per search label, one line
    per strategy (``reinforce`` vs the ``random`` control); each sample's reward as a faint dot.

    ``traces``: ``{label: {strategy: SearchTrace.to_dict()}}``, e.g. label ``"fashion k=5"``.
    """
    if not traces:
        raise DataError("search curves: expected at least one search, found none")
    labels = list(traces)
    strategies = sorted({s for t in traces.values() for s in t}, key=lambda s: (s == "random", s))
    styles = {
        s: {
            "color": PALETTE[(i + 5) % len(PALETTE)] if s != "random" else "#7f7f7f",
            "linestyle": "-" if s != "random" else "--",
        }
        for i, s in enumerate(strategies)
    }
    ncol = min(3, len(labels))
    nrow = math.ceil(len(labels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.4 * nrow), squeeze=False)
    for ax in axes.flat[len(labels) :]:
        ax.set_visible(False)
    for ax, label in zip(axes.flat, labels, strict=False):
        for strategy, trace in traces[label].items():
            c = trace_curve(trace)
            st = styles[strategy]
            fresh = c[~c.cached]
            ax.scatter(fresh.evaluations, fresh.reward * 100, s=10, color=st["color"], alpha=0.3, lw=0)
            ax.step(
                c.evaluations,
                c.best_so_far * 100,
                where="post",
                lw=1.8,
                label=f"{strategy} (best so far)",
                **st,
            )
        ax.set_xlabel("evaluations (distinct configurations fine-tuned)")
        ax.set_ylabel("validation reward (accuracy, %)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names), frameon=False)
    fig.suptitle("Group-count search: best validation reward so far (dots: each evaluation)")
    fig.set_layout_engine("constrained")
    return save(fig, out_stem)


def plot_group_counts(traces: Mapping[str, Mapping[str, Any]], out_stem: Path) -> list[Path]:
    """Chosen groups per layer, one row per search (``{label: SearchTrace.to_dict()}``, e.g.
    ``"fashion k=5 reinforce"``) and one column per layer: each cell is labelled with the count
    ``G/N`` (groups of the layer's N neurons) and coloured by G/N on a log scale (a sequential,
    colour-blind-safe map: dark = few groups, strong sharing; yellow = every neuron its own)."""
    if not traces:
        raise DataError("group counts: expected at least one search, found none")
    layers: list[str] = []
    for t in traces.values():
        layers += [name for name in t["layers"] if name not in layers]
    labels = list(traces)
    share = np.full((len(labels), len(layers)), np.nan)
    texts = [[""] * len(layers) for _ in labels]
    for i, label in enumerate(labels):
        t, chosen = traces[label], chosen_counts(traces[label])
        for j, name in enumerate(layers):
            if name in chosen:
                n = max(t["menu"][name])
                share[i, j] = math.log2(chosen[name] / n)
                texts[i][j] = f"{chosen[name]}/{n}"
    lowest = min(
        math.log2(min(t["menu"][n]) / max(t["menu"][n])) for t in traces.values() for n in t["layers"]
    )
    fig, ax = plt.subplots(figsize=(3.2 + 1.1 * len(layers), 1.3 + 0.3 * len(labels)), layout="constrained")
    floor = min(lowest, -1.0)
    image = ax.imshow(share, cmap="viridis", vmin=floor, vmax=0.0, aspect="auto")
    middle = floor / 2
    for i in range(len(labels)):
        for j in range(len(layers)):
            if texts[i][j]:
                dark = share[i, j] < middle
                ax.text(
                    j,
                    i,
                    texts[i][j],
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    ax.set_xticks(range(len(layers)), layers)
    ax.set_yticks(range(len(labels)), labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("layer (forward order)")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("groups / neurons (log scale)")
    exponents = range(math.ceil(floor), 1)
    bar.set_ticks(exponents, labels=[f"1/{2**-e}" if e else "1" for e in exponents])
    ax.set_title("Chosen group counts per layer (G/N: G groups of the layer's N neurons)")
    return save(fig, out_stem)
