"""`mot compare --quick` end to end, and the statistics it relies on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import make_text
from mixture_of_thoughts.cli import main
from mixture_of_thoughts.experiments import stats
from mixture_of_thoughts.experiments.compare import CompareConfig


def _numbers(obj, path=""):
    """Every number in a JSON tree, with its path."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}/{i}")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    data = d / "corpus.txt"
    data.write_text(make_text(seed=1, n_sentences=2500), encoding="utf-8")  # ~60 KB: blocks of 64 fit both splits
    out = d / "report"
    assert main(["compare", "--quick", "--data", str(data), "--out", str(out), "--quiet"]) == 0
    return out


def test_quick_compare_writes_report_and_plots(quick_report):
    for name in ("report.md", "metrics.json", "frontier.png", "mechanism.png", "training.png"):
        assert (quick_report / name).stat().st_size > 0, name
    text = (quick_report / "report.md").read_text()
    assert "## Verdict" in text and "At matched reference bpc" in text


def test_quick_compare_numbers_are_finite_and_in_range(quick_report):
    m = json.loads((quick_report / "metrics.json").read_text())
    nums = list(_numbers(m))
    assert nums and all(math.isfinite(v) for _, v in nums)
    n = m["config"]["branches"]
    assert m["diffusion"], "the diffusion model is the third contender"
    for row in m["baseline"] + m["mot"] + m["diffusion"]:
        assert 0 < row["ref_bpc"]["mean"] < 20
        assert 0 <= row["self_bleu"]["mean"] <= 100
        assert 0 <= row["distinct_2"]["mean"] <= 1 and 0 <= row["distinct_3"]["mean"] <= 1
        assert 1 - 1e-6 <= row["vendi"]["mean"] <= n + 1e-6
        for key in ("ref_bpc", "self_bleu", "vendi"):
            lo, hi = row[key]["ci"]
            assert lo <= row[key]["mean"] + 1e-9 and row[key]["mean"] <= hi + 1e-9
        assert row["best_of_n_bpc"]["mean"] <= row["ref_bpc"]["mean"] + 1e-9  # the best is never worse than the mean
    assert set(m["val_bpc"]) == {"baseline", "mot", "reference", "diffusion"}
    for v in m["val_bpc"].values():
        assert 0 < v < math.log2(65)  # better than a uniform guess over a <=65-character vocabulary
    for layer in m["mechanism"]["layers"].values():
        assert abs(sum(layer["load"]) - 1) < 1e-4
        assert 0 <= layer["branch_diversity"] <= 2
    for c in m["creativity_correlation"].values():
        for v in c.values():
            assert v is None or -1 - 1e-9 <= v <= 1 + 1e-9


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


def test_interpolate_frontier():
    xs, ys = np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0])
    assert stats.interpolate_frontier(xs, ys, 1.5) == pytest.approx(15.0)
    assert math.isnan(stats.interpolate_frontier(xs, ys, 3.5))
