"""From pipeline outputs to what a researcher reads: tables, figures, headline metrics, plot data.

Means come with 95% confidence intervals from Student's t over episodes; the comparison with the
baseline (full fine-tuning) is paired: every method runs on the same episodes with the same head
initialisation, so the per-episode differences are what the interval is computed on
(:mod:`kshot.stats`). Formatting lives in :mod:`kshot.tables`, drawing in :mod:`kshot.figures`;
this module loads, summarises and writes.

Writers (each a report command of :mod:`kshot.cli`):

- :func:`write_results`: main and source tables (md, csv, tex), forest, per-episode and accuracy-vs-k
  figures, ``metrics.json`` (headline numbers for ``dvc metrics``) and plot-ready CSVs.
- :func:`write_group_figures`: the paper's Fig. 1 view and a neuron embedding for one benchmark.
- :func:`write_search_report`: search table and figures from ``SearchTrace`` JSON files.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from kshot.activations import layer_activations
from kshot.config import TUNED
from kshot.data.datasets import class_names
from kshot.errors import DataError
from kshot.files.checkpoint import load_checkpoint
from kshot.files.prepared import load_prepared
from kshot.grouping import cluster_quality, group_neurons, normalise_patterns, resolve_count
from kshot.io import atomic_path, read_json, write_json, write_text
from kshot.stats import mean_ci, paired_diff, significant
from kshot.tables import (
    FOREST_COLUMNS,
    Table,
    differences_by_method,
    html_page,
    main_tables,
    search_table,
    source_table,
    target_classes_note,
    to_latex,
    to_markdown,
)

__all__ = [
    "load_runs",
    "markdown_table",
    "mean_ci",
    "summarise",
    "write_group_figures",
    "write_results",
    "write_search_report",
]

RUN_KEYS = (
    "benchmark",
    "method",
    "kind",
    "k",
    "episode",
    "test_acc",
    "val_acc",
    "diverged_step",
    "best_step",
)


def load_runs(paths: list[Path]) -> pd.DataFrame:
    """One row per (benchmark, method, k, episode) from the runs' ``metrics.json`` files, every
    method of a cell on the same episodes (:func:`check_paired`)."""
    rows = []
    for p in paths:
        summary = read_json(p, what="run metrics")
        if not isinstance(summary, dict) or not isinstance(summary.get("episodes"), list):
            raise DataError(f"run metrics '{p}': expected an 'episodes' list, found none")
        for ep in summary["episodes"]:
            rows.append({key: ep.get(key) for key in RUN_KEYS})
    if not rows:
        raise DataError(f"run metrics: expected at least one episode in {len(paths)} files, found none")
    df = pd.DataFrame(rows)
    check_paired(df)
    return df


def blocks(
    methods: Collection[str], baseline: str, tuned: Collection[str] = ()
) -> dict[str, tuple[str, str]]:
    """Method -> (block, the baseline it is compared with). When ``<baseline>+tuned`` ran, the
    *tuned* block (``<method>+tuned`` runs and the methods of ``tuned``: searched ones, and those
    with nothing to tune) is compared with it, the *defaults* block (the options as written) with
    ``baseline``: tuned against tuned, untuned against untuned. Otherwise every method is in the
    defaults block."""
    tuned_base = f"{baseline}{TUNED}"
    out = {}
    for m in methods:
        is_tuned = tuned_base in methods and (m.endswith(TUNED) or m in tuned)
        out[m] = ("tuned", tuned_base) if is_tuned else ("defaults", baseline)
    return out


def check_paired(df: pd.DataFrame) -> None:
    """Raise :class:`DataError` unless every method ran each episode of a cell (benchmark, k) at
    most once and every method of a cell ran the same episodes: a paired difference over the
    episodes two methods share would silently drop the others, while each mean covers its own."""
    keys = ["benchmark", "k", "method", "episode"]
    twice = df[df.duplicated(keys)]
    if len(twice):
        r = twice.iloc[0]
        raise DataError(
            f"runs of {r.method} at {r.benchmark} k={int(r.k)}: expected one result per episode, "
            f"found episode {r.episode} twice"
        )
    for (bench, k), cell in df.groupby(["benchmark", "k"], sort=True):
        episodes = {m: sorted(g.episode) for m, g in cell.groupby("method", sort=True)}
        most = max(episodes, key=lambda m: len(episodes[m]))  # a run cut short is the odd one out
        for method in episodes:
            if episodes[method] != episodes[most]:
                raise DataError(
                    f"runs of {method} at {bench} k={int(k)}: expected the episodes {most} ran "
                    f"({episodes[most]}), found {episodes[method]}"
                )


def summarise(df: pd.DataFrame, baseline: str, tuned: Collection[str] = ()) -> pd.DataFrame:
    """Per (benchmark, k, method): mean test accuracy with CI, and the paired difference against
    the method's baseline with its CI (accuracies in percent): ``baseline``, or for the tuned block
    ``<baseline>+tuned`` (:func:`blocks`; the ``block`` and ``baseline`` columns say which)."""
    out = []
    block_of = blocks(set(df.method), baseline, tuned)
    by_base = {
        b: df[df.method == b].set_index(["benchmark", "k", "episode"])["test_acc"]
        for b in {b for _, b in block_of.values()}
    }
    for (bench, k, method), g in df.groupby(["benchmark", "k", "method"], sort=True):
        block, own_base = block_of[method]
        base = by_base[own_base]
        mean, half = mean_ci(g.test_acc.to_numpy() * 100)
        row: dict[str, Any] = {
            "benchmark": bench,
            "k": int(k),
            "method": method,
            "n_episodes": len(g),
            "test_acc": mean,
            "ci95": half,
            "val_acc": float(g.val_acc.mean() * 100),
            "n_diverged": int(g.diverged_step.notna().sum()),
        }
        paired = g.set_index(["benchmark", "k", "episode"])["test_acc"]
        d, dh, n = paired_diff(paired, base) if method != own_base else (math.nan, math.nan, 0)
        row.update(diff_vs_baseline=d, diff_ci95=dh, significant=bool(n and significant(d, dh)))
        row.update(block=block, baseline=own_base)
        out.append(row)
    return pd.DataFrame(out)


def forest_rows(summary: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The forest plot's rows from :func:`summarise`: per benchmark (panel), each method but the
    baselines (sorted) at each k, its paired difference to its baseline and that CI."""
    if "baseline" in summary:
        summary = summary[summary.method != summary.baseline]
    rows = [
        {
            "panel": r.benchmark,
            "series": r.method,
            "row": f"{r.method}, k={int(r.k)}",
            "diff": r.diff_vs_baseline,
            "ci": r.diff_ci95,
            "significant": bool(r.significant),
        }
        for r in summary[summary.method != baseline].sort_values(["benchmark", "method", "k"]).itertuples()
    ]
    return pd.DataFrame(rows, columns=FOREST_COLUMNS)


