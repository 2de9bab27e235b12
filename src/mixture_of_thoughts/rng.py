"""Explicit, reproducible randomness for batched branches.

Two noise sources share one interface (``uniform``, ``gumbel``, ``normal``):

* :class:`GeneratorNoise` draws from one ``torch.Generator``. A whole batch is reproducible from
  the generator's seed; this is what training uses (fast, one draw per call).
* :class:`RowNoise` is *counter based*: row ``b`` owns a 64-bit key and every number it sees is a
  pure function of ``(key_b, stream, position, index)``, computed with a vectorised integer hash.
  No draw depends on which other rows share the batch, on the batch order, or on how many steps
  were taken before. This is what lets ``think`` run N branches in one batched pass and still
  regenerate any single branch alone from its seed; it also makes ``route="sequence"`` draws
  persistent across KV-cache steps for free (the draw simply ignores the position). JAX's
  ``jax.random`` and Philox are counter based for the same reasons (Salmon et al., 2011,
  "Parallel random numbers: as easy as 1, 2, 3").

``positions`` is a ``(T,)`` or ``(B, T)`` tensor of absolute positions, or ``None`` for a draw that
is the same at every position (shape ``(B, 1, *tail)``). ``stream`` separates independent uses
(router noise of layer 3, hidden noise of layer 3, token sampling, ...): see :func:`stream_id`.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import torch

_MASK32 = 0xFFFFFFFF
_TWO32 = float(2**32)
# 2u - 1 for the largest float32 u below 1. ((2**24 - 1) + 0.5) * 2**-24 rounds up to 1.0 in
# float32, and ndtri(1) = +inf (then 0 * inf = NaN at creativity 0): clamp the top pattern here.
_BELOW_ONE_2U = 1.0 - 2.0**-23
_SQRT2 = 2.0**0.5

# Stream kinds; combined with a layer index by :func:`stream_id`.
SAMPLE = 1  # token sampling (Gumbel-max)
ROUTER = 2  # Gumbel noise of a router
INPUT_NOISE = 3  # branch input noise
HIDDEN_NOISE = 4  # branch hidden noise
K_DRAW = 5  # number of active branches when k is a range
DIFFUSION = 6  # diffusion samplers (masking and token choice)


def stream_id(kind: int, layer: int = 0, sub: int = 0) -> int:
    """A 32-bit stream number for draw ``kind`` in ``layer`` (``sub`` separates paired draws)."""
    return ((kind & 0xFF) << 24) | ((layer & 0xFFFF) << 8) | (sub & 0xFF)


def _mul32(a: torch.Tensor, b: int) -> torch.Tensor:
    """``(a * b) mod 2**32`` for ``a`` in [0, 2**32): int64 products wrap modulo 2**64 in PyTorch's
    kernels (two's complement), and the low 32 bits of a wrapped product are exact (tested)."""
    return (a * b) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' ``lowbias32`` integer hash on int64 tensors holding 32-bit values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 tensors holding 32-bit values -> int32 holding the same bits in two's complement."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


@functools.lru_cache(maxsize=256)
def _index_hash(n: int, device: torch.device) -> torch.Tensor:
    """``hash32(arange(n) + const)`` as int32 (two's complement): the index stage of every draw of ``n``
    numbers per position."""
    return _to_int32(hash32(torch.arange(n, dtype=torch.int64, device=device) + 0x85EBCA77))


_M2_INT32 = 0x846CA68B - (1 << 32)  # the second multiplier as a two's-complement int32


def _hash32_int32_(x: torch.Tensor) -> torch.Tensor:
    """:func:`hash32` on int32 tensors holding the 32-bit values in two's complement, in place: the
    same bits.

    int32 products wrap modulo 2**32 (the kernels multiply in two's complement, like the int64 ones
    :func:`_mul32` relies on), and a logical right shift is an arithmetic one masked to the low bits.
    On CPUs this runs ~10x faster than the int64 form (vectorised 32-bit multiplies) and in place it
    allocates one temporary, which matters for the large draws (a vocabulary of Gumbel noise per row
    and position, the hidden noise of every thought layer at every decoding step).
    """
    t = (x >> 16).bitwise_and_(0xFFFF)
    x.bitwise_xor_(t).mul_(0x7FEB352D)
    torch.bitwise_right_shift(x, 15, out=t).bitwise_and_(0x1FFFF)
    x.bitwise_xor_(t).mul_(_M2_INT32)
    torch.bitwise_right_shift(x, 16, out=t).bitwise_and_(0xFFFF)
    return x.bitwise_xor_(t)


def _hash32_int32(x: torch.Tensor) -> torch.Tensor:
    """:func:`_hash32_int32_` on a copy."""
    return _hash32_int32_(x.clone())


def seed_to_key(seed: int) -> int:
    """A 32-bit key from any Python int seed (hash of its low and high halves)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    t = torch.tensor([s & _MASK32, (s >> 32) & _MASK32], dtype=torch.int64)
    h = hash32(t[0:1] ^ hash32(t[1:2] + 0x9E3779B9))
    return int(h.item())


def bits_to_normal(bits: torch.Tensor) -> torch.Tensor:
    """Standard normals (float32) from 32-bit hash values, by inverse CDF of their top 24 bits.

    ``bits`` holds the 32-bit values as int64 in [0, 2**32) or as int32 in two's complement (the
    same draws). ``u = (top24 + 0.5) / 2**24`` lies in (0, 1) in exact arithmetic, but for the top
    pattern it rounds to 1.0 in float32 and ``ndtri(1) = inf``; it is clamped to the largest float32
    below 1, so every draw is finite (|z| < 5.5).

    ``ndtri(u) = sqrt(2) erfinv(2u - 1)``, and erfinv's vectorised kernel is ~10x faster than
    ndtri's scalar one (the two agree to a few ulp). ``2u - 1`` is computed as
    ``float32(2 top24 + 1) * 2**-24 - 1``: converting the odd integer rounds to nearest even exactly
    as ``top24 + 0.5`` does in float32 (the same value at twice the scale), the power-of-two scaling
    and the subtraction of 1 are exact, so this equals ``2 u - 1`` of the float32 ``u`` bit for bit
    (tested over all 2**24 patterns) in three in-place passes over one float tensor.
    """
    return _bits_to_normal_(bits >> 7)


def _bits_to_normal_(shifted: torch.Tensor) -> torch.Tensor:
    """:func:`bits_to_normal` of ``bits``, given ``bits >> 7`` (overwritten)."""
    # 2 * top24 + 1: an int32 shift sign-extends, the mask drops it
    odd = shifted.bitwise_or_(1).bitwise_and_(0x1FFFFFF)
    v = odd.to(torch.float32).mul_(2.0**-24).sub_(1.0).clamp_(max=_BELOW_ONE_2U)
    return v.erfinv_().mul_(_SQRT2)


@runtime_checkable
class Noise(Protocol):
    """What a noise source offers the layers and samplers.

    ``positions`` is a ``(T,)`` or ``(B, T)`` tensor, or ``None`` for one draw shared by every
    position; draws have shape ``(B, T or 1, *tail)``. ``per_row`` says whether a row's draws depend
    only on that row's own key (then a row computed alone equals the same row in a batch). A source
    with ``per_row = False`` also offers ``iid_normal(shape)``: i.i.d. normals of any shape, for
    draws that need no layout (the branch noise of a training step).
    """

    per_row: bool
    batch_size: int
    device: torch.device

    def uniform(self, stream: int, positions: torch.Tensor | None, tail: tuple[int, ...] = (),
                dtype: torch.dtype = torch.float32) -> torch.Tensor: ...

    def gumbel(self, stream: int, positions: torch.Tensor | None, tail: tuple[int, ...] = (),
               dtype: torch.dtype = torch.float32) -> torch.Tensor: ...

    def normal(self, stream: int, positions: torch.Tensor | None, tail: tuple[int, ...] = (),
               dtype: torch.dtype = torch.float32) -> torch.Tensor: ...


# A lookahead block holds at most this many numbers: the float64 passes of a larger one (a 49,152-token
# vocabulary x 8 rows x 32 positions) leave the caches and cost ~8x more per number (measured).
_BLOCK_NUMBERS = 1 << 18


def lookahead_span(lookahead: int, rows: int, tail: tuple[int, ...]) -> int:
    """How many positions a lookahead block of ``rows`` rows of ``tail``-shaped draws holds: up to
    ``lookahead``, at most 262,144 numbers (2 MB in float64; at least one position)."""
    return max(1, min(lookahead, _BLOCK_NUMBERS // max(1, rows * math.prod(tail))))


class RowNoise:
    """Counter-based noise with one key per batch row (see module docstring).

    Args:
        seeds: one integer seed per row (a list or a ``(B,)`` tensor).
        device: where the draws are made.
        lookahead: when > 0, a draw for one position ``p`` computes the draws of positions
            ``p .. p + lookahead - 1`` at once and serves the next ones from them. Decoding asks for one
            position per step and per stream: this turns ~30 small tensor ops per draw into a slice.
            The numbers are the same (each is a pure function of its counter).
    """

    per_row = True

    def __init__(self, seeds, device: torch.device | str = "cpu", lookahead: int = 0):
        seeds = [int(s) for s in (seeds.tolist() if torch.is_tensor(seeds) else seeds)]
        self.seeds = seeds
        self.device = torch.device(device)
        self.keys = torch.tensor([seed_to_key(s) for s in seeds], dtype=torch.int64, device=self.device)
        self.lookahead = int(lookahead)
        self._stream_keys: dict[int, torch.Tensor] = {}
        self._blocks: dict[tuple, tuple[int, torch.Tensor]] = {}

    def with_lookahead(self, lookahead: int) -> RowNoise:
        """The same noise (same keys), serving single-position draws ``lookahead`` positions at a time."""
        out = self.select(torch.arange(self.batch_size))
        out.lookahead = int(lookahead)
        return out

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def for_batch(self, batch_size: int, device: torch.device | None = None) -> RowNoise:
        """This noise for a forward call over ``batch_size`` rows (the same rows: checked)."""
        if batch_size != self.batch_size:
            raise ValueError(f"RowNoise has {self.batch_size} rows (seeds) but the batch has {batch_size}")
        return self

    def select(self, rows: torch.Tensor) -> RowNoise:
        """The noise of a subset of rows (e.g. the branches kept by a search), same keys."""
        out = RowNoise.__new__(RowNoise)
        out.seeds = [self.seeds[i] for i in rows.tolist()]
        out.device = self.device
        out.keys = self.keys[rows.to(self.keys.device)]
        out.lookahead = self.lookahead
        out._stream_keys = {}
        out._blocks = {}
        return out

    def _ahead(self, kind: str, fn, stream: int, positions: torch.Tensor | None, tail: tuple[int, ...], dtype):
        """``fn(stream, positions, tail, dtype)``, served from a block of later positions (``lookahead``)."""
        if not self.lookahead:
            return fn(stream, positions, tail, dtype)
        key = (kind, stream, tail, dtype)
        if positions is None:  # the same draw at every position (sequence routing): computed once
            block = self._blocks.get(key)
            if block is None:
                block = self._blocks[key] = (-1, fn(stream, None, tail, dtype))
            return block[1]
        if positions.dim() != 1 or positions.numel() != 1:
            return fn(stream, positions, tail, dtype)
        p = int(positions.item())
        block = self._blocks.get(key)
        if block is None or not block[0] <= p < block[0] + block[1].shape[0]:
            span = lookahead_span(self.lookahead, self.keys.shape[0], tail)
            ps = torch.arange(p, p + span, device=positions.device)
            # kept position-major, (span, B, *tail): a position's draws are one contiguous slice
            block = (p, fn(stream, ps, tail, dtype).transpose(0, 1).contiguous())
            self._blocks[key] = block
        return block[1][p - block[0]].unsqueeze(1)

    def _bits(self, stream: int, positions: torch.Tensor | None, tail: tuple[int, ...]) -> torch.Tensor:
        """The 32-bit hash of every counter, as int32 in two's complement, ``(B, T or 1, *tail)``."""
        B = self.keys.shape[0]
        n = 1
        for s in tail:
            n *= s
        if positions is None:
            pos = torch.zeros(B, 1, dtype=torch.int64, device=self.device)
        else:
            pos = positions.to(self.device, torch.int64)
            pos = pos.expand(B, -1) if pos.dim() == 1 else pos
        T = pos.shape[1]
        # Chain the hash over (key, stream, position, index): each stage mixes a new 32-bit word. The
        # (key, stream) and index stages do not depend on the call: computed once and kept.
        h = self._stream_key(stream)
        h = _to_int32(hash32(h.view(B, 1) ^ (pos + 0x632BE5AB)))  # (B, T); +const so position 0 is not special
        return _hash32_int32_(h.view(B, T, 1) ^ _index_hash(n, self.device)).view(B, T, *tail)  # (B, T, n)

    def _stream_key(self, stream: int) -> torch.Tensor:
        """``hash32(key_b ^ hash32(stream))`` per row, ``(B,)``, cached per stream."""
        h = self._stream_keys.get(stream)
        if h is None:
            h = hash32(self.keys ^ hash32(torch.tensor(stream, dtype=torch.int64, device=self.device)))
            self._stream_keys[stream] = h
        return h

    def uniform(self, stream: int, positions: torch.Tensor | None, tail: tuple[int, ...] = (),
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform draws in the open interval (0, 1), shape ``(B, T or 1, *tail)``."""
        return self._ahead("uniform", self._uniform, stream, positions, tuple(tail), dtype)

    def gumbel(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        """Standard Gumbel draws ``-log(-log u)``."""
        return self._ahead("gumbel", self._gumbel, stream, positions, tuple(tail), dtype)

    def normal(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        """Standard normal draws by inverse CDF from one 24-bit float32 uniform each.

        Branch noise needs millions of these per step, so this path hashes once per number and stays
        in float32 (tails are cut at |z| ~ 5.4, far beyond what a noise scale notices).
        """
        return self._ahead("normal", self._normal, stream, positions, tuple(tail), dtype)

    def _uniform(self, stream, positions, tail, dtype) -> torch.Tensor:
        # (b + 0.5) / 2**32 of the unsigned 32-bit hash b, made in place from its int32 form: plus 1
        # where the two's complement is negative (b is 2**32 more); every step is exact in float64
        bits = self._bits(stream, positions, tail)
        u = bits.to(torch.float64).add_(0.5).div_(_TWO32)
        u += bits < 0
        u = u.to(dtype)
        if dtype != torch.float64:  # the top patterns round up to 1.0 in a narrower float: keep u < 1
            below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
            u = u.clamp_(max=float(below_one))
        return u

    def _gumbel(self, stream, positions, tail, dtype) -> torch.Tensor:
        return self._uniform(stream, positions, tail, torch.float64).log_().neg_().log_().neg_().to(dtype)

    def _normal(self, stream, positions, tail, dtype) -> torch.Tensor:
        return _bits_to_normal_(self._bits(stream, positions, tail).bitwise_right_shift_(7)).to(dtype)


_PARALLEL_NORMALS = 1 << 18  # draws at least this large are split over two threads (see iid_normal)
_POOL: list[ThreadPoolExecutor] = []


def _normal_pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="mot-normal"))
    return _POOL[0]


class GeneratorNoise:
    """Noise from a single ``torch.Generator``: one draw per call for the whole batch (training).

    Args:
        generator: the generator to draw from (its device decides where draws are made).
        batch_size: rows of the batch the draws are for.
    """

    per_row = False

    def __init__(self, generator: torch.Generator, batch_size: int):
        self.generator = generator
        self.batch_size = batch_size
        self.device = generator.device

    def _shape(self, positions, tail):
        T = 1 if positions is None else positions.shape[-1]
        return (self.batch_size, T, *tail)

    def uniform(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        u = torch.rand(self._shape(positions, tail), generator=self.generator, device=self.device)
        return u.clamp_(min=torch.finfo(u.dtype).tiny, max=1 - torch.finfo(u.dtype).eps).to(dtype)

    def gumbel(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        return -torch.log(-torch.log(self.uniform(stream, positions, tail, torch.float32))).to(dtype)

    def normal(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        return self.iid_normal(self._shape(positions, tail)).to(dtype)

    def iid_normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normals of ``shape`` straight from the generator (no per-row layout).

        A CPU generator is sequential (Mersenne Twister): the branch noise of a training step (millions
        of normals) would run on one core at ~4 ns a number. A large CPU draw is therefore split in
        two halves, each from its own generator seeded by one draw of this one, filled on two threads.
        Always two halves, whatever the thread count, so the numbers depend on the seed alone.
        """
        n = 1
        for s in shape:
            n *= s
        if self.device.type != "cpu" or n < _PARALLEL_NORMALS:
            return torch.randn(shape, generator=self.generator, device=self.device)
        out = torch.empty(shape)
        flat = out.view(-1)
        seeds = torch.randint(0, 2**62, (2,), generator=self.generator).tolist()
        halves = (flat[:n // 2], flat[n // 2:])
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        if torch.get_num_threads() > 1:
            other = _normal_pool().submit(halves[1].normal_, generator=gens[1])
            halves[0].normal_(generator=gens[0])
            other.result()
        else:
            for h, g in zip(halves, gens, strict=True):
                h.normal_(generator=g)
        return out
