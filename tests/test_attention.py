"""RoPE and self-attention: relative positions, causality, and the sliding-window KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from mixture_of_thoughts.layers.attention import (
    KVCache,
    SelfAttention,
    apply_rope,
    project_qkv_rope,
    rope_angles,
    split_heads,
)

D, H, HS = 32, 2, 16
ATOL = 1e-5


def _attn(causal=True, seed=0) -> SelfAttention:
    torch.manual_seed(seed)  # nn.Linear's default init; tests may seed the global RNG, the library never does
    return SelfAttention(D, H, causal=causal).eval()


def _x(B=2, T=12, seed=1) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


def test_rope_is_a_rotation():
    x = torch.randn(2, H, 10, HS, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_angles(torch.arange(10), HS, 10000.0)
    r = apply_rope(x, cos, sin)
    assert torch.allclose(r.norm(dim=-1), x.norm(dim=-1), atol=ATOL)
    assert torch.allclose(r[:, :, 0], x[:, :, 0])  # position 0 is not rotated
    assert not torch.allclose(r[:, :, 1:], x[:, :, 1:], atol=1e-3)


def test_rope_scores_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, HS, generator=g), torch.randn(1, 1, 1, HS, generator=g)

    def score(m, n):
        cq, sq = rope_angles(torch.tensor([m]), HS, 10000.0)
        ck, sk = rope_angles(torch.tensor([n]), HS, 10000.0)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-4)
    assert score(7, 3) == pytest.approx(score(4, 0), abs=1e-4)
    assert abs(score(7, 3) - score(7, 5)) > 1e-3  # a different distance gives a different score


def _rotate_half_reference(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def test_apply_rope_gives_the_rotate_half_numbers_exactly():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, H, 40, HS, generator=g) * 5
    cos, sin = rope_angles(torch.arange(1000, 1040), HS, 10000.0)
    assert torch.equal(apply_rope(x, cos, sin), _rotate_half_reference(x, cos, sin))


@pytest.mark.parametrize("bias", [False, True])
def test_training_projection_matches_split_heads_in_value_and_gradient(bias):
    """The training path (weight rows interleaved, complex rotation) is the same function as
    ``split_heads(linear(x))``: q and k carry their head dimensions permuted alike, so every score
    ``q . k`` and every v is the same, and so are the gradients."""
    g = torch.Generator().manual_seed(0)
    B, T, nh, hs = 2, 9, 3, 8
    C = nh * hs
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3 * C, C, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * C, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    cos, sin = rope_angles(torch.arange(5, 5 + T), hs, 10000.0)

    def scores(q, k, v):
        return torch.cat([(q @ k.transpose(-1, -2)).flatten(), v.flatten()])

    ref = scores(*split_heads(torch.nn.functional.linear(x, w, b), nh, cos.double(), sin.double()))
    out = scores(*project_qkv_rope(x, w, b, nh, cos.double(), sin.double()))
    assert torch.allclose(out, ref, atol=1e-12)
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    inputs = [t for t in (x, w, b) if t is not None]
    g_ref = torch.autograd.grad((ref * up).sum(), inputs)
    g_out = torch.autograd.grad((out * up).sum(), inputs)
    for a, r in zip(g_out, g_ref, strict=True):
        assert torch.allclose(a, r, atol=1e-10)


def test_training_projection_in_bfloat16_takes_the_real_rotation():
    """No complex bfloat16: the training path rotates back and gives split_heads' q, k, v."""
    g = torch.Generator().manual_seed(1)
    B, T, nh, hs = 2, 5, 2, 8
    x = torch.randn(B, T, nh * hs, generator=g).bfloat16().requires_grad_()
    w = torch.randn(3 * nh * hs, nh * hs, generator=g).bfloat16().requires_grad_()
    cos, sin = rope_angles(torch.arange(T), hs, 10000.0)
    out = project_qkv_rope(x, w, None, nh, cos, sin)
    ref = split_heads(torch.nn.functional.linear(x, w), nh, cos, sin)
    for a, r in zip(out, ref, strict=True):
        assert a.dtype == torch.bfloat16 and torch.equal(a, r)
    sum(t.float().sum() for t in out).backward()
    assert x.grad is not None and w.grad is not None


def test_attention_in_training_matches_inference():
    """Training (with gradient) and inference (no gradient) take different RoPE code: same outputs."""
    attn, x = _attn(), _x()
    with torch.no_grad():
        ref = attn(x, torch.arange(12))
    out = attn(x.requires_grad_(), torch.arange(12))
    assert out.requires_grad
    assert torch.allclose(out, ref, atol=1e-6)


