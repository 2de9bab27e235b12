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
        x = _nucleus(x, top_p)
    if min_p is not None and min_p > 0.0:
        probs = torch.softmax(x, dim=-1)
        x = x.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, NEG_INF)
    return x


NUCLEUS_CANDIDATES = 1024  # top-p looks among this many most likely tokens first (a real vocabulary: 50k)


def _nucleus(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p: each row keeps its smallest set of most likely tokens whose mass reaches ``top_p``.

    The set is found among the row's ``NUCLEUS_CANDIDATES`` most likely tokens (``topk``: for 64 rows of
    a 49,152-token vocabulary several times cheaper than sorting every row); the rows whose candidates
    hold less than ``top_p`` of the mass, and small vocabularies, sort the whole row. Both compute a
    token's mass as ``softmax`` does over the whole row (the sums in another order: the same set unless
    ``top_p`` falls within float32 rounding of a cumulative mass)."""
    V = x.size(-1)
    K = min(V, NUCLEUS_CANDIDATES)
    if K == V:
        return _nucleus_sorted(x, top_p)
    vals, idx = torch.topk(x, K, dim=-1)  # descending
    probs = torch.exp(vals - torch.logsumexp(x, dim=-1, keepdim=True))
    mass = probs.cumsum(-1)
    remove_top = (mass - probs) >= top_p  # the tokens above already reach top_p
    remove_top[:, 0] = False  # always keep the most likely token
    out = torch.full_like(x, NEG_INF).scatter(-1, idx, vals.masked_fill(remove_top, NEG_INF))
    short = (mass[:, -1] < top_p).nonzero().squeeze(1)  # the candidates do not reach top_p
    if short.numel():
        out[short] = _nucleus_sorted(x[short], top_p)
    return out


def _nucleus_sorted(x: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_x, order = torch.sort(x, dim=-1, descending=True)
    probs = torch.softmax(sorted_x, dim=-1)
    before = probs.cumsum(-1) - probs  # mass strictly above each token
    remove_sorted = before >= top_p  # the tokens above already reach top_p: the smallest such set
    remove_sorted[:, 0] = False  # always keep the most likely token
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return x.masked_fill(remove, NEG_INF)


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