def markdown_table(summary: pd.DataFrame, baseline: str) -> str:
    """The main tables (one per benchmark) as Markdown."""
    return "\n".join(to_markdown(t) for t in main_tables(summary, baseline))


def _none_for_nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def headline_metrics(
    summary: pd.DataFrame, sources: Sequence[dict[str, Any]], baseline: str
) -> dict[str, Any]:
    """The per-cell numbers (``reports/metrics_by_cell.json``): source accuracies, mean test accuracy
    per benchmark/k/method, the paired difference to each method's baseline (percent; ``null`` if
    undefined), and per method the cells (benchmark -> list of k) where that difference is
    significantly above or below 0."""
    out: dict[str, Any] = {
        "source_test_acc": {s["source"]: round(100 * s["source_test_acc"], 4) for s in sources},
        "test_acc": {},
        f"diff_vs_{baseline}": {},
        f"significant_vs_{baseline}": {},
        "n_episodes": int(summary.n_episodes.min()),
    }
    own = summary.baseline if "baseline" in summary else pd.Series(baseline, index=summary.index)
    for r, base in zip(summary.itertuples(), own, strict=True):
        if r.method == base:
            continue
        cells = out.setdefault(f"significant_vs_{base}", {}).setdefault(r.method, {"above": {}, "below": {}})
        if r.significant:
            side = cells["above" if r.diff_vs_baseline > 0 else "below"]
            side.setdefault(r.benchmark, []).append(int(r.k))
    for r, base in zip(summary.itertuples(), own, strict=True):
        key = f"k{r.k}"
        out["test_acc"].setdefault(r.benchmark, {}).setdefault(key, {})[r.method] = _none_for_nan(r.test_acc)
        if r.method != base:
            out.setdefault(f"diff_vs_{base}", {}).setdefault(r.benchmark, {}).setdefault(key, {})[
                r.method
            ] = _none_for_nan(r.diff_vs_baseline)
    for methods in (v for k, v in out.items() if k.startswith("significant_vs_")):
        for cells in methods.values():
            for side in cells.values():
                for ks in side.values():
                    ks.sort()
    return out