def test_attention_output_is_invariant_to_shifting_all_positions():
    attn, x = _attn(), _x()
    with torch.no_grad():
        base = attn(x, torch.arange(12))
        for shift in (1, 37, 500):
            shifted = attn(x, torch.arange(12) + shift)
            assert torch.allclose(base, shifted, atol=1e-4), shift
        # positions are used at all: reversing them changes the output
        assert not torch.allclose(base, attn(x, torch.arange(12).flip(0)), atol=1e-3)


def test_causal_attention_ignores_the_future():
    attn, x = _attn(), _x()
    x2 = x.clone()
    x2[:, 7] += 1.0
    with torch.no_grad():
        a, b = attn(x, torch.arange(12)), attn(x2, torch.arange(12))
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-4)


def test_bidirectional_attention_sees_the_future():
    attn, x = _attn(causal=False), _x()
    x2 = x.clone()
    x2[:, 7] += 1.0
    with torch.no_grad():
        a, b = attn(x, torch.arange(12)), attn(x2, torch.arange(12))
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)


def test_cache_refused_for_bidirectional_attention():
    attn = _attn(causal=False)
    cache = KVCache(1, 2, H, HS, capacity=16)
    with pytest.raises(ValueError, match="causal"):
        attn(_x(), cache.positions(12), cache, 0)


def _run_cached(attn, x, capacity, prefill):
    """Prefill ``prefill`` positions, then feed the rest one at a time; returns (B, T, D)."""
    cache = KVCache(1, x.shape[0], H, HS, capacity)
    outs = []
    with torch.no_grad():
        for lo, hi in [(0, prefill)] + [(t, t + 1) for t in range(prefill, x.shape[1])]:
            pos = cache.positions(hi - lo)
            outs.append(attn(x[:, lo:hi], pos, cache, 0))
            cache.advance(pos)
    return torch.cat(outs, dim=1), cache


def test_cached_attention_equals_full_attention_within_the_window():
    attn, x = _attn(), _x(T=16)
    with torch.no_grad():
        full = attn(x, torch.arange(16))
    for prefill in (1, 5, 16):
        cached, cache = _run_cached(attn, x, capacity=16, prefill=prefill)
        assert torch.allclose(cached, full, atol=ATOL), prefill
        assert cache.length == 16


@pytest.mark.parametrize("T, prefill", [(30, 5), (20, 18)])  # decode past the window; prefill longer than it
def test_sliding_cache_equals_attention_over_the_last_window(T, prefill):
    """Past the capacity, position p attends to exactly positions p-cap+1..p (absolute RoPE angles)."""
    cap = 8
    attn, x = _attn(), _x(T=T)
    cached, cache = _run_cached(attn, x, capacity=cap, prefill=prefill)
    assert cache.length == T and torch.isfinite(cached).all()
    with torch.no_grad():
        for p in range(T):
            lo = max(0, p - cap + 1)
            ref = attn(x[:, lo:p + 1], torch.arange(lo, p + 1))[:, -1]
            assert torch.allclose(cached[:, p], ref, atol=ATOL), p


def test_cache_reorder_keeps_selected_rows():
    attn, x = _attn(), _x(B=3, T=6)
    _, cache = _run_cached(attn, x, capacity=8, prefill=6)
    k = cache.k.clone()
    cache.reorder(torch.tensor([2, 0]))
    assert torch.equal(cache.k[:, 0], k[:, 2]) and torch.equal(cache.k[:, 1], k[:, 0])


def test_cache_start_gives_a_window_its_absolute_positions():
    cache = KVCache(1, 2, 2, 4, capacity=8, start=13)
    assert cache.length == 13
    assert cache.positions(3).tolist() == [13, 14, 15]


def test_one_token_step_bias_masks_the_slots_not_yet_written_and_none_once_the_window_is_full():
    cap = 4
    cache = KVCache(1, 1, 1, 2, capacity=cap)
    k = v = torch.ones(1, 1, 1, 2)
    for p in range(7):
        pos = cache.positions(1)
        keys, _, mask = cache.write_step(0, k * (p + 1), v, pos)
        bias = cache.step_bias(pos)
        assert bias is cache.step_bias(pos)  # computed once per step, for every layer
        seen = [i <= p for i in range(cap)]
        assert bias.tolist() == [0.0 if s else -math.inf for s in seen]
        assert (mask is None) == (p >= cap) and (mask is None or mask[0].tolist() == seen)
        assert float(keys[0, 0, p % cap, 0]) == p + 1  # the new key is in its ring slot
        cache.advance(pos)
