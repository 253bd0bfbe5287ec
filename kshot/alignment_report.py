"""The alignment study's figure, tables and findings: does grouping push layers toward the
Canonical Representation Hypothesis' aligned state, or away from it?

Reads the runs of the alignment study (``kshot finetune --alignment-every``), whose episodes
carry the log of :class:`kshot.alignment.AlignmentProbe` in ``extra.alignment``. Every method
starts each episode from the same network and support images, so its alignments at step 0 are
the same, and the comparison at the last logged step is paired by episode: each other method
against the first (the baseline, full fine-tuning).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kshot.alignment import RELATIONS
from kshot.errors import DataError
from kshot.figures import method_styles, save_with_top_legend
from kshot.io import atomic_path, read_json, write_json, write_text
from kshot.report import json_records, write_table_set
from kshot.stats import mean_ci, paired_diff, significant
from kshot.tables import Table, fmt_ci

DIGITS = 3  # alignments are correlations in [-1, 1]


def load_alignment(paths: Sequence[Path]) -> pd.DataFrame:
    """One row per (benchmark, method, k, episode, layer, relation, step) with its ``value``."""
    rows = []
    for path in paths:
        summary = read_json(path, what="run metrics")
        episodes = summary.get("episodes") if isinstance(summary, dict) else None
        if not isinstance(episodes, list):
            raise DataError(f"run metrics '{path}': expected an 'episodes' list, found none")
        for ep in episodes:
            log = (ep.get("extra") or {}).get("alignment")
            if not isinstance(log, dict):
                raise DataError(
                    f"run metrics '{path}': expected episodes with extra.alignment (a run with "
                    f"--alignment-every), found episode {ep.get('episode')} without"
                )
            for layer, relations in log["layers"].items():
                for relation, values in relations.items():
                    for step, value in zip(log["steps"], values, strict=True):
                        rows.append(
                            {
                                "benchmark": ep["benchmark"],
                                "method": ep["method"],
                                "k": int(ep["k"]),
                                "episode": int(ep["episode"]),
                                "layer": layer,
                                "relation": relation,
                                "step": int(step),
                                "value": float(value),
                            }
                        )
    if not rows:
        raise DataError(f"alignment: expected logged alignments in {len(paths)} run files, found none")
    return pd.DataFrame(rows)


def _ends(df: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, method, k, episode, layer, relation): the value at the first and at the last
    logged step (``first``, ``last``) and the ``change`` between them."""
    keys = ["benchmark", "method", "k", "episode", "layer", "relation"]
    ordered = df.sort_values("step").groupby(keys, sort=True).value
    out = pd.DataFrame({"first": ordered.first(), "last": ordered.last()}).reset_index()
    out["change"] = out["last"] - out["first"]
    return out


