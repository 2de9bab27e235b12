"""``mot compare --model``: the LM comparison end to end on a tiny random Llama (``--quick``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("transformers")  # the [hf] extra; `make test` installs it


@pytest.fixture(scope="module")
def tiny_dir(save_hf_dir, make_tiny_llama, make_hf_char_tokenizer):
    tok = make_hf_char_tokenizer()
    return save_hf_dir(make_tiny_llama(len(tok)), tok)


@pytest.fixture(scope="module")
def quick_run(tiny_dir, tmp_path_factory):
    from mixture_of_thoughts.cli import main

    out = tmp_path_factory.mktemp("lm_report")
    assert main(["compare", "lm", "--model", str(tiny_dir), "--quick", "--quiet", "--out", str(out)]) == 0
    return out


def test_prompt_set_shipped():
    from mixture_of_thoughts.experiments.compare_lm import load_prompts

    rows = load_prompts()
    assert len(rows) >= 40
    assert len({r["category"] for r in rows}) >= 6
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert [r["prompt"] for r in load_prompts(limit=3)] == [r["prompt"] for r in rows[:3]]


def test_quick_writes_report(quick_run):
    for name in ("metrics.json", "report.md", "frontier.png"):
        assert (quick_run / name).stat().st_size > 0
    res = json.loads((quick_run / "metrics.json").read_text())
    assert res["n_prompts"] == 2
    families = {r["family"] for r in res["rows"]}
    assert {"temperature", "top-p", "min-p", "two-phase", "thoughts", "diverse-beam", "repel", "vary"} <= families
    judged = {r["family"] for r in res["rows"] if r.get("vs_hull")}
    assert judged == {"thoughts", "repel", "vary"}  # diverse beam search is a baseline: part of the hull
    assert res["hull"]["points"] == sum(r["family"] in ("temperature", "top-p", "min-p", "two-phase", "diverse-beam")
                                        for r in res["rows"])
    assert not res["skipped"]
    report = (quick_run / "report.md").read_text()
    assert "## Verdict" in report and "## Every setting" in report and "semantic distance" in report
    assert "## Examples side by side" in report and (quick_run / "frontier_distinct_k.png").stat().st_size > 0
    # a verdict computed for the best thought setting, stated in the report
    (best,) = [v for v in res["verdicts"] if v["which"] == "best"]
    assert best["text"] in report and isinstance(best["meets_goal"], bool)
    assert "![quality-diversity frontier](frontier.png)" in report


def test_quick_numbers_behave(quick_run):
    res = json.loads((quick_run / "metrics.json").read_text())
    rows = {r["label"]: r for r in res["rows"]}
    greedy, hot = rows["temperature temperature=0"], rows["temperature temperature=1.5"]
    # identical greedy branches: no semantic spread, one equivalence class
    assert greedy["semantic_distance"]["mean"] == pytest.approx(0.0, abs=1e-4)
    assert greedy["distinct_k"]["mean"] == pytest.approx(1.0)
    # sampling hot from a random model costs reference NLL and spreads the branches
    assert hot["ref_nll"]["mean"] > greedy["ref_nll"]["mean"]
    assert hot["semantic_distance"]["mean"] > greedy["semantic_distance"]["mean"]
    for r in res["rows"]:
        lo, hi = r["ref_nll"]["ci"]
        assert lo < r["ref_nll"]["mean"] < hi  # a real interval: prompts differ, resampling must show it
    # strong thought noise under greedy decoding makes the branches differ
    # (the tiny random model barely feels MLP noise: the quick grid's strong setting is creativity 40)
    noisy = rows["thoughts (greedy, token, all layers) creativity=40"]
    assert noisy["semantic_distance"]["mean"] > 0.05
    assert noisy["distinct_k"]["mean"] > greedy["distinct_k"]["mean"]
    # no noise from the first generated tokens on: the prefix differs, the rest is greedy
    first2 = rows["thoughts (greedy, token, lower layers, first 2 tokens) creativity=40"]
    assert first2["semantic_distance"]["mean"] > 0.05 and first2["distinct_k"]["mean"] > 1
    assert first2["ref_nll"]["mean"] < noisy["ref_nll"]["mean"]  # greedy after two tokens: likelier text


def test_reference_nll_matches_model(tiny_dir):
    import torch

    from mixture_of_thoughts.experiments.compare_lm import reference_nll
    from mixture_of_thoughts.hf.registry import load_pretrained

    model, _, _ = load_pretrained(str(tiny_dir))
    prompt, conts = [3, 4, 5], [[6, 7], [8], []]
    nll = reference_nll(model, prompt, conts, "cpu")
    with torch.no_grad():
        for x, got in zip(conts[:2], nll[:2], strict=True):
            ids = torch.tensor([prompt + x])
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            want = -lp[len(prompt) - 1:, :].gather(-1, ids[0, len(prompt):, None]).mean()
            assert got == pytest.approx(float(want), abs=1e-5)
    assert nll[2] != nll[2]  # NaN for an empty continuation


@pytest.mark.parametrize("lines, args, match", [
    (None, ["--prompts", "MISSING"], "does not exist"),
    (['{"prompt": "a cat"}', '{"text": "no prompt"}'], [], 'line 2: needs a non-empty "prompt"'),
    (['{"prompt": "a cat"}'], ["--limit", "0"], "--limit must be >= 1"),
    (['{"prompt": "a cat"}'], ["--grid", "huge"], "unknown --grid 'huge'"),
])
def test_bad_input_one_line_error(tiny_dir, tmp_path, capsys, lines, args, match):
    from mixture_of_thoughts.cli import main

    f = tmp_path / "p.jsonl"
    if lines is not None:
        f.write_text("\n".join(lines) + "\n")
        args = ["--prompts", str(f), *args]
    else:
        args = [a.replace("MISSING", str(tmp_path / "nope.jsonl")) for a in args]
    code = main(["compare", "lm", "--model", str(tiny_dir), "--quick", "--quiet", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("mot: error:") and match in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("family", ["temperature", "thoughts", "first-m"])
def test_padded_batch_equals_rows_alone(tiny_dir, family):
    """Several prompts x branches in one left-padded pass: each row is what it is generated alone."""
    from mixture_of_thoughts.experiments.compare_lm import Contender, LMCompareConfig, _generate, _graft_copy
    from mixture_of_thoughts.hf.generate import sample_branches, think_hf
    from mixture_of_thoughts.hf.registry import load_pretrained

    ref, tok, _ = load_pretrained(str(tiny_dir))
    prompts = ["a cat sat on the mat", "tea"]
    ids = [tok(p)["input_ids"] for p in prompts]
    if family == "temperature":
        c, model = Contender("temperature", "temperature", temperature=1.2), ref
    else:  # prompts of different lengths: with first-m, each row's noise ends at its own position
        m = 3 if family == "first-m" else None
        c = Contender("thoughts", "creativity", temperature=0.0, creativity=40.0, noise_tokens=m)
        model = _graft_copy(ref, c, LMCompareConfig(contenders=(c,))).eval()
    got = _generate(model, tok, c, ids, [5, 6], 8, "cpu")
    for q, p in enumerate(prompts):
        if family == "temperature":
            alone = sample_branches(model, tok, p, [5, 6], max_new_tokens=8, temperature=1.2, chat=False)
        else:
            alone = think_hf(model, tok, p, branch_seeds=[5, 6], creativity=40.0, max_new_tokens=8,
                             temperature=0.0, chat=False, noise_tokens=c.noise_tokens)
        assert [r[1] for r in got[2 * q:2 * q + 2]] == [b.text for b in alone.branches]
    if family == "first-m":  # and the noise did stop: without it the rows would differ from these
        free = _generate(model, tok, dataclasses.replace(c, noise_tokens=None), ids, [5, 6], 8, "cpu")
        assert [r[1] for r in free] != [r[1] for r in got]


def test_decoder_nll_is_the_reference_nll(tiny_dir):
    """Settings decoded by the ungrafted model take their reference NLL from the decoder's log-probabilities."""
    from mixture_of_thoughts.experiments.compare_lm import Contender, _generate, reference_nll
    from mixture_of_thoughts.hf.registry import load_pretrained

    ref, tok, _ = load_pretrained(str(tiny_dir))
    ids = [tok("a cat sat on the mat")["input_ids"], tok("tea")["input_ids"]]
    got = _generate(ref, tok, Contender("top-p", "top_p", top_p=0.9), ids, [1, 2, 3], 10, "cpu")
    for q in range(2):
        rows = got[3 * q:3 * q + 3]
        want = reference_nll(ref, ids[q], [r[0] for r in rows], "cpu")
        np.testing.assert_allclose([r[2] for r in rows], want, rtol=1e-4, atol=1e-4)


