"""Aggregate per-episode metrics into the results table and the accuracy-vs-k figure.

Means come with 95% confidence intervals from Student's t over episodes; the comparison with the
baseline (full fine-tuning) is paired: every method runs on the same episodes with the same head
initialisation, so the per-episode differences are what the interval is computed on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kshot.errors import DataError
from kshot.io import atomic_path, read_json, write_text


def load_runs(paths: list[Path]) -> pd.DataFrame:
    """One row per (benchmark, method, k, episode) from the runs' ``metrics.json`` files."""
    rows = []
    for p in paths:
        summary = read_json(p, what="run metrics")
        for ep in summary.get("episodes", []):
            rows.append(
                {
                    key: ep.get(key)
                    for key in (
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
                }
            )
    if not rows:
        raise DataError(f"run metrics: expected at least one episode in {len(paths)} files, found none")
    return pd.DataFrame(rows)


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its ``level`` t-interval (``nan`` half-width for one value)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, half


def summarise(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per (benchmark, k, method): mean test accuracy with CI, and the paired difference against
    ``baseline`` with its CI (accuracies in percent)."""
    out = []
    base = df[df.method == baseline].set_index(["benchmark", "k", "episode"])["test_acc"]
    for (bench, k, method), g in df.groupby(["benchmark", "k", "method"], sort=True):
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
        common = paired.index.intersection(base.index)
        if method != baseline and len(common):
            d, dh = mean_ci((paired[common] - base[common]).to_numpy() * 100)
            row.update(
                diff_vs_baseline=d,
                diff_ci95=dh,
                significant=bool(not math.isnan(dh) and abs(d) > dh),
            )
        else:
            row.update(diff_vs_baseline=math.nan, diff_ci95=math.nan, significant=False)
        out.append(row)
    return pd.DataFrame(out)


def _fmt(mean: float, half: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def markdown_table(summary: pd.DataFrame, baseline: str) -> str:
    """Methods as rows, k as columns per benchmark; the best mean per column in bold."""
    parts = []
    for bench, g in summary.groupby("benchmark", sort=True):
        ks = sorted(g.k.unique())
        header = (
            "| method | "
            + " | ".join(f"k={k}" for k in ks)
            + " | "
            + " | ".join(f"Δ vs {baseline}, k={k}" for k in ks)
            + " |"
        )
        lines = [
            f"### {bench}",
            "",
            "Test accuracy (%), mean ± 95% CI over episodes; Δ is the "
            f"paired difference against `{baseline}` (* when its CI excludes 0).",
            "",
            header,
            "|" + "---|" * (1 + 2 * len(ks)),
        ]
        best = {k: g[g.k == k].test_acc.max() for k in ks}
        for method, m in g.groupby("method", sort=True):
            cells, diffs = [], []
            for k in ks:
                r = m[m.k == k]
                if r.empty:
                    cells.append("")
                    diffs.append("")
                    continue
                r = r.iloc[0]
                cell = _fmt(r.test_acc, r.ci95)
                cells.append(f"**{cell}**" if r.test_acc == best[k] else cell)
                diff = _fmt(r.diff_vs_baseline, r.diff_ci95)
                diffs.append(diff + (" *" if r.significant else "") if diff else "—")
            lines.append(f"| {method} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot_accuracy_vs_k(summary: pd.DataFrame, out_stem: Path) -> None:
    """Accuracy vs k with 95% CI bands, one panel per benchmark (PNG and SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = sorted(summary.benchmark.unique())
    fig, axes = plt.subplots(1, len(benches), figsize=(5.5 * len(benches), 4.2), squeeze=False)
    for ax, bench in zip(axes[0], benches, strict=True):
        g = summary[summary.benchmark == bench]
        for method, m in g.groupby("method", sort=True):
            m = m.sort_values("k")
            ax.plot(m.k, m.test_acc, marker="o", label=method)
            ci = m.ci95.fillna(0)
            ax.fill_between(m.k, m.test_acc - ci, m.test_acc + ci, alpha=0.15)
        ax.set_xscale("log")
        ks = sorted(g.k.unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("shots per class k (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(bench)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "svg"):
        with atomic_path(out_stem.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
    plt.close(fig)


def write_results(
    runs: list[Path], sources: list[Path], tables_dir: Path, figures_dir: Path, baseline: str
) -> pd.DataFrame:
    """Write ``results.csv`` and ``results.md`` to ``tables_dir``, ``accuracy_vs_k`` to ``figures_dir``."""
    df = load_runs(runs)
    summary = summarise(df, baseline)
    with atomic_path(tables_dir / "results.csv") as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4f")
    md = markdown_table(summary, baseline)
    if sources:
        src_rows = [read_json(p, what="source metrics") for p in sources]
        md += (
            "\n### Source pre-training\n\n"
            "| source | backbone | test accuracy (%) | parameters |\n|---|---|---|---|\n"
        )
        md += "".join(
            f"| {r['source']} | {r['backbone']} | {100 * r['source_test_acc']:.1f} | {r['n_params']} |\n"
            for r in src_rows
        )
    write_text(tables_dir / "results.md", md)
    plot_accuracy_vs_k(summary, figures_dir / "accuracy_vs_k")
    return summary
