"""Autoregressive generation and ``think``: seeds, KV cache parity, branch regeneration, stops, prompts."""

from __future__ import annotations

import logging

import pytest
import torch

from mixture_of_thoughts.errors import ConfigError, DataError
from mixture_of_thoughts.generation.autoregressive import (
    EMPTY_PROMPT,
    creativity_spread,
    generate,
    prepare_prompt,
    think,
)
from mixture_of_thoughts.generation.sampling import sample_tokens
from mixture_of_thoughts.models.transformer import Transformer
from mixture_of_thoughts.rng import RowNoise

PROMPT = "the cat "


def _texts(res):
    return [b.text for b in res.branches]


def test_same_seed_same_text(tiny_model, tokenizer):
    a = think(tiny_model, tokenizer, PROMPT, branches=3, seed=5, max_new_tokens=30)
    b = think(tiny_model, tokenizer, PROMPT, branches=3, seed=5, max_new_tokens=30)
    assert _texts(a) == _texts(b)
    assert [br.seed for br in a.branches] == [5, 6, 7]
    assert all(len(t) == 30 for t in _texts(a))
    assert a.prompt == PROMPT


def test_different_seeds_differ(tiny_model, tokenizer):
    a = think(tiny_model, tokenizer, PROMPT, branches=1, seed=0, max_new_tokens=30)
    b = think(tiny_model, tokenizer, PROMPT, branches=1, seed=1, max_new_tokens=30)
    assert _texts(a) != _texts(b)
    batch = think(tiny_model, tokenizer, PROMPT, branches=4, seed=0, max_new_tokens=30)
    assert len(set(_texts(batch))) == 4  # the branches of one batch differ from each other


@pytest.mark.parametrize("kw", [{}, {"temperature": 0.7, "top_k": 5}, {"temperature": 0.0}])
def test_cache_and_no_cache_give_the_same_tokens_within_the_block(tiny_model, tokenizer, kw):
    block = tiny_model.config.block_size
    ids = torch.tensor(tokenizer.encode("a red")).repeat(3, 1)
    n = block - ids.shape[1]
    a = generate(tiny_model, ids, n, RowNoise([1, 2, 3]), use_cache=True, **kw)
    b = generate(tiny_model, ids, n, RowNoise([1, 2, 3]), use_cache=False, **kw)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


@torch.no_grad()
def _reference_text(model, tokenizer, prompt, seed, n, temperature=1.0):
    """One row alone, no KV cache: the last ``block_size`` tokens recomputed at every step, the token the
    argmax (temperature 0) or a Gumbel-max draw from the row's own noise at its absolute position."""
    block = model.config.block_size
    ids = tokenizer.encode(prompt)
    T0 = len(ids)
    for i in range(n):
        logits = model(torch.tensor([ids[-block:]])).logits[:, -1, :]
        if temperature == 0:
            ids.append(int(logits.argmax(-1)))
        else:
            ids.append(int(sample_tokens(logits, RowNoise([seed]), T0 + i, temperature)))
    return tokenizer.decode(ids[T0:])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_past_the_block_size_equals_a_step_by_step_recompute(tiny_model, tokenizer, temperature):
    n = 3 * tiny_model.config.block_size
    res = think(tiny_model, tokenizer, PROMPT, branch_seeds=[0, 7], max_new_tokens=n, temperature=temperature)
    for b in res.branches:
        assert b.text == _reference_text(tiny_model, tokenizer, PROMPT, b.seed, n, temperature)
    assert (len(set(_texts(res))) == 1) == (temperature == 0)  # greedy ignores the seed; sampling does not


def test_logprobs_are_the_models_log_probabilities(tiny_model, tokenizer):
    ids = torch.tensor(tokenizer.encode(PROMPT))[None]
    gen = generate(tiny_model, ids, 5, RowNoise([0]), use_cache=True)
    T0 = ids.shape[1]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(gen.tokens).logits, -1)  # (1, T, V)
    expected = logp[0, T0 - 1:T0 + 4].gather(-1, gen.tokens[0, T0:, None])[:, 0]
    assert torch.allclose(gen.logprobs[0], expected, atol=1e-5)
    # they stay the model's (temperature 1, unfiltered) when the tokens are drawn at another temperature
    # through filters; the tokens themselves are the filtered ones
    hot = generate(tiny_model, ids, 5, RowNoise([0]), use_cache=True, temperature=0.5, top_k=2)
    with torch.no_grad():
        logits = tiny_model(hot.tokens).logits[0, T0 - 1:T0 + 4]  # (5, V)
    expected = torch.log_softmax(logits, -1).gather(-1, hot.tokens[0, T0:, None])[:, 0]
    assert torch.allclose(hot.logprobs[0], expected, atol=1e-5)
    assert (logits.topk(2, -1).indices == hot.tokens[0, T0:, None]).any(-1).all()


def test_one_branch_alone_equals_that_branch_in_the_batch(tiny_model, tokenizer):
    batch = think(tiny_model, tokenizer, PROMPT, branches=5, seed=10, max_new_tokens=40, temperature=0.9, top_p=0.95)
    for i in (0, 3):
        alone = think(tiny_model, tokenizer, PROMPT, branch_seeds=[10 + i], max_new_tokens=40,
                      temperature=0.9, top_p=0.95)
        assert alone.branches[0].text == batch.branches[i].text
        assert alone.branches[0].seed == batch.branches[i].seed == 10 + i
        assert alone.branches[0].mean_loglik == pytest.approx(batch.branches[i].mean_loglik, abs=1e-5)