def test_a_prompt_read_once_for_its_branches_decodes_the_same_rows(tiny_dir):
    from mixture_of_thoughts.experiments.compare_lm import Contender, decode_rows
    from mixture_of_thoughts.hf.registry import load_pretrained

    model, tok, _ = load_pretrained(str(tiny_dir))
    ids = [tok("a cat sat on the mat")["input_ids"], tok("tea")["input_ids"]]
    rows, seeds = [x for x in ids for _ in range(4)], [1, 2, 3, 4] * 2
    c = Contender("temperature", "temperature", temperature=1.0)
    each = decode_rows(model, tok, c, rows, seeds, 12, "cpu")
    once = decode_rows(model, tok, c, rows, seeds, 12, "cpu", shared=4)
    assert [r[0] for r in once] == [r[0] for r in each] and len({tuple(r[0]) for r in each}) > 1
    np.testing.assert_allclose([r[2] for r in once], [r[2] for r in each], rtol=0, atol=1e-5)


def test_greedy_is_decoded_once_per_prompt(tiny_dir):
    from mixture_of_thoughts.experiments.compare_lm import Contender, _generate
    from mixture_of_thoughts.hf.generate import sample_branches
    from mixture_of_thoughts.hf.registry import load_pretrained

    ref, tok, _ = load_pretrained(str(tiny_dir))
    got = _generate(ref, tok, Contender("temperature", "temperature", temperature=0.0), [tok("tea")["input_ids"]],
                    [4, 5, 6], 8, "cpu")
    alone = sample_branches(ref, tok, "tea", [9], max_new_tokens=8, temperature=0.0, chat=False)
    assert len(got) == 3 and {r[1] for r in got} == {alone.branches[0].text}


