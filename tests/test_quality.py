"""Quality metrics: exact AR bits per character and batched scoring of texts of different lengths."""

from __future__ import annotations

import math

import torch

from mixture_of_thoughts.metrics.quality import LN2, ar_nll, continuation_nll, text_bpc


@torch.no_grad()
def _slow_nll(model, ids):
    """Score each character after the first with a full forward over its whole prefix (reference)."""
    total = 0.0
    for i in range(1, len(ids)):
        logits = model(torch.tensor([ids[:i]])).logits[0, -1]
        total -= float(torch.log_softmax(logits.float(), -1)[ids[i]])
    return total


def test_text_bpc_batches_texts_of_different_lengths(tiny_model, tokenizer):
    texts = ["the cat sat.", "a red dot and", "x", "ten rats"]  # 'x' is outside the vocabulary: skipped
    got = text_bpc(tiny_model, tokenizer, texts)
    for t, b in zip(texts, got, strict=True):
        ids = tokenizer.encode(t, unknown="skip")
        if len(ids) < 2:
            assert math.isnan(b)
        else:
            assert abs(b - _slow_nll(tiny_model, ids) / (len(ids) - 1) / LN2) < 1e-4


def test_continuation_nll_scores_only_the_continuation(tiny_model, tokenizer):
    ids = tokenizer.encode("the cat sat on.")  # within the block of 16
    tokens = torch.tensor([ids, ids])
    nll, count = continuation_nll(tiny_model, tokens, 5)
    full = _slow_nll(tiny_model, ids)
    prefix = _slow_nll(tiny_model, ids[:5])
    assert count == len(ids) - 5
    assert torch.allclose(nll, torch.tensor([full - prefix] * 2), atol=1e-4)


def test_ar_nll_is_exact_within_a_block(tiny_model, tokenizer):
    ids = tokenizer.encode("the cat sat.")  # shorter than the block: one window
    total, count = ar_nll(tiny_model, torch.tensor(ids))
    assert count == len(ids) - 1
    assert abs(total - _slow_nll(tiny_model, ids)) < 1e-4
