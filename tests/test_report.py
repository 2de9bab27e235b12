"""Direct tests of ``experiments.report.write_report`` on synthetic sweep results (no training).

The results dict is built the way ``mot compare`` builds it: per-prompt arrays for every setting go
through ``compare.summarise``. The synthetic numbers are chosen so that the expected verdicts follow
by hand: the baseline's temperature frontier is linear in reference bpc (2.0, 2.5, 3.0 bpc at
T = 0.7, 1.0, 1.3), and the pre-declared MoT setting sits at 2.5 bpc, where the frontier reads
self-BLEU 40, distinct-3 0.7 and Vendi 3.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from mixture_of_thoughts.experiments.compare import CHAR_CLASSES, CompareConfig, Setting, summarise
from mixture_of_thoughts.experiments.report import write_report

P = 12  # prompts (x 1 seed): the bootstrap units
# frontier: (temperature, ref bpc, self-BLEU, distinct-3, Vendi)
FRONTIER = [(0.7, 2.0, 60.0, 0.5, 2.0), (1.0, 2.5, 40.0, 0.7, 3.0), (1.3, 3.0, 20.0, 0.9, 4.0)]
# the pre-declared MoT setting (T=1, c=1, token routing) against the frontier's value at 2.5 bpc
OUTCOMES = {
    "win": {"self_bleu": 30.0, "distinct_3": 0.8, "vendi": 3.5},  # more diverse on all three measures
    "lose": {"self_bleu": 50.0, "distinct_3": 0.6, "vendi": 2.5},  # less diverse on all three
    "tie": {"self_bleu": 40.0, "distinct_3": 0.7, "vendi": 3.0},  # on the frontier, with 10x the noise
}
MECHANISM = {
    "layers": {
        "0": {"router_entropy": 1.2345, "branch_diversity": 0.4321, "load": [0.4, 0.3, 0.2, 0.1],
              "class_branch_lift": [[1.0, 1.5, 0.5, 1.0]] * len(CHAR_CLASSES), "max_lift": 1.5},
        "1": {"router_entropy": 0.9876, "branch_diversity": 0.1111, "load": [0.25, 0.25, 0.25, 0.25],
              "class_branch_lift": [[1.8, 0.2, 1.0, 1.0]] * len(CHAR_CLASSES), "max_lift": 1.8},
    },
    "classes": list(CHAR_CLASSES),
}
VAL_BPC = {"baseline": 2.4567, "mot": 2.3456, "reference": 2.4444, "diffusion": 2.9876}


def _setting(rng, contender, T, bpc, sb, d3, vendi, *, top_p=None, creativity=None, route=None, sd=1.0):
    s = Setting(contender, T, top_p=top_p, creativity=creativity, route=route)
    ref_bpc = bpc + rng.normal(0, 0.01, P)
    s.per_prompt = {
        "ref_bpc": ref_bpc, "best_of_n_bpc": ref_bpc - 0.3, "self_bleu": sb + rng.normal(0, sd, P),
        "distinct_2": np.full(P, d3 - 0.1), "distinct_3": d3 + rng.normal(0, 0.01 * sd, P),
        "vendi": vendi + rng.normal(0, 0.05 * sd, P),
        "example": np.array([f"{s.label} branch {i}\nsecond line" for i in range(4)], dtype=object),
    }
    if contender != "diffusion":
        s.per_prompt["own_loglik"] = -bpc * math.log(2) + rng.normal(0, 0.01, P)
    return s


def build(outcome: str, out):
    rng = np.random.default_rng(0)
    cfg = CompareConfig.quick(prompts=P, seeds=1, bootstrap=300, routes=("token",), out=str(out),
                              command="mot compare --quick (synthetic)")
    base = [_setting(rng, "baseline", T, b, sb, d3, v) for T, b, sb, d3, v in FRONTIER]
    base.append(_setting(rng, "baseline", 1.0, 2.3, 45.0, 0.65, 2.8, top_p=0.9))
    want = OUTCOMES[outcome]
    mot = [  # creativity 0, 1, 2 at T=1: self-BLEU falls with creativity in "win", rises in "lose"
        _setting(rng, "mot", 1.0, 2.4, 2 * 40.0 - want["self_bleu"], 0.7, 3.0, creativity=0.0, route="token"),
        _setting(rng, "mot", 1.0, 2.5, want["self_bleu"], want["distinct_3"], want["vendi"], creativity=1.0,
                 route="token", sd=10.0 if outcome == "tie" else 1.0),
        _setting(rng, "mot", 1.0, 2.6, 2 * want["self_bleu"] - 40.0, 0.7, 3.0, creativity=2.0, route="token"),
        # the calibrated temperature: its quality (3.5 bpc) lies outside the frontier's 2.0 - 3.0
        _setting(rng, "mot", 1.3, 3.5, 15.0, 0.9, 4.0, creativity=1.0, route="token"),
    ]
    diff = [_setting(rng, "diffusion", 1.0, 2.75, 35.0, 0.8, 3.5),  # frontier at 2.75: self-BLEU 30
            _setting(rng, "diffusion", 0.8, 5.0, 10.0, 0.95, 4.5)]  # outside the frontier
    for name in ("baseline", "mot", "reference"):  # training curves, as the trainer writes them
        d = out / "runs" / name
        d.mkdir(parents=True)
        d.joinpath("metrics.jsonl").write_text("".join(json.dumps({"step": s, "val_bpc": 4.0 - s / 100}) + "\n"
                                                       for s in (0, 50, 100)))
    res = summarise(cfg, base, mot, dict(VAL_BPC), 2.6, 1.3, MECHANISM, out, diff)
    write_report(res, out)
    return res, base, mot, diff


@pytest.fixture(scope="module", params=list(OUTCOMES))
def report(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    res, base, mot, diff = build(request.param, out)
    return request.param, out, res, base, mot, diff, (out / "report.md").read_text(encoding="utf-8")


def _frontier_at(base, metric, x):
    temp = [s for s in base if s.top_p is None]
    bx = np.array([s.per_prompt["ref_bpc"].mean() for s in temp])
    by = np.array([s.per_prompt[metric].mean() for s in temp])
    order = np.argsort(bx)
    return float(np.interp(x, bx[order], by[order]))


def _verdict(text: str, name: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("- At matched reference bpc") and f" {name} " in ln]
    assert len(lines) == 1, (name, lines)
    return lines[0]


@pytest.mark.parametrize("metric, name, lower_is_more_diverse",
                         [("self_bleu", "self-BLEU", True), ("distinct_3", "distinct-3", False),
                          ("vendi", "Vendi score", False)])
def test_verdict_follows_from_the_numbers(report, metric, name, lower_is_more_diverse):
    outcome, _, _, base, mot, _, text = report
    primary = mot[1]
    delta = primary.per_prompt[metric].mean() - _frontier_at(base, metric, primary.per_prompt["ref_bpc"].mean())
    hand = OUTCOMES[outcome][metric] - OUTCOMES["tie"][metric]
    line = _verdict(text, name)
    assert "MoT (MoT T=1 c=1 token)" in line
    assert f" {abs(delta):.3g} {'lower' if delta < 0 else 'higher'} than the temperature-swept baseline" in line
    lo, hi = (float(v) for v in re.search(r"95% CI (\S+) to (\S+);", line).groups())
    assert lo < delta < hi  # the interval brackets the difference
    if outcome == "tie":
        assert lo < 0 < hi
        assert line.endswith(f"(95% CI {lo:.3g} to {hi:.3g}; the 95% interval contains 0): MoT is not distinguishable "
                             "from the baseline on this measure.")
        return
    assert delta == pytest.approx(hand, abs=0.05 * abs(hand))  # the synthetic data are what they claim
    assert hi < 0 or lo > 0
    assert "significant at 95%" in line
    more = (delta < 0) == lower_is_more_diverse
    assert more == (outcome == "win")
    assert line.endswith(f"MoT is {'more' if more else 'less'} diverse than the baseline on this measure.")


def test_summary_verdicts_count_settings_and_report_diffusion(report):
    outcome, _, _, base, _, diff, text = report
    # 4 MoT settings, 3 inside the frontier's quality range (2.4, 2.5, 2.6 bpc: frontier self-BLEU 44, 40, 36).
    # "win": c=0, 1, 2 score 50, 30, 20: two wins. "lose": 30, 50, 60: one win (c=0). "tie": 40, 40 +- 3, 40:
    # one win (c=0).
    wins = 2 if outcome == "win" else 1
    assert (f"- Across all 4 MoT settings, 3 fall inside the baseline's quality range and {wins} of those have a "
            "self-BLEU interval entirely below the baseline frontier") in text
    d = diff[0].per_prompt
    delta = d["self_bleu"].mean() - _frontier_at(base, "self_bleu", d["ref_bpc"].mean())
    assert delta == pytest.approx(35.0 - 30.0, abs=0.5)  # the frontier at 2.75 bpc reads self-BLEU 30
    assert f"- diffusion T=1: self-BLEU {delta:+.3g} against the baseline at matched reference bpc" in text
    assert (f"- diffusion T=0.8: reference bpc {diff[1].per_prompt['ref_bpc'].mean():.3f} lies outside the "
            "baseline's temperature frontier") in text


def _slow_ranks(x):
    """Average ranks (0-based), ties sharing their mean rank: count of smaller values + (ties - 1) / 2."""
    return np.array([sum(v < xi for v in x) + (sum(v == xi for v in x) - 1) / 2 for xi in x])


def test_tables_hold_the_computed_numbers(report):
    outcome, _, res, base, mot, _, text = report
    for name, v in VAL_BPC.items():
        assert f"| {name} | {v:.4f}{' (ELBO upper bound)' if name == 'diffusion' else ''} |" in text
    assert "Real validation text scores 2.600 bpc" in text and "(the *calibrated* temperature) is 1.3." in text
    for s in base + mot:
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {s.label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        means = [float(c.split(" [")[0]) for c in cells[1:]]
        expected = [s.per_prompt[k].mean() for k in ("ref_bpc", "self_bleu", "distinct_2", "distinct_3", "vendi",
                                                      "best_of_n_bpc")]
        assert means == pytest.approx(expected, abs=0.06), s.label  # written to 3, 1 or 2 decimals
    # matched-quality table: the setting outside the frontier has empty cells
    outside = next(ln for ln in text.splitlines() if ln.startswith("| MoT T=1.3 c=1 token |") and "|  |" in ln)
    assert outside.count("|  |") >= 1
    # correlation of creativity with self-BLEU over the 3 x P units at T=1
    pts = mot[:3]
    cx = np.concatenate([np.full(P, s.creativity) for s in pts])
    cy = np.concatenate([s.per_prompt["self_bleu"] for s in pts])
    pearson = np.corrcoef(cx, cy)[0, 1]
    spearman = np.corrcoef(_slow_ranks(cx), _slow_ranks(cy))[0, 1]
    assert f"| token/self_bleu | {pearson:.3f} | {spearman:.3f} |" in text
    if outcome != "tie":
        assert abs(pearson) > 0.9  # the synthetic trend is strong, whichever its sign
    # mechanism table and the examples of the primary setting
    assert "| 0 | 1.234 | 0.432 | 1.50 | 0.40 0.30 0.20 0.10 |" in text
    assert "| 1 | 0.988 | 0.111 | 1.80 | 0.25 0.25 0.25 0.25 |" in text
    for example in res["primary"]["example"]:
        assert example in text
    assert "    mot compare --quick (synthetic)" in text


def test_metrics_json_round_trips(report):
    _, out, res, *_ = report

    def plain(obj):  # what JSON can hold: NaN as null, tuples as lists
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else None
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        return obj

    loaded = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert loaded == plain(res)
    outside = next(r for r in loaded["mot"] if r["temperature"] == 1.3)
    assert outside["vs_baseline_at_matched_quality"]["self_bleu"] == {"delta": None, "ci": [None, None]}
    assert loaded["verdicts"] == res["verdicts"]


@pytest.mark.parametrize("name", ["frontier.png", "frontier_distinct3.png", "mechanism.png", "training.png"])
def test_plots_are_valid_non_trivial_pngs(report, name):
    path = report[1] / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert w >= 400 and h >= 300
        lo_hi = im.convert("L").getextrema()
        assert lo_hi[1] - lo_hi[0] > 100  # drawn on: not a blank canvas


def test_the_result_cache_reuses_a_record_only_for_its_own_key(tmp_path):
    from mixture_of_thoughts.experiments.report import digest, digest_path, load_record, save_record

    key = {"method": "beam", "budget": 1800, "puzzles": [[4, 5, 6, 10]]}
    assert digest(key) == digest(dict(reversed(list(key.items()))))  # key order does not matter
    assert digest(key) != digest({**key, "budget": 450})
    named = tmp_path / "methods" / "beam.json"
    save_record(named, {"puzzles": [1, 2]}, key=key)
    assert load_record(named, key)["puzzles"] == [1, 2]
    assert load_record(named, {**key, "budget": 450}) is None  # made for another key: run again
    hashed = digest_path(tmp_path / "settings", key)
    assert hashed.name == f"{digest(key)}.json" and load_record(hashed) is None  # not there yet
    save_record(hashed, {"texts": ["a"]})
    assert load_record(hashed) == {"texts": ["a"]}
    hashed.write_text('{"texts": ["a"', encoding="utf-8")  # cut short
    assert load_record(hashed) is None
    assert not list(tmp_path.rglob("*.tmp"))  # every write was renamed into place
