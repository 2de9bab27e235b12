"""Small statistics for the experiments: paired bootstrap intervals, correlations, and the one
matched-quality comparison every report's verdict uses (:func:`matched`).

Bootstrap (Efron & Tibshirani 1993): prompts (or puzzles) are the resampling unit, and every
contender is resampled with the *same* indices, so differences between contenders are paired.
Percentile intervals at 95%.

**NaN policy** (one for every report): a resample where the setting's quality lies outside the
baselines' range has no comparison (NaN) and is left out of the interval; :func:`matched` reports the
fraction of resamples that had one (``covered``), and no comparison at all (None) when the setting's
point estimate lies outside the range.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

CONFIDENCE = 0.95
SEED_STRIDE = 10_000_019  # a sweep's seed s starts its rows at s * SEED_STRIDE: seeds of different sweeps never meet


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


def hull_at(xs: np.ndarray, ys: np.ndarray, x: np.ndarray | float, upper: bool = True) -> np.ndarray:
    """The upper concave (``upper``) or lower convex hull of the points ``(xs, ys)`` evaluated at ``x``.

    ``xs`` and ``ys`` are ``(R, N)``: N points in each of R resamples (or ``(N,)`` for one set), ``x`` is
    ``(R,)`` or a float. Non-finite points are left out. The hull at ``x`` is the best value of a
    *mixture* of two points whose x-coordinates bracket ``x`` (in one dimension two points are enough):
    any such mixture is reachable by running either setting on a share of the prompts, so a contender
    that is not above the hull is not above what the baselines can do together. NaN where ``x`` lies
    outside the points' x-range. Vectorised over resamples and point pairs (``R x N x N``).
    """
    xs, ys = np.atleast_2d(np.asarray(xs, float)), np.atleast_2d(np.asarray(ys, float))
    x = np.broadcast_to(np.asarray(x, float), (xs.shape[0],))
    ok = np.isfinite(xs) & np.isfinite(ys)
    xi, xj = xs[:, :, None], xs[:, None, :]
    yi, yj = ys[:, :, None], ys[:, None, :]
    q = x[:, None, None]
    valid = ok[:, :, None] & ok[:, None, :] & (xi <= q) & (q <= xj)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(xj > xi, (q - xi) / (xj - xi), 0.0)
    val = yi + t * (yj - yi)
    fill = -np.inf if upper else np.inf
    val = np.where(valid, val, fill)
    best = val.max((1, 2)) if upper else val.min((1, 2))
    return np.where(np.isfinite(best), best, np.nan)


FRONTIERS = ("hull", "line")


def frontier_at(xs: np.ndarray, ys: np.ndarray, x: np.ndarray, *, frontier: str = "hull",
                upper: bool = True) -> np.ndarray:
    """The baselines' frontier at quality ``x``, per resample.

    Args:
        xs, ys: (R, N) the N baseline settings' quality and metric in each of R resamples.
        x: (R,) the quality to read the frontier at.
        frontier: ``"hull"``, the upper concave (``upper``) or lower convex hull of all the points
            pooled (:func:`hull_at`: what a mixture of baseline settings reaches), or ``"line"``, the
            piecewise-linear curve through the points in order of quality (one family's line:
            :func:`interpolate_frontier`).
    Returns:
        (R,) the frontier's value, NaN where ``x`` lies outside the points' range.
    """
    if frontier not in FRONTIERS:
        raise ValueError(f"frontier must be one of {FRONTIERS}, got {frontier!r}")
    xs, ys = np.atleast_2d(np.asarray(xs, float)), np.atleast_2d(np.asarray(ys, float))
    x = np.broadcast_to(np.asarray(x, float), (xs.shape[0],))
    if frontier == "hull":
        return hull_at(xs, ys, x, upper=upper)
    out = np.full(xs.shape[0], np.nan)
    for r in range(xs.shape[0]):
        ok = np.isfinite(xs[r]) & np.isfinite(ys[r])
        if ok.sum() >= 2 and np.isfinite(x[r]):
            out[r] = interpolate_frontier(xs[r][ok], ys[r][ok], x[r])
    return out


def matched(x: np.ndarray, y: np.ndarray, base_x: np.ndarray, base_y: np.ndarray, *, frontier: str = "hull",
            upper: bool = True) -> dict | None:
    """A setting's metric minus the baselines' frontier at the setting's own quality, paired over resamples.

    Args:
        x, y: (R + 1,) the setting's quality and metric: entry 0 over all units, entries 1..R over
            each bootstrap resample (the same resamples as the baselines').
        base_x, base_y: (R + 1, N) the same for N baseline settings.
        frontier, upper: see :func:`frontier_at`.
    Returns:
        None when entry 0 of ``x`` lies outside the baselines' range (no comparison); otherwise
        ``{"delta", "ci", "baseline", "baseline_ci", "covered", "frontier"}``: the point difference,
        its 95% interval over the resamples that have a comparison (the module's NaN policy), the
        frontier's value and interval, and the fraction of resamples with a comparison.
    """
    env = frontier_at(base_x, base_y, x, frontier=frontier, upper=upper)
    d = np.asarray(y, float) - env
    if not np.isfinite(d[0]):
        return None
    defined = np.isfinite(d[1:])
    ci = list(interval(d[1:])) if defined.any() else [float("nan"), float("nan")]
    e_ci = list(interval(env[1:])) if defined.any() else [float("nan"), float("nan")]
    return {"delta": float(d[0]), "ci": ci, "baseline": float(env[0]), "baseline_ci": e_ci,
            "covered": float(defined.mean()), "frontier": frontier}


def resampled_means(per_unit: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(R + 1, ...) the mean of ``per_unit`` (units first) over all units (entry 0) and over each
    resample of ``idx`` (R, n_units): the input :func:`matched` takes. Units without a value (NaN)
    are left out of each mean (NaN only where no unit has one)."""
    per_unit = np.asarray(per_unit, float)
    with warnings.catch_warnings():  # a unit without a value (NaN: e.g. an empty text) is left out
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.concatenate([np.nanmean(per_unit, 0, keepdims=True), np.nanmean(per_unit[idx], 1)])


def hull_vertices(xs: np.ndarray, ys: np.ndarray, x: float) -> tuple[int, int] | None:
    """The indices ``(i, j)`` of the two points whose mixture gives the upper hull at ``x`` (``i == j``
    when one point lies there), or None outside the points' range."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    best, arg = -np.inf, None
    for i in np.flatnonzero(ok & (xs <= x)):  # N <= a few dozen points: the pairs are few
        for j in np.flatnonzero(ok & (xs >= x)):
            v = ys[i] if xs[j] == xs[i] else ys[i] + (x - xs[i]) / (xs[j] - xs[i]) * (ys[j] - ys[i])
            if v > best:
                best, arg = v, (int(i), int(j))
    return arg


def hull_saturation(xs: np.ndarray, ys: np.ndarray, queries: np.ndarray, reps: int = 200,
                    seed: int = 0) -> list[dict]:
    """How far the upper hull of random subsets of the points lies below the hull of all of them.

    For each subset size k = 2 ... N, ``reps`` subsets of k of the N points ``(xs, ys)`` are drawn
    (seeded); at each query x the gap is the full hull minus the subset's hull (>= 0). Returns per k:
    the mean and the largest gap over subsets and queries where the subset's hull is defined, and
    ``coverage``, the fraction of (subset, query) pairs where it is (the subset spans the query). A hull
    that has stopped moving has gaps near 0 well before k = N.
    """
    xs, ys, queries = np.asarray(xs, float), np.asarray(ys, float), np.asarray(queries, float)
    n = len(xs)
    full = hull_at(np.broadcast_to(xs, (len(queries), n)), np.broadcast_to(ys, (len(queries), n)), queries)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(2, n + 1):
        keep = np.argsort(rng.random((reps, n)), axis=1)[:, :k]  # reps random k-subsets
        sx, sy = xs[keep], ys[keep]  # (reps, k)
        R, Q = reps, len(queries)
        sub = hull_at(np.repeat(sx, Q, 0), np.repeat(sy, Q, 0), np.tile(queries, R)).reshape(R, Q)
        gap = full[None, :] - sub
        defined = np.isfinite(gap)
        out.append({"points": k, "mean_gap": float(np.nanmean(gap)) if defined.any() else float("nan"),
                    "max_gap": float(np.nanmax(gap)) if defined.any() else float("nan"),
                    "coverage": float(defined.mean())})
    return out


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a success rate."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)
