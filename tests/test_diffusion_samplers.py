"""Diffusion samplers, multi-branch search and re-noising: invariants, seeds, and oracle reconstruction."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.generation.diffusion import SAMPLERS, denoise, generate, infill
from mixture_of_thoughts.generation.search import (
    DiversityEvaluator,
    ElboEvaluator,
    WeightedEvaluator,
    branch_search,
    choose_positions,
    renoise,
)
from mixture_of_thoughts.rng import RowNoise
from test_diffusion import FixedLogits, V, diffusion_model

L = 16
KW = {"ancestral": {"steps": 8}, "topk": {"k": 3}, "confidence": {"threshold": 0.5}}


@pytest.fixture(scope="module")
def model():
    return diffusion_model()


def _inputs(B=3):
    x = torch.randint(V, (B, L), generator=torch.Generator().manual_seed(0))
    known = torch.zeros(B, L, dtype=torch.bool)
    known[:, :4] = True  # a prompt
    known[:, 10:12] = True  # and an infilling constraint
    return x, known


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_known_positions_fixed_and_no_mask_left(model, sampler):
    x, known = _inputs()
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler=sampler, trajectory=[], **KW[sampler])
    assert torch.equal(out.tokens[known], x[known])
    assert not (out.tokens == V).any()
    for snap in out.trajectory:
        assert torch.equal(snap[known], x[known])
    # masks only ever go away: each step's masked set is a subset of the previous one
    masks = [(s == V) for s in [torch.where(known, x, V)] + out.trajectory]
    for a, b in pairwise(masks):
        assert not (b & ~a).any()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_output_and_branch_alone(model, sampler):
    x, known = _inputs()
    a = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler=sampler, **KW[sampler]).tokens
    b = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler=sampler, **KW[sampler]).tokens
    assert torch.equal(a, b)
    alone = denoise(model, x[1:2], RowNoise([2]), known=known[1:2], sampler=sampler, **KW[sampler]).tokens
    assert torch.equal(alone[0], a[1])
    other = denoise(model, x, RowNoise([4, 5, 6]), known=known, sampler=sampler, **KW[sampler]).tokens
    assert not torch.equal(a, other)


def _revealed_per_step(out, known):
    masks = [(~known)] + [(s == V) for s in out.trajectory]
    return torch.stack([(a & ~b).sum(-1) for a, b in pairwise(masks)])  # (steps, B)


def test_topk_decodes_exactly_k(model):
    x, known = _inputs()
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler="topk", k=3, trajectory=[])
    per = _revealed_per_step(out, known)
    n = int((~known[0]).sum())  # 10 to generate: 3, 3, 3, 1
    assert per[:, 0].tolist() == [3, 3, 3, 1] and out.steps == -(-n // 3)
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler="topk", steps=5, trajectory=[])
    assert _revealed_per_step(out, known)[:, 0].tolist() == [2] * 5  # k = ceil(10 / 5)


@pytest.mark.parametrize("threshold", [1.0, 0.05])
def test_confidence_at_least_one_per_step(model, threshold):
    x, known = _inputs()
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler="confidence", threshold=threshold,
                  trajectory=[])
    per = _revealed_per_step(out, known)
    done_before = torch.cumsum(per, 0) - per
    active = done_before < (~known).sum(-1)  # rows that still had masks at that step
    assert (per[active] >= 1).all()
    if threshold == 1.0:  # nothing exceeds probability 1: exactly one per step
        assert (per[active] == 1).all()


def test_ancestral_reuses_logits_when_nothing_changes(model):
    x, known = _inputs(B=1)
    out = denoise(model, x, RowNoise([0]), known=known, sampler="ancestral", steps=64)
    assert out.steps == 64 and out.forwards < out.steps


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_oracle_reconstructs_the_text(sampler):
    truth = torch.randint(V, (L,), generator=torch.Generator().manual_seed(5))
    oracle = FixedLogits(20.0 * F.one_hot(truth, V + 1).float(), L)
    x = torch.full((2, L), V)
    x[:, 0] = truth[0]
    out = denoise(oracle, x, RowNoise([0, 1]), sampler=sampler, **KW[sampler])
    assert torch.equal(out.tokens, truth.expand(2, L))


def test_semi_autoregressive_generation(model):
    prompt = torch.tensor([1, 2, 3])
    out = generate(model, prompt, 40, RowNoise([7, 8]), sampler="confidence", trajectory=True)
    assert out.tokens.shape == (2, 40) and not (out.tokens == V).any()
    assert torch.equal(out.tokens[:, :3], prompt.expand(2, 3))
    assert len(out.trajectory) == out.steps + 1 and out.trajectory[0][0, 3:].eq(V).all()
    alone = generate(model, prompt, 40, RowNoise([8]), sampler="confidence").tokens
    assert torch.equal(alone[0], out.tokens[1])
    with pytest.raises(ConfigError, match="at least the prompt length"):
        generate(model, prompt, 2, RowNoise([0]))


def test_temperature_zero_is_seed_independent_for_topk(model):
    x, known = _inputs(B=1)
    a = denoise(model, x, RowNoise([0]), known=known, sampler="topk", k=2, temperature=0.0).tokens
    b = denoise(model, x, RowNoise([9]), known=known, sampler="topk", k=2, temperature=0.0).tokens
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- renoise and search

@pytest.fixture(scope="module")
def char_model(tokenizer_module):
    return diffusion_model(vocab=tokenizer_module.vocab_size)


@pytest.fixture(scope="module")
def tokenizer_module(corpus_text):
    from mixture_of_thoughts.data.tokenizer import CharTokenizer

    return CharTokenizer.from_text(corpus_text)


TEXT = "the cat sat on a red dot and ate the tea."  # 41 characters: longer than the block (16)


def test_renoise_zero_returns_input(char_model, tokenizer_module):
    res = renoise(char_model, tokenizer_module, TEXT, noise=0.0, variants=3, seed=1)
    assert [v.text for v in res.variants] == [TEXT] * 3


@pytest.mark.parametrize("span", [None, (4, 20)])
def test_renoise_changes_only_masked_positions(char_model, tokenizer_module, span):
    p = 0.5
    res = renoise(char_model, tokenizer_module, TEXT, noise=p, variants=4, seed=3, span=span)
    eligible = len(TEXT) if span is None else span[1] - span[0]
    dev = char_model.wte.weight.device
    ok = torch.ones(len(TEXT), dtype=torch.bool, device=dev)
    if span is not None:
        ok[:] = False
        ok[span[0]:span[1]] = True
    masked = choose_positions(RowNoise([3, 4, 5, 6]), ok, round(p * eligible))
    for i, v in enumerate(res.variants):
        assert v.masked == round(p * eligible) and len(v.text) == len(TEXT)
        changed = torch.tensor([a != b for a, b in zip(v.text, TEXT, strict=True)])
        assert not (changed & ~masked[i]).any()  # only masked positions may change
        assert v.changed == int(changed.sum())
    assert len({v.text for v in res.variants}) > 1


def test_renoise_errors(char_model, tokenizer_module):
    with pytest.raises(ConfigError, match="noise must be in"):
        renoise(char_model, tokenizer_module, TEXT, noise=-0.1)
    with pytest.raises(ConfigError, match="outside the text"):
        renoise(char_model, tokenizer_module, TEXT, noise=0.3, span=(5, 5))


def test_infill_over_several_windows_keeps_known(char_model, tokenizer_module):
    ids = torch.tensor(tokenizer_module.encode(TEXT))
    known = torch.ones(len(ids), dtype=torch.bool)
    known[[2, 17, 18, 35]] = False
    out = infill(char_model, ids.expand(2, -1), RowNoise([0, 1]), known=known)
    assert torch.equal(out.tokens[:, known], ids.expand(2, -1)[:, known])
    assert not (out.tokens == tokenizer_module.vocab_size).any()


def test_evaluators(char_model, tokenizer_module):
    texts = ["the cat sat on", "the cat sat on", "red dot and tea"]
    div = DiversityEvaluator().score(texts, "")
    assert div.tolist()[:2] == [0.0, 0.0] and div[2] > 0.9
    elbo = ElboEvaluator(char_model, tokenizer_module, draws=2).score(texts, "x ")
    assert elbo.shape == (3,) and elbo[0] == elbo[1] and (elbo < 0).all()  # same text, same draws
    mix = WeightedEvaluator([(1.0, DiversityEvaluator()), (2.0, DiversityEvaluator())]).score(texts, "")
    assert torch.allclose(mix, 3 * div)


def test_branch_search_ranks_and_keeps_best(char_model, tokenizer_module):
    calls = []

    class LengthOfE:  # a transparent evaluator: more 'e' is better
        def score(self, texts, prompt):
            calls.append(list(texts))
            return torch.tensor([float(t.count("e")) for t in texts])

    res = branch_search(char_model, tokenizer_module, "the ", length=24, branches=6, keep=2, points=[0.5, 0.25],
                        seed=0, evaluator=LengthOfE(), sampler="confidence")
    assert len(res.branches) == 6 and len(calls) == 3
    scores = [b.score for b in res.branches]
    assert scores == sorted(scores, reverse=True)
    assert res.best_per_round == sorted(res.best_per_round)  # parents are kept: never worse
    assert {b.round for b in res.branches} <= {0, 1, 2}
    first = max(t.count("e") for t in calls[0])
    assert res.branches[0].score >= first
    forked = [b for b in res.branches if b.parent_seed is not None]
    assert all(b.seed >= 6 for b in forked)
