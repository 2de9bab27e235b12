"""Multi-head self-attention with rotary position embeddings and a sliding-window KV cache.

References: RoPE (Su et al., 2021, "RoFormer"), in the rotate-half form of GPT-NeoX and Llama;
attention through ``torch.nn.functional.scaled_dot_product_attention``.

The cache is a ring buffer of ``capacity`` (= the block size) positions per layer. RoPE makes
attention scores depend only on *relative* positions, so keys cached with their absolute rotation
stay valid when the window slides: generation can run past the block size while every query sees at
most ``capacity`` keys, the relative distances the model was trained on.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(positions: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of the rotary angles, each ``(T, head_size)`` for ``positions`` ``(T,)``."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size)
    ang = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, hs/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, hs): rotate-half layout
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., hs) by the angles ``cos``, ``sin`` (broadcast against ``x``, e.g. (T, hs) for
    ``x`` (B, nh, T, hs)): ``x cos + rotate_half(x) sin`` with ``rotate_half([x1, x2]) = [-x2, x1]``."""
    return _rotate(x, cos, signed_sin(sin))


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``[-sin1, sin2]`` (halves of the last dimension): with it, ``rotate_half(x) sin`` is
    ``roll(x, hs/2) signed_sin``, the same products."""
    h = sin.shape[-1] // 2
    return torch.cat([-sin[..., :h], sin[..., h:]], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_s: torch.Tensor) -> torch.Tensor:
    """``x cos + roll(x, hs/2) sin_s``: :func:`apply_rope` for ``sin_s = signed_sin(sin)``.

    The same numbers as ``x cos + cat([-x2, x1]) sin`` (each product is the same up to an exact sign)
    with one pass fewer: on a strided view of the fused projection, the chunk, negation and
    concatenation made RoPE ~5x slower.
    """
    return (x * cos + torch.roll(x, x.shape[-1] // 2, -1) * sin_s).to(x.dtype)


def split_heads(qkv: torch.Tensor, n_head: int, cos: torch.Tensor, sin: torch.Tensor):
    """``(q, k, v)``, each ``(B, nh, T, hs)``, from the fused projection ``(B, T, 3C)``; RoPE on q and k.

    q and k are rotated together, as one ``(B, T, 2, nh, hs)`` view of the projection: half the
    calls of rotating them one by one, the same numbers. (Training takes :func:`project_qkv_rope`.)
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    # tables over all of (2, nh, hs), broadcast only over B: against (T, 1, 1, hs) the products run in
    # hs-long pieces, ~2x slower
    cos, sin_s = (t[:, None, None].expand(T, 2, n_head, hs).contiguous() for t in (cos, signed_sin(sin)))
    qk = _rotate(qkv[..., :2 * C].view(B, T, 2, n_head, hs), cos, sin_s)
    q, k = (t.transpose(1, 2) for t in qk.unbind(2))
    return q, k, qkv[..., 2 * C:].view(B, T, n_head, hs).transpose(1, 2)


