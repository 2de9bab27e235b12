"""Logit processing and token sampling, vectorised over the batch.

Each row may carry its own temperature. Sampling is Gumbel-max with the row's own counter-based
noise (``rng.RowNoise``): ``argmax(log p + g)`` draws exactly from ``p`` (Gumbel 1954; see Huijben et
al. 2022 for a review), and because ``g`` depends only on the row's seed and the position, a row
sampled inside a batch equals the same row sampled alone.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..rng import SAMPLE, RowNoise, stream_id

NEG_INF = float("-inf")


def validate_sampling(temperature: float, top_k: int | None, top_p: float | None, min_p: float | None) -> None:
    """Raise a ``ConfigError`` naming the first sampling setting out of range."""
    if temperature is None or temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ConfigError(f"min_p must be in [0, 1], got {min_p}")


def process_logits(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0, top_k: int | None = None,
                   top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """Temperature, top-k, top-p (nucleus, Holtzman et al. 2020) and min-p (Nguyen et al. 2024) filters.

    Args:
        logits: (B, V) raw logits.
        temperature: a float or a (B,) tensor; rows with temperature 0 are left unscaled (greedy
            decoding takes their argmax).
    Returns:
        (B, V) float logits with filtered entries at ``-inf``; at least one entry per row survives.
    """
    x = logits.float()
    t = torch.as_tensor(temperature, dtype=x.dtype, device=x.device)
    t = t.view(-1, 1) if t.dim() else t
    x = x / torch.where(t > 0, t, torch.ones_like(t))
    if top_k is not None and top_k < x.size(-1):
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, NEG_INF)
    if top_p is not None and top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        remove_sorted = before >= top_p  # the tokens above already reach top_p: the smallest such set
        remove_sorted[:, 0] = False  # always keep the most likely token
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        x = x.masked_fill(remove, NEG_INF)
    if min_p is not None and min_p > 0.0:
        probs = torch.softmax(x, dim=-1)
        x = x.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, NEG_INF)
    return x


def sample_tokens(logits: torch.Tensor, noise: RowNoise, position: int, temperature: float | torch.Tensor = 1.0,
                  top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """Sample one token per row by Gumbel-max with each row's own noise at ``position``.

    Args:
        logits: (B, V) raw logits for the token at absolute position ``position``.
        noise: per-row counter-based noise.
    Returns:
        (B,) token ids.
    """
    x = process_logits(logits, temperature, top_k, top_p, min_p)
    pos = torch.tensor([position], device=logits.device)
    g = noise.gumbel(stream_id(SAMPLE), pos, (x.size(-1),)).to(x.device)[:, 0, :]  # (B, V)
    t = torch.as_tensor(temperature, device=x.device, dtype=x.dtype).reshape(-1)
    greedy = (t == 0).expand(x.size(0))
    return torch.where(greedy, x.argmax(-1), (x + g).argmax(-1))
