"""Counter-based noise: exact integer hashing, per-row independence, distributions."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mixture_of_thoughts.rng import GeneratorNoise, Noise, RowNoise, _mul32, bits_to_normal, hash32, stream_id

MASK = 0xFFFFFFFF


def lowbias32(x: int) -> int:
    """Pure-Python reference of Chris Wellons' lowbias32 hash."""
    x &= MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK
    x ^= x >> 16
    return x


def test_mul32_is_exact_even_when_the_int64_product_overflows():
    xs = [0, 1, MASK, MASK - 1, 2**31, 2**31 - 1] + [random.Random(0).getrandbits(32) for _ in range(2000)]
    a = torch.tensor(xs, dtype=torch.int64)
    for b in (0x7FEB352D, 0x846CA68B, MASK):
        assert _mul32(a, b).tolist() == [(x * b) & MASK for x in xs]


def test_hash32_matches_the_reference():
    xs = [0, 1, 12345, MASK] + [random.Random(1).getrandbits(32) for _ in range(1000)]
    assert hash32(torch.tensor(xs, dtype=torch.int64)).tolist() == [lowbias32(x) for x in xs]


def test_rows_do_not_depend_on_the_batch():
    pos = torch.arange(5, 9)
    batch = RowNoise([3, 1, 4])
    for i, seed in enumerate([3, 1, 4]):
        alone = RowNoise([seed])
        for draw in ("uniform", "gumbel", "normal"):
            a = getattr(batch, draw)(stream_id(2, 1), pos, (7,))[i]
            b = getattr(alone, draw)(stream_id(2, 1), pos, (7,))[0]
            assert torch.equal(a, b), draw
    # a subset of rows keeps its keys
    assert torch.equal(batch.select(torch.tensor([2])).uniform(9, pos, (3,)), RowNoise([4]).uniform(9, pos, (3,)))


def test_draws_are_keyed_by_position_stream_and_seed():
    n = RowNoise([7])
    u = n.uniform(1, torch.arange(10), (4,))
    # the same position alone gives the same numbers (what makes the KV cache and no-cache paths agree)
    assert torch.equal(n.uniform(1, torch.tensor([6]), (4,))[0, 0], u[0, 6])
    assert not torch.equal(n.uniform(2, torch.arange(10), (4,)), u)  # other stream
    assert not torch.equal(RowNoise([8]).uniform(1, torch.arange(10), (4,)), u)  # other seed
    seq = n.uniform(1, None, (4,))
    assert seq.shape == (1, 1, 4)  # a per-sequence draw: one value for every position


def test_distributions():
    n = RowNoise(list(range(4)))
    pos = torch.arange(64)
    u = n.uniform(1, pos, (1000,))
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005  # sd of the mean of 256k U(0,1): 0.00057
    z = n.normal(2, pos, (1000,))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01  # sd of mean: 0.002
    g = n.gumbel(3, pos, (1000,))
    assert abs(float(g.mean()) - 0.5772156649) < 0.01  # Euler-Mascheroni; sd of mean: 0.0025
    # neighbouring numbers are uncorrelated
    flat = u.flatten()
    r = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(float(r)) < 0.01


def test_generator_noise_reproduces_from_its_seed():
    a = GeneratorNoise(torch.Generator().manual_seed(5), 3).normal(0, torch.arange(4), (2,))
    b = GeneratorNoise(torch.Generator().manual_seed(5), 3).normal(0, torch.arange(4), (2,))
    assert a.shape == (3, 4, 2) and torch.equal(a, b)
    assert math.isfinite(float(GeneratorNoise(torch.Generator().manual_seed(0), 2).gumbel(0, None, (5,)).max()))


def test_normals_are_finite_at_the_extreme_bit_patterns():
    # the top 24-bit pattern used to round to u = 1.0 in float32: ndtri(1) = inf, and 0 * inf = NaN
    # at creativity 0 (seen on a 30-layer model every ~130 tokens)
    top = torch.tensor([MASK, MASK - 255, 0, 255, 0x80000000], dtype=torch.int64)
    z = bits_to_normal(top)
    assert torch.isfinite(z).all()
    assert z[0] > 5.0 and z[1] > 5.0  # the top patterns stay in the far upper tail
    assert z[2] < -5.0 and z[3] < -5.0  # and the bottom ones in the lower tail
    assert abs(float(z[4])) < 1e-6  # the middle pattern is the median
    # every other pattern is the inverse normal CDF of u = (top24 + 0.5) / 2**24 in float32 (computed
    # as sqrt(2) erfinv(2u - 1): a few ulp from float32 ndtri)
    mid = torch.arange(0, 2**24 - 1, 97, dtype=torch.int64)
    ref = torch.special.ndtri(((mid.double() + 0.5) / 2**24).float())
    assert torch.allclose(bits_to_normal(mid << 8), ref, rtol=2e-6, atol=2e-6)


def test_noise_sources_follow_the_protocol():
    row, gen = RowNoise([1, 2]), GeneratorNoise(torch.Generator().manual_seed(0), 2)
    assert isinstance(row, Noise) and isinstance(gen, Noise)
    assert row.per_row and not gen.per_row
    assert gen.iid_normal((3, 5)).shape == (3, 5)
    assert row.for_batch(2) is row
    with pytest.raises(ValueError, match="2 rows"):
        row.for_batch(3)


