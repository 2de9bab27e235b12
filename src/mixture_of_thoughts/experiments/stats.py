"""Small statistics for the experiments: paired bootstrap intervals and correlations.

Bootstrap (Efron & Tibshirani 1993): prompts are the resampling unit, and every contender is
resampled with the *same* prompt indices, so differences between contenders are paired.
Percentile intervals at 95%.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def bootstrap_indices(n_units: int, reps: int, seed: int) -> np.ndarray:
    """(reps, n_units) indices of units drawn with replacement, from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n_units, size=(reps, n_units))


def interval(samples: np.ndarray) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` at :data:`CONFIDENCE`."""
    lo, hi = np.nanpercentile(samples, [50 * (1 - CONFIDENCE), 100 - 50 * (1 - CONFIDENCE)])
    return float(lo), float(hi)


def mean_ci(per_unit: np.ndarray, idx: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``per_unit`` (n_units,) and its bootstrap interval over resamples ``idx``."""
    return (float(np.mean(per_unit)), *interval(per_unit[idx].mean(axis=1)))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    vals, inv = np.unique(x, return_inverse=True)
    sums = np.bincount(inv, weights=ranks)
    counts = np.bincount(inv)
    return (sums / counts)[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average ranks."""
    return pearson(_ranks(x), _ranks(y))


def interpolate_frontier(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Value of the piecewise-linear curve through (xs, ys) at ``x``; NaN outside the curve's range."""
    order = np.argsort(xs)
    xs, ys = np.asarray(xs)[order], np.asarray(ys)[order]
    if not xs[0] <= x <= xs[-1]:
        return float("nan")
    return float(np.interp(x, xs, ys))
