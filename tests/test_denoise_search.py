"""Re-noising, evaluators and multi-branch search (``generation/denoise_search.py``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.generation.denoise_search import (
    ARLikelihoodEvaluator,
    DiversityEvaluator,
    ElboEvaluator,
    WeightedEvaluator,
    _fork_plan,
    _remask,
    branch_search,
    choose_positions,
    renoise,
)
from mixture_of_thoughts.generation.diffusion import generate
from mixture_of_thoughts.metrics.quality import text_bpc
from mixture_of_thoughts.models.diffusion import diffusion_bpc
from mixture_of_thoughts.rng import RowNoise
from test_diffusion import FixedLogits, diffusion_model

TEXT = "the cat sat on a red dot and ate the tea."  # 41 characters: longer than the block (16)


@pytest.fixture(scope="module")
def tokenizer_module(corpus_text):
    from mixture_of_thoughts.data.tokenizer import CharTokenizer

    return CharTokenizer.from_text(corpus_text)


@pytest.fixture(scope="module")
def char_model(tokenizer_module):
    return diffusion_model(vocab=tokenizer_module.vocab_size)


def _oracle(tokenizer, ids, block_size=48):
    """A denoiser sure that position i holds ``ids[i]`` (one window of up to ``block_size``)."""
    V = tokenizer.vocab_size
    table = torch.zeros(block_size, V + 1)
    table[:len(ids)] = 30.0 * F.one_hot(torch.as_tensor(ids), V + 1).float()
    return FixedLogits(table, block_size)


# ----------------------------------------------------------------------------- re-masking and renoise

def test_choose_positions_exact_count_within_eligible_and_per_row():
    eligible = torch.zeros(30, dtype=torch.bool)
    eligible[5:25] = True
    chosen = choose_positions(RowNoise([0, 1, 2, 3]), eligible, 7)
    assert chosen.sum(-1).tolist() == [7] * 4 and not (chosen & ~eligible).any()
    assert len({tuple(r.tolist()) for r in chosen}) == 4  # each row its own draw
    assert torch.equal(choose_positions(RowNoise([2]), eligible, 7)[0], chosen[2])  # a row alone: the same
    assert torch.equal(choose_positions(RowNoise([0, 1]), eligible, 20), eligible.expand(2, -1))


def test_remask_masks_count_and_an_oracle_restores_them(tokenizer_module):
    ids = tokenizer_module.encode(TEXT)
    x = torch.tensor(ids).repeat(3, 1)
    eligible = torch.arange(len(ids)) >= 10
    out, masked = _remask(_oracle(tokenizer_module, ids), x, RowNoise([4, 5, 6]), eligible, 12, trajectory=True)
    assert torch.equal(masked, choose_positions(RowNoise([4, 5, 6]), eligible, 12))
    assert torch.equal(out.trajectory[0], torch.where(masked, tokenizer_module.vocab_size, x))
    assert torch.equal(out.tokens, x)


def test_renoise_zero_returns_input(char_model, tokenizer_module):
    res = renoise(char_model, tokenizer_module, TEXT, noise=0.0, variants=3, seed=1)
    assert [v.text for v in res.variants] == [TEXT] * 3
    assert [(v.seed, v.masked, v.changed) for v in res.variants] == [(1, 0, 0), (2, 0, 0), (3, 0, 0)]


@pytest.mark.parametrize("span", [None, (4, 20)])
def test_renoise_changes_exactly_the_masked_positions(tokenizer_module, span):
    """A denoiser sure of a *wrong* character everywhere: a variant differs from the text exactly where
    its seed's mask fell, so the count, the span and the per-variant seeds are all visible."""
    ids = tokenizer_module.encode(TEXT)
    wrong = [(i + 1) % tokenizer_module.vocab_size for i in ids]
    p = 0.5
    res = renoise(_oracle(tokenizer_module, wrong), tokenizer_module, TEXT, noise=p, variants=4, seed=3, span=span)
    eligible = torch.ones(len(TEXT), dtype=torch.bool)
    if span is not None:
        eligible[:] = False
        eligible[span[0]:span[1]] = True
    count = round(p * int(eligible.sum()))
    masked = choose_positions(RowNoise([3, 4, 5, 6]), eligible, count)
    for i, v in enumerate(res.variants):
        changed = torch.tensor([a != b for a, b in zip(v.text, TEXT, strict=True)])
        assert torch.equal(changed, masked[i])
        assert (v.seed, v.masked, v.changed) == (3 + i, count, count)
    assert len({v.text for v in res.variants}) == 4