def test_float32_uniforms_stay_below_one_at_the_top_bit_pattern():
    row = RowNoise([0])
    bits = torch.tensor([[[MASK, 0]]], dtype=torch.int64)
    row._bits = lambda stream, positions, tail: bits  # the two extreme hash values
    u = row.uniform(1, None, (2,))
    assert u.dtype == torch.float32
    assert 0.0 < float(u[0, 0, 1]) and float(u[0, 0, 0]) < 1.0  # (2**32 - 0.5) / 2**32 rounds to 1.0 unclamped
    assert float(row.uniform(1, None, (2,), torch.float64)[0, 0, 0]) == (MASK + 0.5) / 2**32


def test_large_generator_normals_depend_on_the_seed_alone_not_the_thread_count():
    shape = (600, 1000)  # above the size that is split over two threads
    draw = lambda: GeneratorNoise(torch.Generator().manual_seed(3), 1).iid_normal(shape)  # noqa: E731
    a = draw()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = draw()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    assert not torch.equal(a[:300], a[300:])  # the two halves come from different streams
    assert abs(float(a.mean())) < 0.01 and abs(float(a.std()) - 1.0) < 0.01
    assert not torch.equal(a, GeneratorNoise(torch.Generator().manual_seed(4), 1).iid_normal(shape))


def test_int32_hash_gives_the_same_bits_as_the_reference():
    from mixture_of_thoughts.rng import _hash32_int32

    xs = [0, 1, MASK, MASK - 1, 2**31, 2**31 - 1, 2**16 - 1, 2**16] + [random.Random(1).getrandbits(32)
                                                                      for _ in range(5000)]
    got = (_hash32_int32(torch.tensor(xs, dtype=torch.int64).to(torch.int32)).to(torch.int64) & MASK).tolist()
    assert got == [lowbias32(x) for x in xs]


def test_in_place_int32_hash_equals_the_copying_one_and_leaves_no_sign_errors():
    from mixture_of_thoughts.rng import _hash32_int32, _hash32_int32_, _to_int32

    xs = torch.tensor([0, 1, MASK, 2**31, 2**31 - 1] + [random.Random(2).getrandbits(32) for _ in range(3000)])
    x32 = _to_int32(xs)
    assert x32.dtype == torch.int32 and (x32.to(torch.int64) & MASK).tolist() == xs.tolist()
    copy = _hash32_int32(x32)
    assert (x32.to(torch.int64) & MASK).tolist() == xs.tolist()  # the copying form leaves its input alone
    assert _hash32_int32_(x32) is x32 and torch.equal(x32, copy)
    assert (copy.to(torch.int64) & MASK).tolist() == [lowbias32(int(x)) for x in xs]


def test_normals_from_int32_and_int64_bits_equal_the_float32_inverse_cdf_formula_for_every_pattern():
    # the reference: u = (top24 + 0.5) * 2**-24 in float32, clamped below 1, then sqrt(2) erfinv(2u - 1);
    # bits_to_normal computes 2u - 1 another way and must give the same floats for all 2**24 patterns
    top = torch.arange(2**24, dtype=torch.int64)
    bits = (top << 8) | torch.randint(0, 256, (2**24,), generator=torch.Generator().manual_seed(0))
    u = ((top.to(torch.float32) + 0.5) * 2.0**-24).clamp_(max=1.0 - 2.0**-24)
    ref = torch.erfinv(u * 2.0 - 1.0).mul_(2.0**0.5)
    assert torch.equal(bits_to_normal(bits), ref)
    assert torch.equal(bits_to_normal((bits - ((bits >> 31) << 32)).to(torch.int32)), ref)


def test_row_noise_bits_are_the_chained_hash_of_key_stream_position_and_index():
    # the whole counter chain against the pure-Python hash: the int32 fast path keeps the bits
    noise, stream, pos, n = RowNoise([11, 2**40 + 3]), stream_id(4, 2), [0, 5, 2**31 + 7], 6
    got = noise._bits(stream, torch.tensor(pos), (n,)).to(torch.int64) & MASK
    for b, key in enumerate(noise.keys.tolist()):
        sk = lowbias32(key ^ lowbias32(stream))
        for t, p in enumerate(pos):
            hp = lowbias32(sk ^ ((p + 0x632BE5AB) & MASK))
            want = [lowbias32(hp ^ lowbias32(i + 0x85EBCA77)) for i in range(n)]
            assert got[b, t].tolist() == want


def test_gumbel_is_minus_log_minus_log_of_the_float64_uniform_and_blocks_do_not_change_it():
    seeds = [0, 5, 2**40 + 3, -7]
    n = RowNoise(seeds)
    pos = torch.arange(0, 40)
    for tail in ((65,), (3000,)):
        u = n.uniform(1, pos, tail, dtype=torch.float64)
        unsigned = n._bits(1, pos, tail).to(torch.int64) & MASK  # the hash as an unsigned 32-bit value
        assert torch.equal(u, (unsigned.to(torch.float64) + 0.5) / 2**32)
        assert torch.equal(n.gumbel(1, pos, tail), (-torch.log(-torch.log(u))).float())
        # one position at a time through lookahead blocks (short ones for a large draw): the same numbers
        ahead = RowNoise(seeds, lookahead=32)
        steps = torch.cat([ahead.gumbel(1, torch.tensor([p]), tail) for p in range(40)], dim=1)
        assert torch.equal(steps, n.gumbel(1, pos, tail))