def comparisons(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per (benchmark, k, layer, relation, method ≠ baseline): the paired difference method −
    baseline of the alignment at the last logged step, and the mean change from step 0 of each."""
    ends = _ends(df)
    cell = ["benchmark", "k", "layer", "relation"]
    base = ends[ends.method == baseline].drop(columns="method")
    rows = []
    for m in sorted(set(ends.method) - {baseline}):
        paired = ends[ends.method == m].merge(base, on=[*cell, "episode"], suffixes=("", "_base"))
        for (bench, k, layer, relation), g in paired.groupby(cell, sort=False):
            g = g.set_index("episode")
            d, h, n = paired_diff(g["last"], g["last_base"], scale=1.0)
            rows.append(
                {
                    "benchmark": bench,
                    "k": int(k),
                    "layer": layer,
                    "relation": relation,
                    "method": m,
                    "baseline": baseline,
                    "diff": d,
                    "ci95": h,
                    "n": n,
                    "significant": significant(d, h),
                    "change": float(g["change"].mean()),
                    "baseline_change": float(g["change_base"].mean()),
                }
            )
    return pd.DataFrame(rows)


def comparison_table(comp: pd.DataFrame) -> Table:
    """Rows (benchmark, k, layer, method − baseline), a column per relation."""
    rows, data_rows = [], []
    for (bench, k, layer, m), g in comp.groupby(["benchmark", "k", "layer", "method"], sort=True):
        by = {r.relation: r for r in g.itertuples()}
        row = [f"{bench} k={k}, {layer}: {m} − {g.baseline.iloc[0]}"]
        for rel in RELATIONS:
            r = by.get(rel)
            row.append(
                ""
                if r is None
                else fmt_ci(r.diff, r.ci95, DIGITS, signed=True) + (" *" if r.significant else "")
            )
        rows.append(row)
        data_rows.append(g)
    return Table(
        title="Alignment after the last update: paired difference to the baseline",
        note="Each cell: the alignment (Pearson correlation of the two matrices' entries) after the "
        "last update, method minus baseline, mean ± 95% CI over the episodes both ran; * when the "
        "CI excludes 0. in: the layer's input side (H, G and WᵀW), out: its output side "
        "(H, G and WWᵀ).",
        columns=["benchmark k, layer: comparison", *RELATIONS],
        cells=rows,
        data=comp,
    )


def change_table(df: pd.DataFrame) -> Table:
    """Each method's change of alignment over fine-tuning (last − step 0), per layer."""
    ends = _ends(df)
    rows, data = [], []
    for (bench, k, layer, m), g in ends.groupby(["benchmark", "k", "layer", "method"], sort=True):
        row = [f"{bench} k={k}, {layer}: {m}"]
        for rel in RELATIONS:
            values = g[g.relation == rel].change.to_numpy()
            if not len(values):
                row.append("")
                continue
            mean, half = mean_ci(values)
            row.append(fmt_ci(mean, half, DIGITS, signed=True))
            data.append(
                {
                    "benchmark": bench,
                    "k": int(k),
                    "layer": layer,
                    "method": m,
                    "relation": rel,
                    "change": mean,
                    "ci95": half,
                }
            )
        rows.append(row)
    return Table(
        title="Change of alignment over fine-tuning (after the last update − before the first)",
        note="Mean ± 95% CI over the evaluation episodes; positive: the layer moved toward the "
        "aligned state the Canonical Representation Hypothesis predicts.",
        columns=["benchmark k, layer: method", *RELATIONS],
        cells=rows,
        data=pd.DataFrame(data),
    )


def plot_alignment(df: pd.DataFrame, out_stem: Path, baseline: str) -> list[Path]:
    """Alignment over steps: a row of panels per (benchmark, k, layer), a panel per relation, a
    line per method (mean over episodes, 95% CI band)."""
    rows = list(df[["benchmark", "k", "layer"]].drop_duplicates().itertuples(index=False))
    styles = method_styles(sorted(set(df.method)), baseline)
    fig, axes = plt.subplots(
        len(rows),
        len(RELATIONS),
        figsize=(2.3 * len(RELATIONS) + 0.6, 1.9 * len(rows) + 0.8),
        sharex=True,
        squeeze=False,
    )
    for i, (bench, k, layer) in enumerate(rows):
        for j, rel in enumerate(RELATIONS):
            ax = axes[i][j]
            cell = df[(df.benchmark == bench) & (df.k == k) & (df.layer == layer) & (df.relation == rel)]
            for m, g in cell.groupby("method", sort=True):
                stats = np.array([(s, *mean_ci(v.value.to_numpy())) for s, v in g.groupby("step", sort=True)])
                half = np.nan_to_num(stats[:, 2])
                st = styles[m]
                ax.plot(stats[:, 0], stats[:, 1], color=st["color"], linestyle=st["linestyle"], label=m)
                ax.fill_between(
                    stats[:, 0], stats[:, 1] - half, stats[:, 1] + half, color=st["color"], alpha=0.15, lw=0
                )
            if i == 0:
                ax.set_title(rel)
            if j == 0:
                ax.set_ylabel(f"{bench} k={k}\n{layer}")
            if i == len(rows) - 1:
                ax.set_xlabel("step")
    return save_with_top_legend(fig, axes[0][0], out_stem)


def findings_markdown(comp: pd.DataFrame) -> str:
    """The study's findings in a few sentences (the README's block)."""
    lines = []
    for (bench, k, m), g in comp.groupby(["benchmark", "k", "method"], sort=True):
        up = int(((g["diff"] > 0) & g.significant).sum())
        down = int(((g["diff"] < 0) & g.significant).sum())
        toward = int((g.baseline_change > 0).sum())
        lines.append(
            f"- **{bench}, k = {k}**: of {len(g)} layer × relation cells, `{m}` ends significantly "
            f"more aligned than `{g.baseline.iloc[0]}` in {up} and less in {down}; "
            f"`{g.baseline.iloc[0]}` itself ends more aligned than it started in {toward} of "
            f"{len(g)} (point estimates, no interval)."
        )
    return "\n".join(lines) + "\n"


def write_alignment_report(runs: Sequence[Path], baseline: str, out_dir: Path) -> pd.DataFrame:
    """Write ``alignment.{md,html,tex,csv,png,svg}``, ``metrics.json`` and ``findings.md`` into
    ``out_dir``; returns the comparisons' frame."""
    df = load_alignment(runs)
    if baseline not in set(df.method):
        raise DataError(
            f"--baseline: expected a method of the runs, found '{baseline}' "
            f"(methods {sorted(set(df.method))})"
        )
    comp = comparisons(df, baseline)
    tables = [comparison_table(comp), change_table(df)]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "alignment"
    write_table_set(tables, stem, "tab:alignment")
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        comp.to_csv(tmp, index=False, float_format="%.4f")
    plot_alignment(df, stem, baseline)
    write_json(out_dir / "metrics.json", {"baseline": baseline, "comparisons": json_records(comp)})
    write_text(out_dir / "findings.md", findings_markdown(comp))
    return comp
