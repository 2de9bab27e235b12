"""Diffusion samplers: a slow reference, the reveal rules, seeds, and oracle reconstruction."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_model_config
from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.generation.diffusion import (
    DEFAULT_STEPS,
    SAMPLERS,
    _refresh_logits,
    _reveal_ancestral,
    _reveal_confident,
    _reveal_topk,
    _Rule,
    denoise,
    generate,
    infill,
    propose,
)
from mixture_of_thoughts.models.diffusion import EPS, LINEAR
from mixture_of_thoughts.models.transformer import ModelOutput
from mixture_of_thoughts.rng import DIFFUSION, RowNoise, stream_id
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


class _FakeDenoiser(nn.Module):
    """Counts its calls; the samplers read ``config``, ``wte`` (for the device) and the logits."""

    def __init__(self, vocab: int, block_size: int):
        super().__init__()
        self.wte = nn.Embedding(1, 1)
        self.config = tiny_model_config(vocab_size=vocab, block_size=block_size, causal=False,
                                        time_conditioning=True)
        self.calls = []  # (rows in the batch, time input) per call


class ToyDenoiser(_FakeDenoiser):
    """Logits that depend on the input and on the time input, row by row and position by position:
    ``table[l] + follow[x[b, l-1]] + t_b * tilt``. Elementwise, so a row gets the same logits alone as
    in any batch, and a reference can run it one row at a time."""

    def __init__(self, seed: int = 0):
        super().__init__(V + 1, L)
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(L, V + 1, generator=g)
        self.follow = 2.0 * torch.randn(V + 1, V + 1, generator=g)
        self.tilt = 3.0 * torch.randn(V + 1, generator=g)

    def forward(self, idx, *, noise=None, creativity=None, time=None, **kw):
        self.calls.append((idx.shape[0], time.clone()))
        prev = torch.cat([torch.full_like(idx[:, :1], V), idx[:, :-1]], 1)
        logits = self.table[:idx.shape[1]] + self.follow[prev] + time[:, None, None] * self.tilt
        return ModelOutput(logits, None, torch.zeros(()), {})


# ----------------------------------------------------------------------------- a slow reference

def _slow_row(model, x, known, seed, sampler, steps, k, threshold, T):
    """One row, one step and one position at a time, recomputing the logits at every step: the
    samplers as the module docstring states them. Returns the row's states (input first)."""
    noise = RowNoise([seed])
    pos = torch.arange(L)
    x = torch.where(known, x, V)
    states = [x.clone()]
    step = 0
    while (x == V).any():
        masked = [i for i in range(L) if x[i] == V]
        logits = model(x[None], time=torch.tensor([max(EPS, len(masked) / L)])).logits[0].float()
        logits[:, V] = float("-inf")
        u_tok = noise.uniform(stream_id(DIFFUSION, step, 1), pos)[0]
        u_rev = noise.uniform(stream_id(DIFFUSION, step, 0), pos)[0]
        tok, conf = {}, {}
        for i in masked:
            probs = torch.softmax(logits[i] / (T if T > 0 else 1.0), -1)
            if T > 0:  # inverse CDF: the first id whose cumulative probability reaches u
                cdf = probs.cumsum(-1)
                tok[i] = next(v for v in range(V + 1) if cdf[v] >= u_tok[i] * cdf[-1])
            else:
                tok[i] = int(logits[i].argmax())
            conf[i] = float(probs[tok[i]])
        if sampler == "ancestral":
            t, s = 1.0 - step / steps, 1.0 - (step + 1) / steps
            reveal = [i for i in masked if s == 0.0 or bool(u_rev[i] < (t - s) / t)]
        elif sampler == "topk":
            reveal = sorted(masked, key=lambda i: -conf[i])[:k]
        else:
            best = max(masked, key=lambda i: conf[i])
            reveal = [i for i in masked if conf[i] > threshold or i == best]
        for i in reveal:
            x[i] = tok[i]
        states.append(x.clone())
        step += 1
    return states


CASES = [("ancestral", {"steps": 32}), ("ancestral", {"steps": 3}), ("topk", {"k": 3}), ("topk", {"steps": 4}),
         ("confidence", {"threshold": 0.5}), ("confidence", {"threshold": 0.2})]


