"""The two statistics every table and figure uses: a mean with its t-interval, and the paired
difference of two methods over the episodes both ran.

Episodes are the unit of replication: every method runs on the same episodes with the same head
initialisation, so a comparison is paired and its interval is computed on per-episode differences,
which removes the (large) episode-to-episode variation that both methods share.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean of ``values [n]`` and the half-width of its ``level`` t-interval (``nan`` for n = 1)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, half


def paired_diff(a: pd.Series, b: pd.Series, scale: float = 100.0) -> tuple[float, float, int]:
    """Mean and CI half-width of ``scale * (a - b)`` over the index labels ``a`` and ``b`` share
    (episodes), and how many they share; ``(nan, nan, 0)`` when none."""
    common = a.index.intersection(b.index)
    if not len(common):
        return math.nan, math.nan, 0
    d, h = mean_ci((a[common] - b[common]).to_numpy() * scale)
    return d, h, len(common)


def significant(diff: float, half: float) -> bool:
    """Whether the interval ``diff ± half`` excludes 0 (never for a single episode)."""
    return not math.isnan(half) and abs(diff) > half
