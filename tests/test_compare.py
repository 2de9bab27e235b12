"""`mot compare --quick` end to end, and the statistics it relies on."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest

from conftest import make_text
from mixture_of_thoughts.cli import main
from mixture_of_thoughts.config import ModelConfig
from mixture_of_thoughts.experiments import stats
from mixture_of_thoughts.experiments.compare import CompareConfig


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    data = d / "corpus.txt"
    data.write_text(make_text(seed=1, n_sentences=2500), encoding="utf-8")  # ~60 KB: blocks of 64 fit both splits
    out = d / "report"
    assert main(["compare", "char", "--quick", "--data", str(data), "--out", str(out), "--quiet"]) == 0
    return out


def test_quick_compare_writes_report_and_plots(quick_report):
    for name in ("report.md", "metrics.json", "frontier.png", "mechanism.png", "training.png"):
        assert (quick_report / name).stat().st_size > 0, name
    text = (quick_report / "report.md").read_text()
    assert "## Verdict" in text and "At matched reference bpc" in text


def test_quick_compare_numbers_move_the_right_way(quick_report):
    m = json.loads((quick_report / "metrics.json").read_text())
    assert m["diffusion"], "the diffusion model is the third contender"
    base = {r["temperature"]: r for r in m["baseline"] if r["top_p"] is None}
    temps = sorted(base)
    # hotter sampling: worse text for the reference model, less likely text for the sampler itself,
    # more diverse branches
    for cold, hot in itertools.pairwise(temps):
        assert base[cold]["ref_bpc"]["mean"] < base[hot]["ref_bpc"]["mean"], (cold, hot)
        assert base[cold]["own_loglik"]["mean"] > base[hot]["own_loglik"]["mean"], (cold, hot)
    assert base[temps[0]]["vendi"]["mean"] < base[temps[-1]]["vendi"]["mean"]
    mot = {(r["route"], r["creativity"], r["temperature"]): r for r in m["mot"]}
    for (route, c, t), r in mot.items():
        if t < 1.0:  # the calibrated temperature, when below 1: better reference bpc than at T=1
            assert r["ref_bpc"]["mean"] < mot[(route, c, 1.0)]["ref_bpc"]["mean"]
    # the calibrated temperature is the baseline temperature whose text scores closest to real text
    human = m["human_ref_bpc"]
    assert m["calibrated_temperature"] == min(temps, key=lambda t: abs(base[t]["ref_bpc"]["mean"] - human))
    for row in m["baseline"] + m["mot"] + m["diffusion"]:
        for key in ("ref_bpc", "self_bleu", "vendi"):
            lo, hi = row[key]["ci"]
            assert lo < row[key]["mean"] < hi  # a real interval: prompts differ, resampling must show it
        # the N branches of a prompt differ, so the one the reference model likes best beats their mean
        assert row["best_of_n_bpc"]["mean"] < row["ref_bpc"]["mean"] - 1e-3, row["label"]
    # the trained models have learned more than the corpus's character frequencies
    text = (quick_report.parent / "corpus.txt").read_text(encoding="utf-8")
    freq = np.array(list(Counter(text).values())) / len(text)
    unigram_bits = float(-(freq * np.log2(freq)).sum())  # ~3.4 bits for this corpus
    assert set(m["val_bpc"]) == {"baseline", "mot", "reference", "diffusion"}
    for name in ("baseline", "mot", "reference"):
        assert m["val_bpc"][name] < unigram_bits - 0.5, name
    assert m["val_bpc"]["diffusion"] < math.log2(len(freq))  # an upper bound, still below a uniform guess
    assert set(m["creativity_correlation"]) == {f"{r}/{k}" for r in m["config"]["routes"]
                                                for k in ("self_bleu", "distinct_3")}


def _mot_config(report):
    return ModelConfig.from_dict(json.loads((report / "runs" / "mot" / "latest" / "config.json").read_text())["model"])


def test_quick_compare_mechanism_covers_the_thought_layers(quick_report):
    m = json.loads((quick_report / "metrics.json").read_text())
    cfg = _mot_config(quick_report)
    layers = m["mechanism"]["layers"]
    assert sorted(layers, key=int) == [str(i) for i in cfg.thought_layer_indices()]
    for layer in layers.values():
        assert len(layer["load"]) == cfg.thoughts.n_branches
        lift = dict(zip(m["mechanism"]["classes"], layer["class_branch_lift"], strict=True))
        # the corpus has no capital letters or digits: those classes have no lift at all
        assert not any(lift["upper"]) and not any(lift["digit"])
        assert layer["max_lift"] == pytest.approx(max(max(row) for row in lift.values()), abs=1e-6)


def test_quick_compare_class_lift_is_one_without_preference(quick_report):
    """Each token selects k of the E branches, so P(branch selected | class) averages k / E over the
    branches whatever the router does: the lift P(branch | class) / (k / E) averages 1 for every class."""
    m = json.loads((quick_report / "metrics.json").read_text())
    for layer in m["mechanism"]["layers"].values():
        lift = dict(zip(m["mechanism"]["classes"], layer["class_branch_lift"], strict=True))
        for cls in ("lower", "space", "punct", "newline"):  # the classes this corpus has
            assert np.mean(lift[cls]) == pytest.approx(1.0, abs=1e-4), cls


def test_compare_config_errors():
    with pytest.raises(ValueError, match="branches"):
        CompareConfig(branches=1)
    with pytest.raises(ValueError, match="dense preset"):
        CompareConfig(preset="cpu-small-mot")
    with pytest.raises(ValueError, match="preset"):
        CompareConfig(preset="nope")


def test_spearman_handles_ties_like_average_ranks():
    # x ranks (ties averaged): [1, 2.5, 2.5, 4] -> 0-based [0, 1.5, 1.5, 3]; y = x ranks exactly -> rho = 1
    assert stats.spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # hand example: ranks x = [0,1,2], y = [0,2,1] -> pearson of those = 0.5
    assert stats.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_units():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    m1, lo1, hi1 = stats.mean_ci(small, stats.bootstrap_indices(20, 500, 1))
    m2, lo2, hi2 = stats.mean_ci(large, stats.bootstrap_indices(2000, 500, 1))
    assert lo1 <= m1 <= hi1 and lo2 <= m2 <= hi2
    assert (hi2 - lo2) < (hi1 - lo1) / 5  # width ~ 1/sqrt(n): 100x the units, ~10x narrower


def _slow_ranks(x):
    """Average ranks (0-based) by counting: values below, plus half the other values equal."""
    return np.array([sum(v < xi for v in x) + (sum(v == xi for v in x) - 1) / 2 for xi in x])


def test_pearson_and_spearman_equal_their_definitions():
    rng = np.random.default_rng(3)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    assert stats.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    xt, yt = rng.integers(0, 4, size=60), rng.integers(0, 3, size=60)  # many ties
    assert stats.spearman(xt, yt) == pytest.approx(np.corrcoef(_slow_ranks(xt), _slow_ranks(yt))[0, 1], abs=1e-12)
    # Spearman sees ranks only: a monotone transform of either variable changes nothing; Pearson it changes
    assert stats.spearman(np.exp(3 * x), y ** 3) == pytest.approx(stats.spearman(x, y), abs=1e-12)
    assert stats.pearson(np.exp(3 * x), y) != pytest.approx(stats.pearson(x, y), abs=1e-3)
    # no variation in one variable: undefined, not 0
    assert math.isnan(stats.pearson(np.ones(5), np.arange(5)))
    assert math.isnan(stats.spearman(np.arange(5), np.full(5, 2.0)))


def test_interpolate_frontier():
    xs, ys = np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0])
    assert stats.interpolate_frontier(xs, ys, 1.5) == pytest.approx(15.0)
    assert math.isnan(stats.interpolate_frontier(xs, ys, 3.5))


# --- the pooled hull (experiments.stats) ---------------------------------------------------------


def _hull_brute(xs, ys, x, upper=True):
    """The hull at x by brute force: the best interpolation over every bracketing pair of points."""
    best = None
    for i in range(len(xs)):
        for j in range(len(xs)):
            if xs[i] <= x <= xs[j]:
                v = ys[i] if xs[j] == xs[i] else ys[i] + (x - xs[i]) / (xs[j] - xs[i]) * (ys[j] - ys[i])
                best = v if best is None else (max(best, v) if upper else min(best, v))
    return float("nan") if best is None else best


def test_hull_at_is_the_concave_majorant():
    from mixture_of_thoughts.experiments.stats import hull_at, hull_vertices

    rng = np.random.default_rng(3)
    xs, ys = rng.uniform(0, 3, (6, 9)), rng.uniform(0, 1, (6, 9))
    q = rng.uniform(-0.2, 3.2, 6)
    got = hull_at(xs, ys, q)
    want = [_hull_brute(xs[r], ys[r], q[r]) for r in range(6)]
    np.testing.assert_allclose(got, want, equal_nan=True)
    low = hull_at(xs, ys, q, upper=False)
    np.testing.assert_allclose(low, [_hull_brute(xs[r], ys[r], q[r], upper=False) for r in range(6)], equal_nan=True)
    # on a grid: above every point, concave, and NaN outside the points' range
    grid = np.linspace(xs[0].min(), xs[0].max(), 101)
    h = hull_at(np.broadcast_to(xs[0], (101, 9)), np.broadcast_to(ys[0], (101, 9)), grid)
    assert np.all(np.diff(h, 2) <= 1e-9)
    for x, y in zip(xs[0], ys[0], strict=True):
        assert hull_at(xs[0], ys[0], x)[0] >= y - 1e-12
    assert np.isnan(hull_at(xs[0], ys[0], xs[0].max() + 0.1)[0])
    # non-finite points are left out; the vertices are the pair that makes the hull
    xs2 = np.array([0.0, 1.0, 2.0, np.nan])
    ys2 = np.array([0.0, 1.0, 1.2, 9.0])
    assert hull_at(xs2, ys2, 1.5)[0] == pytest.approx(1.1)
    assert hull_vertices(xs2, ys2, 1.5) == (1, 2) and hull_vertices(xs2, ys2, 3.0) is None


def test_hull_saturation_gaps():
    from mixture_of_thoughts.experiments.stats import hull_saturation

    xs = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    ys = np.sqrt(xs)  # concave: every point is on the hull, so dropping any point lowers it somewhere
    sat = hull_saturation(xs, ys, np.array([0.25, 0.75, 1.25, 1.75]), reps=50, seed=0)
    assert [e["points"] for e in sat] == [2, 3, 4, 5]
    assert all(e["mean_gap"] >= 0 for e in sat) and sat[-1]["mean_gap"] == 0 and sat[-1]["coverage"] == 1
    assert sat[0]["mean_gap"] > sat[2]["mean_gap"] > 0 and sat[0]["coverage"] < 1
    assert hull_saturation(xs, ys, np.array([1.0]), reps=50, seed=0) == hull_saturation(
        xs, ys, np.array([1.0]), reps=50, seed=0)


# ------------------------------------------------------------------------------------ the one matched statistic


def _setting_and_baselines(seed=0, n_units=30, n_base=5, reps=200):
    rng = np.random.default_rng(seed)
    idx = stats.bootstrap_indices(n_units, reps, seed)
    qual = np.linspace(1.0, 2.0, n_base)[None, :] + 0.2 * rng.normal(size=(n_units, n_base))
    div = np.sqrt(qual - 0.5) + 0.2 * rng.normal(size=(n_units, n_base))
    bx, by = stats.resampled_means(qual, idx), stats.resampled_means(div, idx)
    sx = stats.resampled_means(1.5 + 0.2 * rng.normal(size=n_units), idx)
    sy = stats.resampled_means(1.1 + 0.2 * rng.normal(size=n_units), idx)
    return sx, sy, bx, by


def test_matched_reads_the_line_or_the_hull_resample_by_resample():
    sx, sy, bx, by = _setting_and_baselines()
    line = stats.matched(sx, sy, bx, by, frontier="line")
    hull = stats.matched(sx, sy, bx, by, frontier="hull")
    by_hand = np.array([sy[r] - stats.interpolate_frontier(bx[r], by[r], sx[r]) for r in range(len(sx))])
    assert line["delta"] == pytest.approx(by_hand[0]) and line["frontier"] == "line"
    assert line["ci"] == pytest.approx(list(stats.interval(by_hand[1:])))
    env = stats.hull_at(bx, by, sx)
    assert hull["delta"] == pytest.approx(sy[0] - env[0]) and hull["baseline"] == pytest.approx(env[0])
    # the hull is the best mixture, never below the line through the same points
    assert hull["baseline"] >= line["baseline"] - 1e-12 and hull["delta"] <= line["delta"] + 1e-12
    assert line["covered"] == 1.0 and hull["covered"] == 1.0


def test_matched_has_one_nan_policy():
    sx, sy, bx, by = _setting_and_baselines()
    assert stats.matched(sx + 10.0, sy, bx, by) is None  # outside the baselines' range: no comparison
    edge = sx - sx[0] + bx[0].max() - 0.01  # inside on all units, outside on some resamples
    m = stats.matched(edge, sy, bx, by, frontier="line")
    outside = ~np.isfinite([stats.interpolate_frontier(bx[r], by[r], edge[r]) for r in range(1, len(edge))])
    assert 0 < m["covered"] < 1 and m["covered"] == pytest.approx(1 - outside.mean())
    assert np.isfinite(m["ci"]).all()  # the interval is over the resamples that have a comparison
    lower = stats.matched(sx, sy, bx, by, upper=False)
    assert lower["baseline"] <= stats.matched(sx, sy, bx, by)["baseline"]
    with pytest.raises(ValueError, match="frontier"):
        stats.matched(sx, sy, bx, by, frontier="spline")


def test_resampled_means_leave_out_units_without_a_value():
    per = np.array([1.0, np.nan, 3.0, 5.0])
    idx = np.array([[0, 1, 1, 2], [1, 1, 1, 1]])
    out = stats.resampled_means(per, idx)
    assert out[0] == pytest.approx(3.0) and out[1] == pytest.approx(2.0) and np.isnan(out[2])