@pytest.mark.parametrize("sampler, kw", CASES)
def test_batched_sampler_matches_slow_reference(sampler, kw):
    model = ToyDenoiser()
    x = torch.randint(V, (4, L), generator=torch.Generator().manual_seed(1))
    known = torch.zeros(4, L, dtype=torch.bool)
    known[0, :4] = True
    known[1, 10:14] = True
    known[2, ::3] = True
    known[3] = True  # nothing to do in this row
    T = torch.tensor([1.0, 0.0, 0.7, 1.0])
    seeds = [3, 4, 5, 6]
    steps = kw.get("steps", DEFAULT_STEPS)
    k = kw.get("k") or -(-int((~known).sum(-1).max()) // steps)  # topk's default: from the fullest row
    out = denoise(model, x, RowNoise(seeds), known=known, sampler=sampler, temperature=T, trajectory=True, **kw)
    ref = [_slow_row(model, x[b], known[b], seeds[b], sampler, steps, k, kw.get("threshold"), float(T[b]))
           for b in range(4)]
    assert torch.equal(out.tokens, torch.stack([r[-1] for r in ref]))
    assert out.steps == max(len(r) for r in ref) - 1 and len(out.trajectory) == out.steps + 1
    for i, snap in enumerate(out.trajectory):
        assert torch.equal(snap, torch.stack([r[min(i, len(r) - 1)] for r in ref]))
    # one forward per step in which some row still had masks and had revealed something (or began)
    fresh = [any(i < len(r) - 1 and (i == 0 or not torch.equal(r[i], r[i - 1])) for r in ref)
             for i in range(out.steps)]
    assert out.forwards == sum(fresh)
    if sampler == "ancestral" and kw["steps"] == 32:
        assert out.forwards < out.steps  # this case does exercise the reuse


# ----------------------------------------------------------------------------- the parts

def test_reveal_rules_by_hand():
    masked = torch.tensor([[True, True, False, True], [False, False, False, False], [True, False, False, False]])
    conf = torch.tensor([[0.2, 0.9, 0.99, 0.5], [0.9, 0.9, 0.9, 0.9], [0.1, 0.8, 0.8, 0.8]])
    u = torch.tensor([[0.3, 0.7, 0.1, 0.5], [0.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.1, 0.1]])
    assert _reveal_ancestral(masked, u, 0.6).tolist() == [[True, False, False, True], [False] * 4, [False] * 4]
    # the last step reveals everything, even a uniform that rounded up to 1 in float32
    assert torch.equal(_reveal_ancestral(masked, torch.ones(3, 4), 1.0), masked)
    # topk: the k most confident *masked* positions (0.99 at column 2 is known); all of them if fewer
    assert _reveal_topk(masked, conf, 2).tolist() == [[False, True, False, True], [False] * 4,
                                                      [True, False, False, False]]
    assert torch.equal(_reveal_topk(masked, conf, 9), masked)
    # confidence: above the threshold, or the row's best masked position when none is
    assert _reveal_confident(masked, conf, 0.4).tolist() == [[False, True, False, True], [False] * 4,
                                                             [True, False, False, False]]
    assert _reveal_confident(masked, conf, 0.5)[0].tolist() == [False, True, False, False]  # 0.5 is not above 0.5
    assert _reveal_confident(masked, conf, 0.95).tolist() == [[False, True, False, False], [False] * 4,
                                                              [True, False, False, False]]


def test_rule_defaults():
    assert _Rule.resolve("topk", None, None, 0.9, LINEAR, 130).k == -(-130 // DEFAULT_STEPS) == 3
    assert _Rule.resolve("topk", 5, None, 0.9, LINEAR, 11).k == 3  # ceil(11 / 5)
    assert _Rule.resolve("topk", 5, 7, 0.9, LINEAR, 11).k == 7
    assert _Rule.resolve("topk", 5, None, 0.9, LINEAR, 0).k == 1
    assert _Rule.resolve("ancestral", None, None, 0.9, LINEAR, 11) == _Rule("ancestral", DEFAULT_STEPS, None, 0.9,
                                                                              LINEAR)


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_propose_draws_from_the_tempered_softmax(T):
    """Many positions with the same logits: the draws' frequencies are softmax(logits / T), never [MASK]."""
    n = 20000
    logits = torch.tensor([1.0, 0.0, 2.0, -1.0, float("-inf")]).expand(1, n, 5)
    tok, conf = propose(logits, RowNoise([7]), 0, torch.arange(n), T)
    p = torch.softmax(logits[0, 0] / T, -1)
    freq = torch.bincount(tok[0], minlength=5).double() / n
    se = (p * (1 - p) / n).sqrt()
    assert freq[4] == 0 and ((freq - p).abs() <= 4 * se + 1e-12).all()
    assert torch.allclose(conf[0], p[tok[0]])
    tok0, conf0 = propose(logits[:, :3], RowNoise([7]), 0, torch.arange(3), 0.0)  # greedy
    assert tok0.tolist() == [[2, 2, 2]] and torch.allclose(conf0, torch.softmax(logits[0, 0], -1)[2].expand(1, 3))


def test_refresh_logits_recomputes_only_stale_rows_with_masks():
    model = ToyDenoiser()
    x = torch.randint(V, (3, L), generator=torch.Generator().manual_seed(0))
    masked = torch.zeros(3, L, dtype=torch.bool)
    masked[0, 2] = masked[2, :4] = True  # row 1 has nothing masked
    x = torch.where(masked, V, x)
    old = torch.full((3, L, V + 1), 7.0)
    stale = torch.tensor([False, True, True])
    new, evaluated = _refresh_logits(model, x, masked, old, stale, RowNoise([0, 1, 2]), None, LINEAR)
    assert evaluated and len(model.calls) == 1 and model.calls[0][0] == 1  # row 2 alone
    assert torch.equal(model.calls[0][1], torch.tensor([4 / L]))  # its masked fraction
    assert torch.equal(new[:2], old[:2]) and (old == 7.0).all()  # row 0 reused, the input untouched
    expect = model.table + model.follow[torch.cat([torch.tensor([V]), x[2, :-1]])] + (4 / L) * model.tilt
    expect[:, V] = float("-inf")
    assert torch.equal(new[2], expect)
    same, evaluated = _refresh_logits(model, x, masked, old, torch.tensor([False, True, False]), RowNoise([0, 1, 2]),
                                      None, LINEAR)
    assert not evaluated and same is old and len(model.calls) == 1


# ----------------------------------------------------------------------------- the real model

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_known_positions_fixed_and_no_mask_left(model, sampler):
    x, known = _inputs()
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler=sampler, trajectory=True, **KW[sampler])
    assert torch.equal(out.trajectory[0], torch.where(known, x, V)) and len(out.trajectory) == out.steps + 1
    assert torch.equal(out.tokens[known], x[known])
    assert not (out.tokens == V).any()
    for snap in out.trajectory:
        assert torch.equal(snap[known], x[known])
    # masks only ever go away: each step's masked set is a subset of the previous one
    for a, b in pairwise([s == V for s in out.trajectory]):
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


def _revealed_per_step(out):
    masks = [(s == V) for s in out.trajectory]
    return torch.stack([(a & ~b).sum(-1) for a, b in pairwise(masks)])  # (steps, B)


def test_topk_decodes_exactly_k(model):
    x, known = _inputs()
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler="topk", k=3, trajectory=True)
    per = _revealed_per_step(out)
    n = int((~known[0]).sum())  # 10 to generate: 3, 3, 3, 1
    assert per[:, 0].tolist() == [3, 3, 3, 1] and out.steps == -(-n // 3)
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler="topk", steps=5, trajectory=True)
    assert _revealed_per_step(out)[:, 0].tolist() == [2] * 5  # k = ceil(10 / 5)