def test_two_phase_switches_temperature(tiny_dir):
    """Two-phase: the first m tokens are the hot temperature's, the rest greedy (cold T = 0) after that prefix."""
    import torch

    from mixture_of_thoughts.experiments.compare_lm import Contender, _generate
    from mixture_of_thoughts.hf.registry import load_pretrained

    ref, tok, _ = load_pretrained(str(tiny_dir))
    ids = [tok("a cat sat")["input_ids"]]
    seeds = [1, 2, 3]
    two = _generate(ref, tok, Contender("two-phase", "hot_tokens", temperature=0.0, hot_temperature=1.5,
                                        hot_tokens=3), ids, seeds, 8, "cpu")
    hot = _generate(ref, tok, Contender("temperature", "temperature", temperature=1.5), ids, seeds, 8, "cpu")
    for (t2, *_), (th, *_) in zip(two, hot, strict=True):
        assert t2[:3] == th[:3]
        row = ids[0] + t2[:3]
        with torch.no_grad():  # greedy after the prefix
            for x in t2[3:]:
                assert x == int(ref(input_ids=torch.tensor([row])).logits[0, -1].argmax())
                row.append(x)


def _synthetic(points: dict, P: int = 24, seed: int = 0) -> dict:
    """``{contender: {"per_prompt": ...}}`` with every metric near the given means, small per-prompt noise."""
    from mixture_of_thoughts.experiments.compare_lm import METRICS

    rng = np.random.default_rng(seed)
    out = {}
    for c, means in points.items():
        per = {k: np.full(P, 0.5) + 0.01 * rng.standard_normal(P) for k in METRICS}
        for k, v in means.items():
            per[k] = v + 0.01 * rng.standard_normal(P)
        out[c] = {"per_prompt": per, "example": [["a", "b"]] * P}
    return out


