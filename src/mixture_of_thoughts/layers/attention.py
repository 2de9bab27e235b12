"""Multi-head self-attention with rotary position embeddings and a sliding-window KV cache.

References: RoPE (Su et al., 2021, "RoFormer"), in the rotate-half form of GPT-NeoX and Llama;
attention through ``torch.nn.functional.scaled_dot_product_attention``.

The cache is a ring buffer of ``capacity`` (= the block size) positions per layer. RoPE makes
attention scores depend only on *relative* positions, so keys cached with their absolute rotation
stay valid when the window slides: generation can run past the block size while every query sees at
most ``capacity`` keys, the relative distances the model was trained on.
"""

from __future__ import annotations

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
    """Rotate ``x`` (B, nh, T, hs) by the angles (T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


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
            # Decoding one token (the hot path): its key only overwrites the slot of position p - cap,
            # which its query may not see anyway, so write first and attend over the buffer in place
            # (no copy of the whole cache per step).
            slot = positions % cap
            self.k[layer][:, :, slot] = k.to(self.k.dtype)
            self.v[layer][:, :, slot] = v.to(self.v.dtype)
            key_pos = self.slot_pos.clone()
            key_pos[slot] = positions
            mask = None if self.length >= cap else (key_pos >= 0)[None, :]  # a full window sees every slot
            return F.scaled_dot_product_attention(q, self.k[layer], self.v[layer], attn_mask=mask,
                                                  dropout_p=dropout_p)
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

    def advance(self, positions: torch.Tensor) -> None:
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
                layer: int = 0, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``rope``: precomputed ``rope_angles(positions, ...)``, shared by all layers of a model."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        cos, sin = rope if rope is not None else rope_angles(positions, self.head_size, self.rope_base)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        p = self.dropout if self.training else 0.0
        if cache is not None:
            if not self.causal:
                raise ValueError("a KV cache needs causal attention")
            y = cache.attend(layer, q, k, v, positions, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))