@pytest.mark.parametrize("threshold", [1.0, 0.05])
def test_confidence_at_least_one_per_step(model, threshold):
    x, known = _inputs()
    out = denoise(model, x, RowNoise([1, 2, 3]), known=known, sampler="confidence", threshold=threshold,
                  trajectory=True)
    per = _revealed_per_step(out)
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


class NextCharOracle(_FakeDenoiser):
    """Knows the rule of a text ``x[i] = (x[i-1] + 1) mod V``: sure of a position whose left neighbour
    is decided, uniform where it is ``[MASK]`` (or absent). It sees only its window, as a model does."""

    def __init__(self, block_size: int):
        super().__init__(V + 1, block_size)

    def forward(self, idx, *, noise=None, creativity=None, time=None, **kw):
        prev = torch.cat([torch.full_like(idx[:, :1], V), idx[:, :-1]], 1)
        logits = 30.0 * F.one_hot((prev + 1) % V, V + 1).float()
        return ModelOutput(torch.where((prev == V)[..., None], 0.0, logits), None, torch.zeros(()), {})


@pytest.mark.parametrize("sampler", ["confidence", "topk"])
def test_infill_over_several_windows_reconstructs_the_text(sampler):
    """Unknown runs in several windows (block 16, 41 positions): each window must hold decided left
    context and write its result back for the next, or the oracle cannot recover the text."""
    truth = (3 + torch.arange(41)) % V
    known = torch.ones(41, dtype=torch.bool)
    known[[2, 17, 18, 35]] = False
    known[20:31] = False  # a run longer than half a block
    x = torch.where(known, truth, 0).expand(2, -1)
    kw = {"threshold": 0.5} if sampler == "confidence" else {"k": 1}
    out = infill(NextCharOracle(16), x, RowNoise([0, 1]), known=known, sampler=sampler, trajectory=True, **kw)
    assert torch.equal(out.tokens, truth.expand(2, -1))
    assert len(out.trajectory) == out.steps + 1 and torch.equal(out.trajectory[-1], out.tokens)
    assert torch.equal(out.trajectory[0], torch.where(known, truth, V).expand(2, -1))
