"""The regime study's table: where does grouping help?

Each configured pair ``[a, b]`` becomes a row of paired differences ``a − b`` (percentage points,
95% CI over the episodes both ran) per benchmark and k, so a reader sees at once in which regime
(backbone width, fine-tuning length, grouped layers, in- or cross-domain target, k) a grouped method
beats its matching baseline and where it does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kshot.io import atomic_path, write_text
from kshot.report import load_runs
from kshot.tables import ablation_table, to_latex, to_markdown


def write_regime(runs: Sequence[Path], pairs: Sequence[tuple[str, str]], tables_dir: Path) -> pd.DataFrame:
    """Write ``regime.{md,csv,tex}`` to ``tables_dir``; returns the per-cell frame of the CSV."""
    table = ablation_table(
        load_runs(list(runs)),
        pairs,
        title="Regime study: paired differences of test accuracy",
        note="Each row a − b in percentage points, mean ± 95% CI over the episodes both methods "
        "ran; * when the CI excludes 0. `_wide` benchmarks use LeNet at twice the width; `_long` "
        "methods fine-tune for 300 steps instead of 100; `_conv` / `_fc` group only those layers.",
    )
    write_text(tables_dir / "regime.md", to_markdown(table))
    write_text(tables_dir / "regime.tex", to_latex(table, "tab:regime"))
    with atomic_path(tables_dir / "regime.csv") as tmp:
        table.data.to_csv(tmp, index=False, float_format="%.4f")
    return table.data