def compact_metrics(by_cell: Mapping[str, Any]) -> dict[str, Any]:
    """What ``dvc metrics show`` prints (``reports/metrics.json``): the source accuracies and, per
    baseline, each method's mean paired difference to it over the cells (benchmark x k, percentage
    points), from :func:`headline_metrics`'s per-cell numbers."""
    out: dict[str, Any] = {"source_test_acc": dict(by_cell["source_test_acc"])}
    for key in sorted(k for k in by_cell if k.startswith("diff_vs_")):
        per = differences_by_method(by_cell[key])
        if per:
            out[key.removeprefix("diff_")] = {m: round(sum(v) / len(v), 2) for m, v in sorted(per.items())}
    return out


def write_plot_data(df: pd.DataFrame, summary: pd.DataFrame, plots_dir: Path, baseline: str) -> list[Path]:
    """Wide CSVs for ``dvc plots``, one per benchmark:

    - ``accuracy_vs_k/<benchmark>.csv``: ``k`` and one column of mean test accuracy (%) per method;
    - ``paired/<benchmark>.csv``: one row per (k, episode), one column of test accuracy (%) per
      method (x = the baseline's column for a scatter).
    """
    paths = []
    for bench, g in summary.groupby("benchmark", sort=True):
        wide = g.pivot(index="k", columns="method", values="test_acc").sort_index().reset_index()
        path = plots_dir / "accuracy_vs_k" / f"{bench}.csv"
        with atomic_path(path) as tmp:
            wide.to_csv(tmp, index=False, float_format="%.4f")
        paths.append(path)
    for bench, g in df.groupby("benchmark", sort=True):
        wide = (
            g.assign(test_acc=g.test_acc * 100)
            .pivot_table(index=["k", "episode"], columns="method", values="test_acc")
            .reset_index()
        )
        cols = (
            ["k", "episode"]
            + [baseline] * (baseline in wide)
            + sorted(c for c in wide.columns if c not in ("k", "episode", baseline))
        )
        path = plots_dir / "paired" / f"{bench}.csv"
        with atomic_path(path) as tmp:
            wide[cols].to_csv(tmp, index=False, float_format="%.4f")
        paths.append(path)
    return paths


def write_table_set(tables: Sequence[Table], stem: Path, label_prefix: str) -> None:
    """``tables`` as ``<stem>.md``, ``.html`` (one page, titled by the first) and ``.tex``."""
    write_text(stem.with_suffix(".md"), "\n".join(to_markdown(t) for t in tables))
    write_text(stem.with_suffix(".html"), html_page(tables, tables[0].title))
    write_text(
        stem.with_suffix(".tex"),
        "\n".join(to_latex(t, f"{label_prefix}:{i}") for i, t in enumerate(tables)),
    )