def test_renoise_with_the_real_model_keeps_unmasked_positions(char_model, tokenizer_module):
    res = renoise(char_model, tokenizer_module, TEXT, noise=0.5, variants=4, seed=3, span=(4, 20))
    for v in res.variants:
        assert v.text[:4] == TEXT[:4] and v.text[20:] == TEXT[20:] and v.masked == 8
    assert len({v.text for v in res.variants}) > 1


def test_renoise_errors(char_model, tokenizer_module):
    with pytest.raises(ConfigError, match="noise must be in"):
        renoise(char_model, tokenizer_module, TEXT, noise=-0.1)
    with pytest.raises(ConfigError, match="outside the text"):
        renoise(char_model, tokenizer_module, TEXT, noise=0.3, span=(5, 5))


# ----------------------------------------------------------------------------- evaluators

def test_diversity_by_hand():
    # 4-grams: {abcd, bcde}, {abcd, bcdx}, {zzzz}: Jaccard 1/3 between the first two, 0 with the third
    score = DiversityEvaluator().score(["abcde", "abcdx", "zzzzz"], "")
    assert score.tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert DiversityEvaluator(n=2).score(["abc", "abd"], "").tolist() == pytest.approx([2 / 3, 2 / 3])
    assert DiversityEvaluator().score(["alone"], "").tolist() == [1.0]


def test_elbo_evaluator_scores_prompt_and_text_in_bits(char_model, tokenizer_module):
    tok = tokenizer_module
    texts = ["the cat sat on", "the cat sat on", "red dot and tea"]
    elbo = ElboEvaluator(char_model, tok, draws=2, seed=4).score(texts, "a ")
    assert elbo[0] == elbo[1]  # same text, same draws
    for s, t in zip(elbo.tolist(), texts, strict=True):
        assert s == pytest.approx(-diffusion_bpc(char_model, torch.tensor(tok.encode("a " + t)), draws=2, seed=4))
    # higher is better: a denoiser that knows the first text scores it ~0 bits, the other far below
    oracle = _oracle(tok, tok.encode("a " + texts[0]))
    sure = ElboEvaluator(oracle, tok, draws=2).score([texts[0], texts[2]], "a ")
    assert sure[0] > -1e-6 and sure[1] < -10.0


def test_ar_evaluator_is_nats_per_character(tiny_model, tokenizer):
    texts = ["the cat", "a red dot"]
    got = ARLikelihoodEvaluator(tiny_model, tokenizer).score(texts, "a ")
    expect = [-math.log(2) * b for b in text_bpc(tiny_model, tokenizer, ["a " + t for t in texts])]
    assert got.tolist() == pytest.approx(expect, rel=1e-6)


def test_weighted_evaluator():
    texts = ["abcde", "abcdx", "zzzzz"]
    div = DiversityEvaluator().score(texts, "")
    mix = WeightedEvaluator([(1.0, DiversityEvaluator()), (2.0, DiversityEvaluator())]).score(texts, "")
    assert torch.allclose(mix, 3 * div)
    with pytest.raises(ConfigError, match="at least one"):
        WeightedEvaluator([])


# ----------------------------------------------------------------------------- multi-branch search

def test_fork_plan_by_hand():
    scores = torch.tensor([0.0, 5.0, 3.0, 1.0, 4.0, 2.0])
    assert _fork_plan(scores, 2) == ([1, 4], [1, 1, 4, 4])  # 6 places: 3 each, the parent one of them
    assert _fork_plan(scores, 4) == ([1, 4, 2, 5], [1, 4])  # 6 = 2 + 2 + 1 + 1: better rows first
    assert _fork_plan(scores, 1) == ([1], [1] * 5)
    assert _fork_plan(scores, 5) == ([1, 4, 2, 5, 3], [1])
    top, src = _fork_plan(torch.arange(7.0), 3)  # 7 = 3 + 2 + 2
    assert top == [6, 5, 4] and src == [6, 6, 5, 4]


class CountE:
    """A transparent evaluator (more 'e' is better) that records what it was asked."""

    def __init__(self):
        self.calls = []

    def score(self, texts, prompt):
        self.calls.append(list(texts))
        return torch.tensor([float(t.count("e")) for t in texts])


