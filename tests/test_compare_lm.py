"""``mot compare --model``: the LM comparison end to end on a tiny random Llama (``--quick``)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
semantic = pytest.importorskip("mixture_of_thoughts.metrics.semantic")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, make_tiny_llama, make_hf_char_tokenizer):
    tok = make_hf_char_tokenizer()
    model = make_tiny_llama(len(tok))
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def quick_run(tiny_dir, tmp_path_factory):
    try:
        semantic.get_embedder()
    except Exception as e:  # the MiniLM package is an optional extra
        pytest.skip(f"no semantic embedder: {e}")
    from mixture_of_thoughts.cli import main

    out = tmp_path_factory.mktemp("lm_report")
    assert main(["compare", "--model", str(tiny_dir), "--quick", "--quiet", "--out", str(out)]) == 0
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
    assert {"temperature", "top-p", "min-p", "two-phase", "thoughts"} <= families
    assert not res["skipped"]
    report = (quick_run / "report.md").read_text()
    assert "## Summary" in report and "semantic distance" in report
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
        assert lo - 1e-9 <= r["ref_nll"]["mean"] <= hi + 1e-9
    # strong thought noise under greedy decoding makes the branches differ
    # (the tiny random model barely feels MLP noise: the quick grid's strong setting is creativity 40)
    noisy = rows["thoughts (greedy, token, all layers) creativity=40"]
    assert noisy["semantic_distance"]["mean"] > 0.05
    assert noisy["distinct_k"]["mean"] > greedy["distinct_k"]["mean"]
    # no noise from the first generated tokens on: the prefix differs, the rest is greedy
    assert rows["thoughts (greedy, token, lower layers, first 2 tokens) creativity=40"]["ref_nll"]["mean"] > 0


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
])
def test_bad_input_one_line_error(tiny_dir, tmp_path, capsys, lines, args, match):
    from mixture_of_thoughts.cli import main

    f = tmp_path / "p.jsonl"
    if lines is not None:
        f.write_text("\n".join(lines) + "\n")
        args = ["--prompts", str(f), *args]
    else:
        args = [a.replace("MISSING", str(tmp_path / "nope.jsonl")) for a in args]
    code = main(["compare", "--model", str(tiny_dir), "--quick", "--quiet", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("mot: error:") and match in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("family", ["temperature", "thoughts"])
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
    else:
        c = Contender("thoughts", "creativity", temperature=0.0, creativity=40.0)
        model = _graft_copy(ref, c, LMCompareConfig(contenders=(c,))).eval()
    got = _generate(model, tok, c, ids, [5, 6], 8, "cpu")
    for q, p in enumerate(prompts):
        if family == "temperature":
            alone = sample_branches(model, tok, p, [5, 6], max_new_tokens=8, temperature=1.2, chat=False)
        else:
            alone = think_hf(model, tok, p, branch_seeds=[5, 6], creativity=40.0, max_new_tokens=8,
                             temperature=0.0, chat=False)
        assert [t for _, t in got[2 * q:2 * q + 2]] == [b.text for b in alone.branches]


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
    for (t2, _), (th, _) in zip(two, hot, strict=True):
        assert t2[:3] == th[:3]
        row = ids[0] + t2[:3]
        with torch.no_grad():  # greedy after the prefix
            for x in t2[3:]:
                assert x == int(ref(input_ids=torch.tensor([row])).logits[0, -1].argmax())
                row.append(x)