def test_stop_string_truncates_at_its_first_occurrence(tiny_model, tokenizer):
    full = think(tiny_model, tokenizer, PROMPT, branches=1, seed=3, max_new_tokens=120).branches[0].text
    for stop in (full[20], full[30:32]):
        cut = full.find(stop) + len(stop)
        got = think(tiny_model, tokenizer, PROMPT, branches=1, seed=3, max_new_tokens=120, stop=stop)
        assert got.branches[0].text == full[:cut]
        assert got.branches[0].text.endswith(stop)


def test_rows_stop_independently(tiny_model, tokenizer):
    fulls = _texts(think(tiny_model, tokenizer, PROMPT, branches=3, seed=0, max_new_tokens=80))
    stop = "."
    got = _texts(think(tiny_model, tokenizer, PROMPT, branches=3, seed=0, max_new_tokens=80, stop=stop))
    for full, text in zip(fulls, got, strict=True):
        assert text == (full[:full.find(stop) + 1] if stop in full else full)


def test_stop_string_outside_vocabulary_is_a_data_error(tiny_model, tokenizer):
    with pytest.raises(DataError, match="stop string"):
        think(tiny_model, tokenizer, PROMPT, branches=1, max_new_tokens=5, stop="X")


def test_empty_prompt_starts_from_newline(tiny_model, tokenizer):
    assert "\n" in tokenizer.stoi
    assert prepare_prompt(tokenizer, "", 16) == tokenizer.encode(EMPTY_PROMPT) == tokenizer.encode("\n")
    res = think(tiny_model, tokenizer, "", branches=1, seed=0, max_new_tokens=10)
    assert res.prompt == "\n"
    explicit = think(tiny_model, tokenizer, "\n", branches=1, seed=0, max_new_tokens=10)
    assert _texts(res) == _texts(explicit)


def test_empty_prompt_without_newline_in_vocabulary():
    from mixture_of_thoughts.data.tokenizer import CharTokenizer

    tok = CharTokenizer(list("ab "))
    assert prepare_prompt(tok, "", 16) == tok.encode(" ")  # a space replaces the missing newline
    tok = CharTokenizer(list("xy"))
    assert prepare_prompt(tok, "", 16) == tok.encode("x")  # no space either: the first character


def test_long_prompt_keeps_its_last_block(tiny_model, tokenizer, caplog):
    block = tiny_model.config.block_size
    long = "the red cat sat on a dot. " * 3
    with caplog.at_level(logging.WARNING):
        assert prepare_prompt(tokenizer, long, block) == tokenizer.encode(long)[-block:]
    assert "keeping the last" in caplog.text
    res = think(tiny_model, tokenizer, long, branches=1, seed=0, max_new_tokens=10)
    assert res.prompt == long[-block:]
    tail = think(tiny_model, tokenizer, long[-block:], branches=1, seed=0, max_new_tokens=10)
    assert _texts(res) == _texts(tail)


def test_prompt_with_unknown_characters(tiny_model, tokenizer):
    with pytest.raises(DataError, match="'X' at 4"):
        think(tiny_model, tokenizer, "the X", branches=1, max_new_tokens=5)
    res = think(tiny_model, tokenizer, "the X", branches=1, max_new_tokens=5, unknown_chars="skip")
    assert res.prompt == "the "


def test_generate_refuses_a_bidirectional_model(tokenizer):
    from conftest import tiny_model_config

    model = Transformer(tiny_model_config(causal=False, vocab_size=tokenizer.vocab_size))
    with pytest.raises(ConfigError, match="causal"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 3, RowNoise([0]))


def test_think_argument_errors(tiny_model, tokenizer):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        think(tiny_model, tokenizer, PROMPT, max_new_tokens=0)
    with pytest.raises(ConfigError, match="branches"):
        think(tiny_model, tokenizer, PROMPT, branch_seeds=[])
    with pytest.raises(ConfigError, match="temperature"):
        think(tiny_model, tokenizer, PROMPT, max_new_tokens=3, temperature=-1.0)


def test_creativity_spread():
    assert creativity_spread(None, 3) is None
    assert creativity_spread(0.5, 3) == [0.5, 0.5, 0.5]
    assert creativity_spread((0.0, 1.0), 3) == [0.0, 0.5, 1.0]
    assert creativity_spread((0.3, 1.0), 1) == [0.3]
    assert creativity_spread([1, 2], 2) == [1.0, 2.0]
    with pytest.raises(ConfigError, match="3 branches"):
        creativity_spread([1, 2], 3)
    with pytest.raises(ConfigError, match=">= 0"):
        creativity_spread((-1.0, 1.0), 3)


def test_dense_branches_report_no_creativity_or_routing(tiny_model, tokenizer):
    res = think(tiny_model, tokenizer, PROMPT, branches=2, creativity=(0.5, 1.5), max_new_tokens=8)
    assert all(b.creativity is None and b.routing == {} for b in res.branches)
    assert set(res.diversity) == {"distinct_2", "distinct_3", "self_bleu"}


def test_think_diversity_is_the_sets_and_is_in_its_dict(tiny_model, tokenizer):
    from mixture_of_thoughts.generation.decoder import set_diversity

    res = think(tiny_model, tokenizer, PROMPT, branches=3, max_new_tokens=12, seed=4)
    assert "diversity" not in vars(res)  # computed on first use only
    assert res.diversity == set_diversity([b.text for b in res.branches])
    d = res.to_dict()
    assert d["diversity"] == res.diversity and [b["text"] for b in d["branches"]] == [b.text for b in res.branches]
