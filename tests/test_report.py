import math

import numpy as np
import pandas as pd
import pytest

from kshot.report import markdown_table, mean_ci, summarise


def test_mean_ci_matches_the_t_interval():
    mean, half = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci(np.array([5.0]))[1])


def _runs():
    rows = []
    for ep in range(5):
        rows.append(
            {
                "benchmark": "b",
                "method": "full",
                "k": 1,
                "episode": ep,
                "test_acc": 0.5 + 0.05 * ep,
                "val_acc": 0.5,
                "diverged_step": None,
            }
        )
        rows.append(
            {
                "benchmark": "b",
                "method": "better",
                "k": 1,
                "episode": ep,
                "test_acc": 0.52 + 0.05 * ep + 0.001 * ep,
                "val_acc": 0.5,
                "diverged_step": None,
            }
        )
    return pd.DataFrame(rows)


def test_paired_difference_uses_per_episode_differences():
    s = summarise(_runs(), "full").set_index("method")
    assert s.loc["better", "diff_vs_baseline"] == pytest.approx(2.2)
    assert s.loc["better", "significant"]
    assert s.loc["full", "ci95"] > 5  # unpaired spread is large, the paired one small
    assert s.loc["better", "diff_ci95"] < 1


def test_markdown_table_marks_the_best_mean_and_significant_differences():
    md = markdown_table(summarise(_runs(), "full"), "full")
    assert "| better | **62.2 ± 10.0** |" in md
    assert "2.2 ± 0.2 *" in md
