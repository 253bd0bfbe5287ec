"""Tables of paired comparisons: the ablation table of the default run, the regime study's and the
replicate study's.

Each pair ``[a, b]`` becomes a row of paired differences ``a − b`` (percentage points, 95% CI over
the episodes both ran) per benchmark and k. The ablation table isolates what each ingredient adds
(activations vs random membership, searched vs fixed counts); the regime table shows in which regime
(backbone width, fine-tuning length, grouped layers, in- or cross-domain target, k) a grouped method
beats its matching baseline and where it does not. The replicate table repeats comparisons on
source networks pre-trained with other seeds (and new episodes), and says whether a difference
survives a new source network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from kshot.errors import DataError, suggest
from kshot.figures import plot_forest
from kshot.io import atomic_path, write_text
from kshot.report import load_runs
from kshot.stats import significant
from kshot.tables import (
    FOREST_COLUMNS,
    UNCORRECTED,
    ablation_table,
    chance_note,
    html_page,
    replicates_table,
    to_latex,
    to_markdown,
)

NOTES = {
    "ablation": "Each row a − b in percentage points, mean ± 95% CI over the episodes both methods "
    "ran; * when the CI excludes 0. grouped − grouped_random isolates what the activations add "
    "beyond the reduced degrees of freedom; grouped_pool − grouped what unlabeled target images "
    f"add to the grouping; grouped_rl − grouped what the searched counts add.{UNCORRECTED}",
    "regime": "Each row a − b in percentage points, mean ± 95% CI over the episodes both methods "
    "ran; * when the CI excludes 0. `_wide` benchmarks use LeNet at twice the width, `_resnet` "
    "ones torchvision's ResNet-18 at 32x32; `_long` "
    "methods fine-tune for 300 steps instead of 100; `_conv` / `_fc` group only those layers; "
    f"`_triplet` methods add the triplet term to cross-entropy (k = 5 and 10 only).{UNCORRECTED}",
}
TITLES = {
    "ablation": "Ablations: paired differences of test accuracy",
    "regime": "Regime study: paired differences of test accuracy",
    "replicates": "Replicate study: paired differences of test accuracy per source network",
}


def forest_rows(data: pd.DataFrame) -> pd.DataFrame:
    """The forest plot's rows of a comparison table's data: a panel per benchmark, a row per pair
    (per source seed, then across them, for the replicate study) and k, coloured by pair."""
    rows = []
    for r in data.itertuples():
        pair = f"{r.a} − {r.b}"
        label = pair
        if "seed" in data:
            label += f", source seed {int(r.seed)}" if pd.notna(r.seed) else ", across sources"
        rows.append(
            {
                "panel": r.benchmark,
                "series": pair,
                "row": f"{label}, k={int(r.k)}",
                "diff": r.diff,
                "ci": r.ci95,
                "significant": significant(r.diff, r.ci95),
            }
        )
    return pd.DataFrame(rows, columns=FOREST_COLUMNS)


def _cells(rows: pd.DataFrame) -> str:
    """``rows``' cells as "fashion k=1, 5 and digits k=10"."""
    parts = [
        f"{bench} k={', '.join(str(int(k)) for k in sorted(g.k))}"
        for bench, g in rows.groupby("benchmark", sort=True)
    ]
    return " and ".join(parts)


def _summary(g: pd.DataFrame) -> tuple[str, list[str]]:
    """The mean of ``g``'s paired differences and where its interval excludes 0, each way."""
    sig = g[[significant(d, h) for d, h in zip(g["diff"], g.ci95, strict=True)]]
    up, down = sig[sig["diff"] > 0], sig[sig["diff"] < 0]
    where = [f"above in {_cells(up)}"] if len(up) else []
    where += [f"below in {_cells(down)}"] if len(down) else []
    mean = g["diff"].mean()
    mean_text = "0.00" if round(mean, 2) == 0 else f"{mean:+.2f}"
    return f"{mean_text} pp over {len(g)} cell{'s' * (len(g) != 1)}", [
        "; ".join(where) if where else "in no cell"
    ]