def test_branch_search_bookkeeping(char_model, tokenizer_module):
    ev = CountE()
    res = branch_search(char_model, tokenizer_module, "the ", length=24, branches=6, keep=2, points=[0.5, 0.25],
                        seed=0, evaluator=ev, sampler="confidence")
    assert len(ev.calls) == 3 and all(len(c) == 6 for c in ev.calls)
    assert [b.score for b in res.branches] == [float(b.text.count("e")) for b in res.branches]
    assert [b.score for b in res.branches] == sorted((b.score for b in res.branches), reverse=True)
    assert res.best_per_round == [max(t.count("e") for t in c) for c in ev.calls]
    assert res.best_per_round == sorted(res.best_per_round)  # parents are kept: never worse
    # the last fork kept the 2 best of round 2's pool and made 2 children of each, seeds 10..13
    kept = [b for b in res.branches if b.round < 2]
    kids = [b for b in res.branches if b.round == 2]
    top2 = sorted(ev.calls[1], key=lambda t: -t.count("e"))[:2]
    assert sorted(b.text.count("e") for b in kept) == sorted(t.count("e") for t in top2)
    assert sorted(b.seed for b in kids) == [10, 11, 12, 13]
    by_seed = {b.seed: b for b in res.branches}
    assert sorted(b.parent_seed for b in kids) == sorted(2 * [b.seed for b in kept])
    for b in kids:  # a child re-noised a quarter of the 20 generated characters of its parent
        assert sum(a != c for a, c in zip(b.text, by_seed[b.parent_seed].text, strict=True)) <= 5
    for b in kept:  # a first-round branch is its own seed's draw; a round-1 child has a seed in 6..9
        if b.round == 0:
            assert b.parent_seed is None and b.text == ev.calls[0][b.seed]
        else:
            assert 6 <= b.seed <= 9 and 0 <= b.parent_seed < 6


def test_branch_search_without_keep_ranks_independent_draws(char_model, tokenizer_module):
    tok = tokenizer_module
    ev = CountE()
    res = branch_search(char_model, tok, "the ", length=20, branches=3, seed=5, evaluator=ev, sampler="topk", k=2)
    assert len(ev.calls) == 1 and len(res.best_per_round) == 1
    assert sorted(b.seed for b in res.branches) == [5, 6, 7]
    for b in res.branches:  # branch i is seed + i's draw, alone
        alone = generate(char_model, torch.tensor(tok.encode("the ")), 20, RowNoise([b.seed]), sampler="topk", k=2)
        assert (b.text, b.round, b.parent_seed) == (tok.decode(alone.tokens[0, 4:]), 0, None)


class Recording(torch.nn.Module):
    """A model that records every input it is given, then runs the real one."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.wte, self.inputs = inner, inner.config, inner.wte, []

    def forward(self, idx, **kw):
        self.inputs.append(idx.clone())
        return self.inner(idx, **kw)


def test_branch_search_forks_re_noise_only_generated_positions(char_model, tokenizer_module):
    model = Recording(char_model)  # one window (length 16 = block), so window positions are absolute
    branch_search(model, tokenizer_module, "the ", length=16, branches=4, keep=1, points=[0.5, 1.0], seed=0,
                  evaluator=CountE(), sampler="confidence")
    MASK = tokenizer_module.vocab_size
    assert all(not (x[:, :4] == MASK).any() for x in model.inputs)  # the prompt is never masked
    masked = [int((x == MASK).sum(-1).max()) for x in model.inputs]
    assert masked[0] == 12 and masked.count(12) == 2 and 6 in masked  # first draw, f = 0.5 of 12, f = 1


@pytest.mark.parametrize("kw, message", [
    ({"branches": 0}, "branches must be a positive integer"),
    ({"keep": 0}, "keep must be a positive integer"),
    ({"points": [0.0]}, "fork points must be noise levels"),
    ({"points": [1.5]}, "fork points must be noise levels"),
    ({"length": 3}, "must be at least the prompt length"),
])
def test_branch_search_errors(char_model, tokenizer_module, kw, message):
    with pytest.raises(ConfigError, match=message):
        branch_search(char_model, tokenizer_module, "the ", **{"length": 20, **kw})