def test_matched_quality_is_against_the_pooled_hull():
    """A contender is compared with the hull of every baseline point pooled, which lies above each family's
    own line where two families' points bracket it; the old per-family lines stay as a secondary number."""
    from mixture_of_thoughts.experiments.compare_lm import (
        PRIMARY,
        Contender,
        LMCompareConfig,
        baseline_lines,
        summarise,
    )

    T = [Contender("temperature", "temperature", temperature=t) for t in (0.0, 0.5, 1.0)]
    topp = Contender("top-p", "top_p", top_p=0.9)
    minp = Contender("min-p", "min_p", min_p=0.1, temperature=1.5)
    weak = dataclasses.replace(PRIMARY, creativity=1.0)
    sharp = dataclasses.replace(PRIMARY, creativity=0.1)
    pts = {T[0]: dict(ref_nll=1.0, semantic_distance=0.0, distinct_k=1.0, degenerate_frac=0.0),
           T[1]: dict(ref_nll=1.5, semantic_distance=0.4, distinct_k=3.0, degenerate_frac=0.0),
           T[2]: dict(ref_nll=2.0, semantic_distance=0.6, distinct_k=5.0, degenerate_frac=0.1),
           topp: dict(ref_nll=1.8, semantic_distance=0.58, distinct_k=4.0, degenerate_frac=0.0),
           # min-p's own line runs from greedy (1.0, 0) to here: at NLL 1.5 it gives only 0.2
           minp: dict(ref_nll=1.4, semantic_distance=0.5, distinct_k=3.5, degenerate_frac=0.0),
           PRIMARY: dict(ref_nll=1.6, semantic_distance=0.8, distinct_k=6.0, degenerate_frac=0.0),
           weak: dict(ref_nll=1.6, semantic_distance=0.52, distinct_k=6.0, degenerate_frac=0.0),
           sharp: dict(ref_nll=0.5, semantic_distance=0.2, distinct_k=2.0, degenerate_frac=0.0)}
    assert set(baseline_lines(pts)["top-p (T=1)"]) == {topp, T[0]}  # p -> 0 is greedy decoding
    cfg = LMCompareConfig(contenders=tuple(pts), bootstrap=200)
    prompts = [{"prompt": f"p{i}"} for i in range(24)]
    res = summarise(cfg, prompts, _synthetic(pts), [], "synthetic", 0.0)
    rows = {r["label"]: r for r in res["rows"]}
    m = rows[PRIMARY.label]["vs_hull"]
    # at NLL 1.6 the hull mixes min-p (1.4, 0.5) and top-p (1.8, 0.58): 0.54; no single family's line
    # reaches that (temperature's line: 0.44, top-p's from greedy: 0.435, min-p's stops at 1.4)
    assert m["hull_edge"] == [minp.label, topp.label]
    assert m["semantic_distance"]["baseline"] == pytest.approx(0.54, abs=0.01)
    assert m["semantic_distance"]["delta"] == pytest.approx(0.26, abs=0.02)
    line = rows[PRIMARY.label]["vs_best_line"]
    assert line["best_line"] == "temperature" and line["delta"] == pytest.approx(0.8 - 0.44, abs=0.02)
    # "weak" beats every family line at its NLL but not the hull: the verdict is on the hull
    assert rows[weak.label]["vs_best_line"]["ci"][0] > 0
    assert rows[weak.label]["vs_hull"]["semantic_distance"]["delta"] == pytest.approx(-0.02, abs=0.01)
    assert rows[sharp.label]["vs_hull"]["semantic_distance"] is None  # below greedy's NLL: no match
    assert T[1].label not in {r["label"] for r in res["rows"] if r.get("vs_hull")}  # baselines are not judged
    v = {x["which"]: x for x in res["verdicts"]}
    assert v["primary"]["meets_goal"] and v["best"]["label"] == weak.label  # the best of the others
    assert not v["best"]["meets_goal"]
    # more degenerate branches than the baselines at that quality: the goal is missed even with more spread
    pts[PRIMARY] = dict(pts[PRIMARY], degenerate_frac=0.5)
    res = summarise(cfg, prompts, _synthetic(pts), [], "synthetic", 0.0)
    (p,) = [x for x in res["verdicts"] if x["which"] == "primary"]
    assert not p["meets_goal"] and "does not meet the goal" in p["text"]
    # a margin under the goal's (+0.05 semantic distance) misses even with an interval above 0
    pts[PRIMARY] = dict(pts[PRIMARY], degenerate_frac=0.0, semantic_distance=0.57)
    res = summarise(cfg, prompts, _synthetic(pts), [], "synthetic", 0.0)
    (p,) = [x for x in res["verdicts"] if x["which"] == "primary"]
    assert not p["meets_goal"]
    assert res["hull"]["points"] == 5 and res["hull"]["saturation"][-1]["mean_gap"] == pytest.approx(0.0)