def comparison_findings(data: pd.DataFrame, kind: str, backbone_of: Mapping[str, str] | None = None) -> str:
    """What a comparison table found, one bullet per pair (the README's studies block): the mean
    paired difference over the cells (benchmark x k) and the cells where its interval excludes 0.

    For ``regime`` (and ``ablation``) the intervals are over each cell's episodes; for
    ``replicates`` they are the across-sources rows (the t-interval over the source networks'
    means), with how many (seed, cell) replicates were significant each way. Where
    ``backbone_of`` (benchmark -> its source's backbone) puts a pair's cells on more than one
    backbone, the pair's bullet gives each backbone's mean and cells apart: a LeNet cell and a
    ResNet-18 cell answer different questions."""
    if kind == "replicates":
        across, per_seed = data[data.seed.isna()], data[data.seed.notna()]
        seeds = per_seed.seed.nunique()
        lines = [
            "Mean paired difference over the cells (benchmark x k), the cells where the 95% interval "
            f"over the {seeds} source networks' means excludes 0, and how many (source, cell) pairs "
            "are significant on their own episodes."
        ]
    else:
        across, per_seed = data, None
        lines = [
            "Mean paired difference over the cells (benchmark x k) and the cells where its 95% interval "
            "excludes 0."
        ]
    backbone_of = backbone_of or {}
    for (a, b), g in across.groupby(["a", "b"], sort=False):
        backbones = g.benchmark.map(lambda bench: backbone_of.get(bench, ""))
        split = backbones.nunique() > 1
        parts = []
        for backbone, part in g.groupby(backbones, sort=False):
            head, where = _summary(part)
            if per_seed is not None:
                s = per_seed[(per_seed.a == a) & (per_seed.b == b) & per_seed.benchmark.isin(part.benchmark)]
                flags = [significant(d, h) for d, h in zip(s["diff"], s.ci95, strict=True)]
                n_up = sum(f and d > 0 for f, d in zip(flags, s["diff"], strict=True))
                n_down = sum(f and d < 0 for f, d in zip(flags, s["diff"], strict=True))
                where.append(f"per source: {n_up} of {len(s)} above, {n_down} below")
            on = f"on {backbone} " if split else ""
            parts.append(f"{on}{head} ({'; '.join(where)})")
        lines.append(f"- `{a} − {b}` {'; '.join(parts)}.")
    defined = across[across.ci95.notna()]  # a one-episode (or one-source) cell has no interval
    flags = [significant(d, h) for d, h in zip(defined["diff"], defined.ci95, strict=True)]
    lines += ["", chance_note(sum(flags), len(flags))]  # a paragraph of its own, not the last bullet's
    return "\n".join(lines) + "\n"


def write_comparisons(
    runs: Sequence[Path],
    pairs: Sequence[tuple[str, str]],
    out_stem: Path,
    kind: str,
    replicate_of: Mapping[str, tuple[str, int]] | None = None,
    figure: Path | None = None,
    findings: Path | None = None,
    backbone_of: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Write ``<out_stem>.{md,html,csv,tex}`` for ``kind`` ``ablation``, ``regime`` or ``replicates``
    (which needs ``replicate_of``: each run's benchmark -> (base benchmark, source seed)), where
    ``figure`` is given its forest plot ``<figure>.{png,svg}``, and where ``findings`` is given
    :func:`comparison_findings` there (per backbone where ``backbone_of`` names more than one);
    returns the CSV frame."""
    df = load_runs(list(runs))
    found = sorted(set(df.method))
    for pair in pairs:
        for method in pair:
            if method not in found:
                raise DataError(
                    f"pair {pair[0]}:{pair[1]}: expected methods of the given runs, found no run of "
                    f"'{method}'{suggest(method, found)} (runs of {found})"
                )
    if kind == "replicates":
        table = replicates_table(df, pairs, replicate_of or {}, title=TITLES[kind])
    else:
        table = ablation_table(df, pairs, title=TITLES[kind], note=NOTES[kind])
    write_text(out_stem.with_suffix(".md"), to_markdown(table))
    write_text(out_stem.with_suffix(".html"), html_page([table], table.title))
    write_text(out_stem.with_suffix(".tex"), to_latex(table, f"tab:{kind}"))
    with atomic_path(out_stem.with_suffix(".csv")) as tmp:
        table.data.to_csv(tmp, index=False, float_format="%.4f")
    if figure is not None:
        plot_forest(forest_rows(table.data), figure, TITLES[kind], "a − b (percentage points)")
    if findings is not None:
        write_text(findings, comparison_findings(table.data, kind, backbone_of))
    return table.data