@functools.lru_cache(maxsize=16)
def _interleave_rows(C: int, n_head: int, device: torch.device) -> torch.Tensor:
    """Rows of the fused q/k/v weight in the order that puts each head's rotate-half pairs
    ``(j, j + hs/2)`` of q and k side by side, ``(2j, 2j + 1)``; v's rows unchanged."""
    hs = C // n_head
    j = torch.arange(hs // 2, device=device)
    within = torch.stack([j, j + hs // 2], dim=-1).reshape(hs)  # interleaved -> rotate-half index
    qk = (torch.arange(2 * n_head, device=device)[:, None] * hs + within).reshape(-1)
    return torch.cat([qk, torch.arange(2 * C, 3 * C, device=device)])


def project_qkv_rope(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n_head: int,
                     cos: torch.Tensor, sin: torch.Tensor):
    """``split_heads(linear(x, weight, bias), ...)`` for training: the same function, computed faster.

    RoPE rotates the pairs ``(j, j + hs/2)`` of a head. Projecting with q's and k's weight rows
    reordered so that each pair is adjacent makes the rotation one complex product per pair, forward
    and backward, instead of a product, a roll, a product and a sum (a quarter of a ``cpu-small``
    training step went to RoPE on the machines of ``BENCHMARKS.md``). q and k come out with their
    head dimensions permuted alike, which leaves every ``q . k`` unchanged: attention gives the same
    result, up to the order of the sums over ``hs``. v is not permuted.
    """
    B, T, C = x.shape
    hs = C // n_head
    rows = _interleave_rows(C, n_head, weight.device)
    qkv = F.linear(x, weight.index_select(0, rows), None if bias is None else bias.index_select(0, rows))
    if qkv.dtype not in (torch.float32, torch.float64):  # no complex bfloat16: rotate back, then as usual
        return split_heads(qkv.index_select(-1, torch.argsort(rows)), n_head, cos, sin)
    h = hs // 2
    cos, sin = cos[:, :h].to(qkv.dtype), sin[:, :h].to(qkv.dtype)
    turn = torch.complex(cos, sin)[:, None, None].expand(T, 2, n_head, h).contiguous()
    q, k, v = _ComplexRope.apply(qkv, turn, n_head)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class _ComplexRope(torch.autograd.Function):
    """``(q, k, v)``, each ``(B, T, nh, hs)``, from a projection whose q and k have their rotation pairs
    adjacent: ``q`` and ``k`` times ``turn`` as complex numbers, v a view.

    The backward multiplies by the conjugate turn, in place, in the one ``(B, T, 3C)`` gradient buffer
    that also takes v's gradient.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, turn: torch.Tensor, n_head: int):
        B, T, C3 = qkv.shape
        C = C3 // 3
        hs = C // n_head
        pairs = torch.view_as_complex(qkv[..., :2 * C].view(B, T, 2, n_head, hs // 2, 2))
        qk = torch.view_as_real(pairs * turn).view(B, T, 2, n_head, hs)
        ctx.save_for_backward(turn)
        return qk[:, :, 0], qk[:, :, 1], qkv[..., 2 * C:].view(B, T, n_head, hs)

    @staticmethod
    def backward(ctx, g_q: torch.Tensor, g_k: torch.Tensor, g_v: torch.Tensor):
        (turn,) = ctx.saved_tensors
        B, T, nh, hs = g_q.shape
        grad = g_q.new_empty(B, T, 3, nh, hs)
        g_qk = grad[:, :, :2]
        torch.stack([g_q, g_k], dim=2, out=g_qk)
        torch.view_as_complex(g_qk.view(B, T, 2, nh, hs // 2, 2)).mul_(turn.conj())
        grad[:, :, 2] = g_v
        return grad.view(B, T, 3 * nh * hs), None, None


class KVCache:
    """Keys and values of every layer for a batch, in a ring buffer of ``capacity`` positions.

    Args:
        n_layer, batch_size, n_head, head_size: shapes of the cached tensors.
        capacity: window length (the model's block size).
        device, dtype: where and how keys are stored.
        start: absolute position of the first token the cache will see (a window that starts inside a
            longer text, e.g. recomputing the last block without a cache).

    ``length`` is the number of positions seen so far, i.e. the absolute position of the next token.
    Layers read and write their buffers during a forward pass; the model calls :meth:`advance` once
    after the last layer.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_size: int, capacity: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, start: int = 0):
        shape = (n_layer, batch_size, n_head, capacity, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_pos = torch.full((capacity,), -1, dtype=torch.long, device=device)  # -1: empty slot
        self.capacity = capacity
        self.length = start
        self._step: list | None = None  # [positions, slot, mask, bias] of the current one-token step
        self._full_bias: torch.Tensor | None = None

    def positions(self, T: int) -> torch.Tensor:
        """Absolute positions of the next ``T`` tokens."""
        return torch.arange(self.length, self.length + T, device=self.slot_pos.device)

    def attend(self, layer: int, q, k, v, positions: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """Attention of new queries over cached and new keys, then store the new keys.

        Args:
            q, k, v: (B, nh, T, hs) for the new positions ``positions`` (T,), RoPE already applied.
        Returns:
            (B, nh, T, hs)
        """
        T, cap = q.shape[2], self.capacity
        if self.length == 0 and T <= cap:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1:
            keys, vals, mask = self.write_step(layer, k, v, positions)
            return F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, dropout_p=dropout_p)
        else:
            keys = torch.cat([self.k[layer], k], dim=2)  # (B, nh, cap + T, hs)
            vals = torch.cat([self.v[layer], v], dim=2)
            key_pos = torch.cat([self.slot_pos, positions])  # (cap + T,)
            qp = positions[:, None]
            mask = (key_pos[None, :] >= 0) & (key_pos[None, :] <= qp) & (key_pos[None, :] > qp - cap)
            out = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, dropout_p=dropout_p)
        keep = min(T, cap)  # only the last `cap` new keys can ever be attended to again
        slots = positions[-keep:] % cap
        self.k[layer][:, :, slots] = k[:, :, -keep:].to(self.k.dtype)
        self.v[layer][:, :, slots] = v[:, :, -keep:].to(self.v.dtype)
        return out

    def write_step(self, layer: int, k: torch.Tensor, v: torch.Tensor,
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store the key and value of a one-token step (``(B, nh, 1, hs)``) and return what its query
        attends over: ``(keys, values, mask)``, the layer's whole buffers ``(B, nh, capacity, hs)``
        and the boolean mask ``(1, capacity)`` of the slots it sees (``None`` once the window is full).

        Decoding one token is the hot path: its key only overwrites the slot of position
        ``p - capacity``, which its query may not see anyway, so it is written first and the query
        attends over the buffers in place (no copy of the whole cache per step).
        """
        slot, mask = self._one_token_step(positions)
        self.k[layer, :, :, slot] = k[:, :, 0].to(self.k.dtype)
        self.v[layer, :, :, slot] = v[:, :, 0].to(self.v.dtype)
        return self.k[layer], self.v[layer], mask

    def step_bias(self, positions: torch.Tensor) -> torch.Tensor:
        """:meth:`write_step`'s mask as an additive float bias ``(capacity,)``: 0 for the slots the
        query of ``positions`` sees, ``-inf`` for the others (all 0 once the window is full)."""
        _, mask = self._one_token_step(positions)
        step = self._step
        if step[3] is None:
            if mask is None:  # a full window: the same zeros at every later step
                if self._full_bias is None:
                    self._full_bias = torch.zeros(self.capacity, dtype=self.k.dtype, device=self.k.device)
                step[3] = self._full_bias
            else:
                step[3] = torch.zeros(self.capacity, dtype=self.k.dtype, device=self.k.device)
                step[3].masked_fill_(~mask[0], -torch.inf)
        return step[3]

    def _one_token_step(self, positions: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """The slot of a one-token step's position and the mask of the slots its query sees, computed
        once for all layers of the step (every layer gets the same ``positions`` tensor)."""
        if self._step is None or self._step[0] is not positions:
            slot = int(positions[0]) % self.capacity
            mask = None  # a full window sees every slot
            if self.length < self.capacity:
                seen = self.slot_pos >= 0
                seen[slot] = True
                mask = seen[None, :]
            self._step = [positions, slot, mask, None]  # the bias: made by step_bias when asked for
        return self._step[1], self._step[2]

    def advance(self, positions: torch.Tensor) -> None:
        self._step = None
        keep = min(len(positions), self.capacity)
        self.slot_pos[positions[-keep:] % self.capacity] = positions[-keep:]
        self.length = int(positions[-1].item()) + 1

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (e.g. the branches a search keeps), in that order."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]


class SelfAttention(nn.Module):
    """Multi-head self-attention, causal or bidirectional, with RoPE.

    Args:
        n_embd, n_head: width and heads.
        causal: mask future positions.
        rope_base: RoPE frequency base.
        bias, dropout: linear-layer biases; attention and output dropout.
    """

    def __init__(self, n_embd: int, n_head: int, *, causal: bool = True, rope_base: float = 10000.0,
                 bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.head_size = n_head, n_embd // n_head
        self.causal, self.rope_base, self.dropout = causal, rope_base, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``rope``: precomputed ``rope_angles(positions, ...)``, shared by all layers of a model.
        ``attn_mask``: (B, 1, T, T) bool, True where a query may read a key, in place of the layer's
        own causal or bidirectional pattern (no cache)."""
        B, T, C = x.shape
        cos, sin = rope if rope is not None else rope_angles(positions, self.head_size, self.rope_base)
        if cache is None and torch.is_grad_enabled() and (x.requires_grad or self.qkv.weight.requires_grad):
            q, k, v = project_qkv_rope(x, self.qkv.weight, self.qkv.bias, self.n_head, cos, sin)
        else:
            q, k, v = split_heads(self.qkv(x), self.n_head, cos, sin)
        p = self.dropout if self.training else 0.0
        if cache is not None:
            if not self.causal or attn_mask is not None:
                raise ValueError("a KV cache needs causal attention")
            y = cache.attend(layer, q, k, v, positions, dropout_p=p)
        elif attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))
