"""Quality metrics: bits per character of text under an autoregressive model.

``ar_bpc`` is exact: every character of the text is scored once, in non-overlapping windows of the
block size, each character conditioned on the preceding characters of its window (the first
character of the text is not scored, having no context). The diffusion model's ELBO bound (an upper
bound on its NLL) is ``diffusion_nll`` / ``diffusion_bpc`` in ``models/diffusion.py``.
"""

from __future__ import annotations

import torch

from ..data.tokenizer import CharTokenizer
from ..rng import GeneratorNoise
from ..units import LN2


@torch.no_grad()
def ar_nll(model, ids: torch.Tensor, *, batch_size: int = 64, seed: int = 0, creativity=None) -> tuple[float, int]:
    """Summed next-character NLL (nats) of ``ids`` (1-D) and the number of characters scored.

    Windows of ``block_size + 1`` characters overlap by one so that every character after the first
    is predicted exactly once. Thought layers draw their noise from a generator seeded with ``seed``.
    """
    model.eval()
    T = model.config.block_size
    dev = model.wte.weight.device
    n = len(ids) - 1
    if n < 1:
        raise ValueError("need at least two characters to score")
    starts = torch.arange(0, n, T)
    total, count = 0.0, 0
    g = torch.Generator(device=dev).manual_seed(seed)
    for i in range(0, len(starts), batch_size):
        s = starts[i:i + batch_size]
        lens = torch.clamp(n - s, max=T)  # the last window may be shorter
        L = int(lens.max())
        offs = s[:, None] + torch.arange(L + 1)[None, :]
        valid = torch.arange(L)[None, :] < lens[:, None]
        chunk = ids[offs.clamp(max=len(ids) - 1)]
        x, y = chunk[:, :-1].to(dev), chunk[:, 1:].masked_fill(~valid, -1).to(dev)
        logits = model(x, noise=GeneratorNoise(g, x.shape[0]), creativity=creativity).logits
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction="sum")
        total += float(nll)
        count += int(valid.sum())
    return total, count


def ar_bpc(model, ids: torch.Tensor, **kw) -> float:
    """Bits per character of ``ids`` under an autoregressive model (exact)."""
    total, count = ar_nll(model, ids, **kw)
    return total / count / LN2


def text_bpc(model, tokenizer: CharTokenizer, texts: list[str]) -> list[float]:
    """Bits per character of each text under an AR model, all texts in one batch.

    Texts are right-padded to a common length and scored through the sliding KV cache (see
    :func:`continuation_nll`); every character after the first is scored. A text of fewer than
    two characters has no score (NaN).
    """
    ids = [tokenizer.encode(t, unknown="skip") for t in texts]
    L = max((len(i) for i in ids), default=0)
    if L < 2:
        return [float("nan")] * len(texts)
    tokens = torch.zeros(len(ids), L, dtype=torch.long)
    for r, row in enumerate(ids):  # building the padded batch is per text by nature; scoring is batched
        tokens[r, :len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(i) for i in ids])
    nll, _ = continuation_nll(model, tokens, 1, lengths=lengths)
    scored = (lengths - 1).clamp(min=1)
    return [float(v) if n > 1 else float("nan") for v, n in zip((nll.cpu() / scored / LN2).tolist(), lengths.tolist(),
                                                                 strict=True)]


@torch.no_grad()
def continuation_nll(model, tokens: torch.Tensor, start: int,
                     lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed NLL (nats) of ``tokens[:, start:]`` given everything before, for each row.

    Texts longer than the block are scored through the sliding KV cache in chunks of the block
    size, the same window a generating model sees. Thought layers run without noise (c = 0).

    Args:
        model: a causal :class:`~mixture_of_thoughts.models.Transformer`.
        tokens: (B, L) ids; ``1 <= start < L``.
        lengths: (B,) true lengths of right-padded rows (positions past a row's length are not scored).
    Returns:
        ``(nll, count)``: (B,) summed nats and the number of scored tokens per row (``L - start``).
    """
    model.eval()
    B, L = tokens.shape
    if not 1 <= start < L:
        raise ValueError(f"start must be in [1, {L - 1}], got {start}")
    dev = model.wte.weight.device
    tokens = tokens.to(dev)
    cache = model.new_cache(B)
    total = torch.zeros(B, device=dev)
    chunk = model.config.block_size
    for a in range(0, L - 1, chunk):
        b = min(a + chunk, L - 1)  # logits at positions a..b-1 predict tokens a+1..b
        logits = model(tokens[:, a:b], cache=cache).logits.float()
        lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, a + 1:b + 1, None])[..., 0]  # (B, b-a)
        tgt = torch.arange(a + 1, b + 1, device=dev)
        keep = (tgt >= start)[None, :]
        if lengths is not None:
            keep = keep & (tgt[None, :] < lengths.to(dev)[:, None])
        total -= (lp * keep).sum(-1)
    return total, L - start