def json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """``df``'s rows as JSON-ready dicts (``None`` for a missing number, e.g. one episode's CI)."""
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def chance_levels(episode_files: Sequence[Path]) -> dict[str, float]:
    """Benchmark -> chance accuracy (%) = 100 / number of target classes, from episode files."""
    out = {}
    for p in episode_files:
        eps = read_json(p, what="episodes")
        out[eps["benchmark"]] = 100.0 / int(eps["n_classes"])
    return out


def target_notes(targets: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Per benchmark, the caption's target classes from ``{"dataset", "classes", "raw"}`` (its target
    dataset, its classes' labels there, and the folder the dataset was acquired in)."""
    notes = {}
    for bench, t in targets.items():
        missing = sorted({"dataset", "classes", "raw"} - set(t))
        if missing:
            raise DataError(f"--targets: expected dataset, classes and raw for '{bench}', missing {missing}")
        names = class_names(t["dataset"], Path(t["raw"]))
        notes[bench] = target_classes_note(t["dataset"], t["classes"], names)
    return notes


def write_results(
    runs: list[Path],
    sources: list[Path],
    tables_dir: Path,
    figures_dir: Path,
    baseline: str,
    metrics_path: Path | None = None,
    plots_dir: Path | None = None,
    by_cell_path: Path | None = None,
    episodes: Sequence[Path] = (),
    targets: Mapping[str, str] | None = None,
    tuned: Collection[str] = (),
) -> pd.DataFrame:
    """Write, from run and source metrics (``tuned``: the methods of the tuned block besides the
    ``<method>+tuned`` runs, :func:`blocks`):

    - ``tables_dir``: ``results.{md,html,csv,tex}`` (``.md`` and ``.html`` also hold the source table),
      ``sources.{csv,tex}``;
    - ``figures_dir``: ``accuracy_vs_k.{png,svg}``, and when another method than ``baseline`` ran,
      ``forest.{png,svg}`` (paired differences) and ``episode_differences.{png,svg}``;
    - ``metrics_path`` (optional): :func:`compact_metrics` JSON, and ``by_cell_path`` (optional,
      default ``metrics_by_cell.json`` beside it): :func:`headline_metrics`; ``plots_dir`` (optional):
      :func:`write_plot_data` CSVs. ``episodes`` (optional): episode files, for chance levels.
      ``targets`` (optional): per benchmark, its target classes for the caption.

    Returns the summary frame (``results.csv``).
    """
    from kshot.figures import plot_accuracy_vs_k, plot_episode_differences, plot_forest

    df = load_runs(runs)
    summary = summarise(df, baseline, tuned)
    with atomic_path(tables_dir / "results.csv") as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4f")
    tables = main_tables(summary, baseline, targets=targets)
    src_rows = [read_json(p, what="source metrics") for p in sources]
    if src_rows:
        src = source_table(src_rows)
        tables.append(src)
        with atomic_path(tables_dir / "sources.csv") as tmp:
            src.data.to_csv(tmp, index=False, float_format="%.4f")
    write_table_set(tables, tables_dir / "results", "tab:results")
    plot_accuracy_vs_k(summary, figures_dir / "accuracy_vs_k", baseline, chance_levels(episodes))
    if len(set(df.method) - {baseline}) and baseline in set(df.method):
        plot_forest(
            forest_rows(summary, baseline),
            figures_dir / "forest",
            f"Paired difference to {baseline} per benchmark, method and k"
            + (f" (tuned methods: to {baseline}{TUNED})" if (summary.block == "tuned").any() else ""),
            "test accuracy − the baseline's (percentage points)",
            baseline,
        )
        plot_episode_differences(
            df,
            baseline,
            figures_dir / "episode_differences",
            {m: b for m, (_, b) in blocks(set(df.method), baseline, tuned).items()},
        )
    if metrics_path is not None:
        by_cell = headline_metrics(summary, src_rows, baseline)
        write_json(by_cell_path or metrics_path.with_name("metrics_by_cell.json"), by_cell)
        write_json(metrics_path, compact_metrics(by_cell))
    if plots_dir is not None:
        write_plot_data(df, summary, plots_dir, baseline)
    return summary


def first_conv(model: Any) -> str:
    """Name of the first groupable Conv2d of a backbone (LeNet: ``conv1``)."""
    modules = dict(model.named_modules())
    for name in model.groupable():
        if isinstance(modules[name], nn.Conv2d):
            return name
    raise DataError(f"model: expected a Conv2d among its groupable layers {model.groupable()}, found none")


def write_group_figures(
    checkpoint: Path,
    target: Path,
    benchmark: str,
    out_dir: Path,
    groups: float = 0.25,
    filter_layer: str | None = None,
    embed_layer: str | None = None,
    n_images: int = 500,
    seed: int = 0,
    algorithm: str = "kmeans",
) -> dict[str, Any]:
    """The paper's Fig. 1 view with GNA's groups, and a neuron embedding, for one benchmark.

    Activations of the source network (``checkpoint``) over ``n_images`` unlabeled target pool
    images (seeded draw; never test images) are clustered into ``groups`` (count or fraction of
    the neurons) per layer with :func:`kshot.grouping.group_neurons`. Writes to ``out_dir``
    ``<benchmark>_filters.{png,svg}`` (``filter_layer``, default the first conv),
    ``<benchmark>_embedding.{png,svg}`` (``embed_layer``, default the second groupable layer) and
    ``<benchmark>_groups.json`` (assignments and :func:`kshot.grouping.cluster_quality` per layer),
    whose content it returns.
    """
    from kshot.figures import plot_filter_groups, plot_neuron_embedding

    model, _ = load_checkpoint(checkpoint)
    pool = load_prepared(target, ("pool_x",))["pool_x"]
    gen = torch.Generator().manual_seed(seed)
    images = pool[torch.randperm(len(pool), generator=gen)[:n_images]]
    filter_layer = filter_layer or first_conv(model)
    layers = model.groupable()
    embed_layer = embed_layer or (layers[1] if len(layers) > 1 else layers[0])
    names = list(dict.fromkeys([filter_layer, embed_layer]))
    acts = layer_activations(model, images, names, torch.device("cpu"))
    out: dict[str, Any] = {"benchmark": benchmark, "n_images": len(images), "seed": seed, "layers": {}}
    assigns = {}
    for name in names:
        n = acts[name].shape[0]
        g = resolve_count(groups, n, "groups")
        assigns[name] = group_neurons(acts[name], g, algorithm, seed=seed)
        out["layers"][name] = {
            "assign": assigns[name].tolist(),
            "quality": cluster_quality(acts[name], assigns[name]),
        }
    weight = dict(model.named_modules())[filter_layer].weight
    within = group_correlations(acts[filter_layer], assigns[filter_layer])
    notes = {g: f"r = {r:.2f}" for g, r in within.items() if r is not None}
    q = out["layers"][filter_layer]["quality"]
    plot_filter_groups(
        weight,
        assigns[filter_layer],
        out_dir / f"{benchmark}_filters",
        f"{benchmark}: source {filter_layer} filters in {q['n_groups']} groups\n"
        f"(k-means on activations over {len(images)} unlabeled target images, not an episode's)\n"
        f"mean correlation r within groups {q['intra_corr']:.2f}, between {q['inter_corr']:.2f}",
        notes=notes,
    )
    q = out["layers"][embed_layer]["quality"]
    plot_neuron_embedding(
        acts[embed_layer],
        assigns[embed_layer],
        out_dir / f"{benchmark}_embedding",
        f"{benchmark}: {embed_layer} neurons ({q['n_neurons']}) by activation pattern\n"
        f"k-means over {len(images)} unlabeled target images into {q['n_groups']} groups (silhouette "
        + (f"{q['silhouette']:.2f})" if q["silhouette"] is not None else "n/a)"),
        seed=seed,
    )
    write_json(out_dir / f"{benchmark}_groups.json", out)
    return out


def group_correlations(acts: torch.Tensor, assign: torch.Tensor) -> dict[int, float | None]:
    """Mean Pearson correlation of the activation patterns ``acts [N, M]`` over pairs of distinct
    neurons of each group of ``assign [N]`` (``None`` for a singleton)."""
    z = normalise_patterns(acts)
    corr = z @ z.T  # [N, N]
    out: dict[int, float | None] = {}
    for g in sorted(set(assign.tolist())):
        idx = (assign == g).nonzero().flatten()
        n = len(idx)
        block = corr[idx][:, idx]
        out[g] = float((block.sum() - block.diagonal().sum()) / (n * (n - 1))) if n > 1 else None
    return out


def load_traces(paths: Sequence[Path], labels: Sequence[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(label, strategy): trace dict}`` from ``SearchTrace.to_dict()`` JSON files."""
    if len(paths) != len(labels):
        raise DataError(
            f"search traces: expected one label per trace, found {len(paths)} traces, {len(labels)} labels"
        )
    out = {}
    for p, label in zip(paths, labels, strict=True):
        t = read_json(p, what="search trace")
        for key in (
            "strategy",
            "layers",
            "menu",
            "samples",
            "best_counts",
            "best_reward",
            "n_evaluations",
            "budget",
        ):
            if key not in t:
                raise DataError(f"search trace '{p}': expected key '{key}', found {sorted(t)}")
        if (label, t["strategy"]) in out:
            raise DataError(f"search trace '{p}': a second '{t['strategy']}' trace for '{label}'")
        out[(label, t["strategy"])] = t
    return out


def write_search_report(
    traces: Sequence[Path], labels: Sequence[str], tables_dir: Path, figures_dir: Path
) -> pd.DataFrame:
    """Search table (``search.{md,html,csv,tex}``), best-so-far curves (``search_curves``) and chosen
    counts (``group_counts``) from search traces; ``labels[i]`` names the search of ``traces[i]``
    (e.g. ``"fashion k=5"``), RL and random traces of one search sharing a label."""
    from kshot.figures import plot_group_counts, plot_search_curves

    loaded = load_traces(traces, labels)
    table = search_table(loaded)
    with atomic_path(tables_dir / "search.csv") as tmp:
        table.data.to_csv(tmp, index=False, float_format="%.4f")
    write_table_set([table], tables_dir / "search", "tab:search")
    by_label: dict[str, dict[str, Any]] = {}
    for (label, strategy), t in loaded.items():
        by_label.setdefault(label, {})[strategy] = t
    plot_search_curves(by_label, figures_dir / "search_curves")
    plot_group_counts({f"{lb} {st}": t for (lb, st), t in loaded.items()}, figures_dir / "group_counts")
    return table.data


def summary_frame(path: Path) -> pd.DataFrame:
    """Read ``results.csv`` back (what the notebook and downstream tools use)."""
    if not Path(path).is_file():
        raise DataError(f"results table '{path}': expected an existing CSV, found nothing")
    return pd.read_csv(path)


def per_episode_wins(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Share of episodes on which each method beats / ties / loses to ``baseline`` (per benchmark, k)."""
    base = df[df.method == baseline].set_index(["benchmark", "k", "episode"])["test_acc"]
    rows = []
    for (bench, k, method), g in df[df.method != baseline].groupby(["benchmark", "k", "method"]):
        x = g.set_index(["benchmark", "k", "episode"])["test_acc"]
        common = x.index.intersection(base.index)
        d = (x[common] - base[common]).to_numpy()
        rows.append(
            {
                "benchmark": bench,
                "k": int(k),
                "method": method,
                "wins": int((d > 0).sum()),
                "ties": int((d == 0).sum()),
                "losses": int((d < 0).sum()),
                "median_diff": float(np.median(d) * 100) if len(d) else math.nan,
            }
        )
    return pd.DataFrame(rows)
