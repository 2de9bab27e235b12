"""Logit filters, Gumbel-max sampling frequencies, greedy decoding and row independence."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.generation.sampling import process_logits, sample_tokens, validate_sampling
from mixture_of_thoughts.rng import SAMPLE, RowNoise, stream_id

# Dyadic probabilities are exact in float32, so the top-p boundary cases below are exact too.
PROBS = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])


@functools.lru_cache(maxsize=1)
def _many_rows(n: int) -> RowNoise:
    return RowNoise(range(n))  # building 20000 row keys takes a second: share them


def _kept(x: torch.Tensor) -> set[int]:
    return set(torch.isfinite(x[0]).nonzero().flatten().tolist())


def _logits(probs=PROBS) -> torch.Tensor:
    return probs.log()[None, :]


def test_temperature_scales_logits():
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(process_logits(logits, 2.0), logits / 2)
    t = torch.tensor([1.0, 0.5, 0.0])
    out = process_logits(logits, t)
    assert torch.allclose(out[0], logits[0]) and torch.allclose(out[1], logits[1] * 2)
    assert torch.allclose(out[2], logits[2])  # temperature 0 rows are left for argmax


@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_k_keeps_exactly_k(k):
    logits = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))
    out = process_logits(logits, top_k=k)
    assert (torch.isfinite(out).sum(-1) == k).all()
    for row in range(4):
        assert set(torch.isfinite(out[row]).nonzero().flatten().tolist()) == set(logits[row].topk(k).indices.tolist())
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # survivors unchanged
    assert torch.isfinite(process_logits(logits, top_k=50)).all()  # k >= V keeps everything


@pytest.mark.parametrize("p, kept", [
    (0.3, {0}),
    (0.5, {0}),  # 0.5 is reached by the first token alone
    (0.6, {0, 1}),
    (0.75, {0, 1}),  # exactly 0.75 with two tokens: the third is not needed
    (0.8, {0, 1, 2}),
    (0.9375, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3, 4}),
])
def test_top_p_keeps_the_smallest_set_with_enough_mass(p, kept):
    assert _kept(process_logits(_logits(), top_p=p)) == kept


def test_top_p_does_not_depend_on_vocabulary_order():
    perm = torch.tensor([3, 0, 4, 2, 1])
    out = process_logits(_logits(PROBS[perm]), top_p=0.6)
    assert _kept(out) == {1, 4}  # where tokens 0 and 1 went


@pytest.mark.parametrize("min_p, kept", [(0.0, {0, 1, 2, 3, 4}), (0.2, {0, 1, 2}), (0.5, {0, 1}), (1.0, {0})])
def test_min_p_keeps_tokens_above_a_fraction_of_the_top(min_p, kept):
    assert _kept(process_logits(_logits(), min_p=min_p)) == kept


def test_filters_compose_and_keep_at_least_one():
    out = process_logits(_logits(), top_k=3, top_p=0.1, min_p=0.9)
    assert _kept(out) == {0}


@pytest.mark.parametrize("kw, name", [
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"min_p": -0.1}, "min_p"),
])
def test_validate_sampling_names_the_setting(kw, name):
    args = {"temperature": 1.0, "top_k": None, "top_p": None, "min_p": None, **kw}
    with pytest.raises(ConfigError, match=f"^{name}"):
        validate_sampling(**args)


def test_temperature_zero_is_greedy_whatever_the_seed():
    logits = torch.randn(6, 30, generator=torch.Generator().manual_seed(0))
    for seeds in ([0, 1, 2, 3, 4, 5], [9, 8, 7, 6, 5, 4]):
        for pos in (0, 17):
            got = sample_tokens(logits, RowNoise(seeds), pos, temperature=0.0)
            assert torch.equal(got, logits.argmax(-1))


def test_per_row_temperature_zero_only_affects_its_row():
    logits = torch.zeros(2, 50)
    logits[:, 7] = 0.1  # greedy picks 7; sampling from a near-uniform row almost never does
    noise = RowNoise([0, 1])
    picks = [sample_tokens(logits, noise, pos, temperature=torch.tensor([0.0, 1.0])) for pos in range(20)]
    picks = torch.stack(picks)  # (20, 2)
    assert (picks[:, 0] == 7).all()
    assert (picks[:, 1] != 7).sum() >= 15


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gumbel_max_frequencies_match_softmax(temperature):
    """Each of N rows has its own seed, so the N draws are independent samples of softmax(logits / t).

    A category's count is Binomial(N, p): its frequency has std sqrt(p(1-p)/N) <= 0.0035 for
    N = 20000. We allow 5 std per category (chance of a false alarm over 5 categories < 3e-6 if the
    sampler is right; the seeds are fixed, so the test is deterministic anyway) and also check the
    chi-square statistic against the 99.9% point of chi2(4) = 18.47.
    """
    N = 20000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    p = torch.softmax(logits / temperature, -1).double()
    tokens = sample_tokens(logits.expand(N, -1), _many_rows(N), position=3, temperature=temperature)
    freq = torch.bincount(tokens, minlength=5).double() / N
    tol = 5 * torch.sqrt(p * (1 - p) / N)
    assert ((freq - p).abs() <= tol).all(), (freq, p)
    chi2 = float((N * (freq - p) ** 2 / p).sum())
    assert chi2 < 18.47


def test_frequencies_over_positions_of_one_row_match_softmax():
    """One seed, many positions: the draws along a row are independent too (same tolerance argument)."""
    N = 20000
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    p = torch.softmax(logits[0], -1).double()
    noise = RowNoise([123])
    g = noise.gumbel(stream_id(SAMPLE), torch.arange(N), (3,))[0]  # (N, 3): what sample_tokens uses per position
    tokens = (logits + g).argmax(-1)
    freq = torch.bincount(tokens, minlength=3).double() / N
    assert ((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / N)).all()
    # and sample_tokens does use that draw
    for pos in (0, 5, 999):
        assert int(sample_tokens(logits, noise, pos)) == int(tokens[pos])


def test_row_alone_equals_row_in_batch():
    logits = torch.randn(4, 40, generator=torch.Generator().manual_seed(0))
    seeds = [11, 22, 33, 44]
    batch_noise = RowNoise(seeds)
    for pos in range(0, 50, 7):
        batch = sample_tokens(logits, batch_noise, pos, temperature=0.9, top_k=30)
        for r, s in enumerate(seeds):
            alone = sample_tokens(logits[r:r + 1], RowNoise([s]), pos, temperature=0.9, top_k=30)
            assert int(alone) == int(batch[r])
    # the batch order does not matter either
    rev = sample_tokens(logits.flip(0), RowNoise(seeds[::-1]), 3)
    assert torch.equal(rev.flip(0), sample_tokens(logits, batch_noise, 3))


def test_sampled_token_always_survives_the_filters():
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(1))
    noise = RowNoise(range(64))
    for kw in ({"top_k": 3}, {"top_p": 0.5}, {"min_p": 0.3}):
        allowed = torch.isfinite(process_logits(logits, **kw))
        tok = sample_tokens(logits, noise, 0, **kw)
        assert allowed.gather(1, tok[:, None]).all(), kw


def test_uniform_draws_are_in_the_open_unit_interval():
    u = RowNoise([0, 1, 2]).uniform(7, torch.arange(1000), (4,))
    assert u.shape == (3, 1000, 4) and float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())


@pytest.mark.parametrize("p", [0.3, 0.8, 0.95])
def test_top_p_over_a_large_vocabulary_keeps_what_sorting_every_row_keeps(p):
    """Beyond NUCLEUS_CANDIDATES tokens the nucleus is found among the most likely ones first; peaked
    rows (found there) and flat rows (whose candidates fall short: sorted whole) keep the same set."""
    from mixture_of_thoughts.generation.sampling import NUCLEUS_CANDIDATES, _nucleus, _nucleus_sorted

    g = torch.Generator().manual_seed(3)
    V = 4 * NUCLEUS_CANDIDATES
    x = torch.randn(6, V, generator=g) * 3
    x[:3, :5] += 10.0  # peaked
    x[3:] *= 0.02  # nearly flat: the candidates hold ~1/4 of the mass
    got, want = _nucleus(x, p), _nucleus_sorted(x, p)
    assert torch.equal(got, want)
    kept = torch.isfinite(got).sum(-1)
    assert (kept[:3] < NUCLEUS_CANDIDATES).all() and (kept[3:] > NUCLEUS_CANDIDATES).all()