def test_old_settings_keep_their_cache_key():
    """Fields added to Contender after the first report leave the cache key of older settings unchanged."""
    from mixture_of_thoughts.experiments.compare_lm import Contender, setting_key

    c = Contender("temperature", "temperature", temperature=0.7)
    assert set(setting_key(c)) == {"family", "knob", "temperature", "top_p", "min_p", "hot_temperature", "hot_tokens",
                                   "creativity", "layers", "noise_mode", "noise_tokens"}
    d = Contender("repel", "diversity", temperature=0.7, diversity=2.0)
    assert setting_key(d)["diversity"] == 2.0 and setting_key(d) != setting_key(c)


def test_settings_are_kept_and_read_back(tiny_dir, tmp_path, monkeypatch):
    """Every finished setting is saved; running again reads it back instead of generating (resume)."""
    from mixture_of_thoughts.experiments import compare_lm
    from mixture_of_thoughts.experiments.compare_lm import Contender, LMCompareConfig, run_compare_lm

    grid = (Contender("temperature", "temperature", temperature=0.0), Contender("temperature", "temperature",
                                                                              temperature=1.0))
    cfg = LMCompareConfig.quick(model=str(tiny_dir), out=str(tmp_path / "o"), contenders=grid)
    first = run_compare_lm(cfg)
    assert len(list((tmp_path / "o" / "settings").glob("*.json"))) == 2
    monkeypatch.setattr(compare_lm, "_run_contender", lambda *a, **k: pytest.fail("a kept setting was generated again"))
    again = run_compare_lm(cfg)
    assert [r["semantic_distance"] for r in again["rows"]] == [r["semantic_distance"] for r in first["rows"]]
    # another token budget is another experiment: it is not read from the kept files
    with pytest.raises(pytest.fail.Exception):
        run_compare_lm(dataclasses.replace(cfg, max_new_tokens=5))
    with pytest.raises(pytest.fail.Exception):  # nor are fresh draws (another first seed)
        run_compare_lm(dataclasses.replace(cfg, first_seed=99))
    monkeypatch.undo()
    fresh = run_compare_lm(dataclasses.replace(cfg, first_seed=99, out=str(tmp_path / "fresh")))
    assert fresh["rows"][1]["examples"] != first["rows"][1]["examples"]  # T = 1: other draws, other texts


def test_vary_rows_develop_the_greedy_answer(tiny_dir):
    """vary: branch j rewrites the prompt's greedy answer with way j * ways // branches, sampled with seed j,
    and is what sample_branches gives on that rewritten prompt alone."""
    from mixture_of_thoughts.experiments.compare_lm import Contender, _generate
    from mixture_of_thoughts.hf.generate import sample_branches
    from mixture_of_thoughts.hf.registry import load_pretrained
    from mixture_of_thoughts.hf.vary import load_ways

    ref, tok, _ = load_pretrained(str(tiny_dir))
    texts = ["a cat sat", "tea"]
    ids = [tok(t)["input_ids"] for t in texts]
    c = Contender("vary", "temperature", temperature=0.8, ways=("style", "angle"))
    seeds = [3, 4, 5, 6]
    got = _generate(ref, tok, c, ids, seeds, 6, "cpu", texts=texts)
    ways = load_ways()
    for q, text in enumerate(texts):
        draft = sample_branches(ref, tok, text, [0], max_new_tokens=6, temperature=0.0, chat=False).branches[0].text
        for j, seed in enumerate(seeds):
            way = ways[("style", "angle")[j * 2 // 4]]
            alone = sample_branches(ref, tok, way.apply(draft.strip() or text), [seed], max_new_tokens=6,
                                    temperature=0.8, chat=False)
            assert got[4 * q + j][1] == alone.branches[0].text
    with pytest.raises(Exception, match="texts"):
        _generate(ref, tok, c, ids, seeds, 6, "cpu")


def test_contender_validation():
    from mixture_of_thoughts.errors import ConfigError
    from mixture_of_thoughts.experiments.compare_lm import Contender

    for bad, match in [(Contender("repel", "diversity", temperature=0.0, diversity=1.0), "temperature 0"),
                       (Contender("diverse-beam", "diversity", temperature=0.0), "diversity >= 0"),
                       (Contender("diverse-beam", "diversity", temperature=0.0, diversity=1.0, window="all"), "window"),
                       (Contender("vary", "temperature", temperature=0.5), "at least one way"),
                       (Contender("learned", "temperature", temperature=0.0), "trained branches"),
                       (Contender("magic", "temperature"), "unknown contender family")]:
        with pytest.raises(ConfigError, match=match):
            bad.validate()


def test_learned_contender_is_scored_under_the_plain_model(tiny_dir, tmp_path):
    """A learned setting decodes with its branches (row j: branch j mod B) and its reference NLL is read
    from the plain model, not from the branch model that wrote the texts."""
    import torch

    from mixture_of_thoughts.experiments.compare_lm import Contender, LMCompareConfig, _run_contender, reference_nll
    from mixture_of_thoughts.hf.learned import generate_learned, new_branches, save_branches
    from mixture_of_thoughts.hf.registry import load_pretrained

    ref, tok, _ = load_pretrained(str(tiny_dir))
    br = new_branches(ref, 2, "top1", init_scale=3.0, hidden_rms=[1.0], generator=torch.Generator().manual_seed(0))
    save_branches(br, tmp_path / "br")
    c = Contender("learned", "temperature", temperature=0.0, learned=str(tmp_path / "br"))
    cfg = LMCompareConfig.quick(contenders=(c,), branches=4, max_new_tokens=6)
    prompts = [{"prompt": "a cat sat"}, {"prompt": "tea"}]
    ids = [tok(p["prompt"])["input_ids"] for p in prompts]
    out = _run_contender(c, ref, ref, tok, prompts, ids, cfg, None, "cpu")
    got = generate_learned(ref, tok, br, ids, list(range(4)), max_new_tokens=6, temperature=0.0)
    for q in range(2):
        rows = got[4 * q:4 * q + 4]
        assert [r[1] for r in rows] == out["example"][q]
        assert rows[0][1] == rows[2][1] and rows[0][1] != rows[1][1]  # branch 0 twice, branch 1 twice
        want = np.nanmean(reference_nll(ref, ids[q], [r[0] for r in rows], "cpu"))
        assert out["per_prompt"]["ref_nll"][q] == pytest.approx(want, abs=1e-5)
        assert out["per_prompt"]["ref_nll"][q] != pytest.approx(np.nanmean([r[2] for r in rows]), abs=1e-4)


@pytest.mark.parametrize("argv,hint", [
    (["compare", "--model", "smollm2", "--limit", "3"], "mot compare lm --model smollm2 --limit 3"),
    (["compare", "--quick", "--data", "x.txt"], "mot compare char --quick --data x.txt"),
    (["compare"], "mot compare char"),
])
def test_the_old_spelling_gets_a_one_line_hint(argv, hint, capsys):
    from mixture_of_thoughts.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mot: error: mot compare now names its experiment first: {hint}"


def test_each_experiment_has_its_own_flags(capsys):
    from mixture_of_thoughts.cli import build_parser

    p = build_parser()
    assert p.parse_args(["compare", "char", "--prompts", "12"]).prompts == 12  # a count here
    assert p.parse_args(["compare", "lm", "--model", "m", "--prompts", "held-out"]).prompts == "held-out"  # a set
    for argv in (["compare", "char", "--model", "m"], ["compare", "lm", "--model", "m", "--reuse"],
                 ["compare", "lm"], ["compare", "char", "--prompts", "tuning"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
