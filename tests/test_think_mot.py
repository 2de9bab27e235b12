"""Parallel thoughts on a MoT language model: cache parity, per-branch reproducibility, sequence routing."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model_config
from mixture_of_thoughts.generation.autoregressive import generate, think
from mixture_of_thoughts.models.transformer import Transformer
from mixture_of_thoughts.rng import RowNoise


def mot_model(tokenizer, route: str, **thoughts):
    cfg = tiny_model_config(vocab_size=tokenizer.vocab_size, thought_layers="all",
                            thoughts={"n_branches": 4, "k": 2, "route": route, "noise_init": 0.5, **thoughts})
    return Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()


@pytest.mark.parametrize("route", ["token", "sequence"])
def test_mot_generation_with_and_without_cache_is_the_same(tokenizer, route):
    model = mot_model(tokenizer, route)
    prompt = torch.tensor([tokenizer.encode("the cat")] * 3)
    noise = RowNoise([5, 6, 7])
    c = torch.tensor([0.5, 1.0, 2.0])
    a = generate(model, prompt, 8, noise, creativity=c, use_cache=True)  # 7 + 8 < block 16
    b = generate(model, prompt, 8, noise, creativity=c, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


@pytest.mark.parametrize("route", ["token", "sequence"])
def test_mot_branch_alone_equals_branch_in_batch(tokenizer, route):
    model = mot_model(tokenizer, route)
    res = think(model, tokenizer, "the", branches=4, seed=10, creativity=(0.0, 2.0), max_new_tokens=30)
    assert len({b.text for b in res.branches}) > 1
    for b in res.branches:
        alone = think(model, tokenizer, "the", branch_seeds=[b.seed], creativity=[b.creativity], max_new_tokens=30)
        assert alone.branches[0].text == b.text
        assert alone.branches[0].routing == b.routing


def test_creativity_changes_the_text_of_the_same_seed(tokenizer):
    model = mot_model(tokenizer, "token")
    texts = [think(model, tokenizer, "the", branch_seeds=[3], creativity=[c], max_new_tokens=30).branches[0].text
             for c in (0.0, 3.0)]
    assert texts[0] != texts[1]


def test_sequence_routing_keeps_a_line_of_thought(tokenizer):
    """With a zero router every position has equal logits, so the one per-sequence draw picks the same
    k branches at every position of the continuation: each layer's trace has exactly k non-zero entries."""
    model = mot_model(tokenizer, "sequence")
    for block in model.blocks:
        block.ffn.router.weight.data.zero_()
    res = think(model, tokenizer, "the", branches=4, seed=0, creativity=1.0, max_new_tokens=20)
    for b in res.branches:
        for load in b.routing.values():
            assert sum(v > 0 for v in load) == 2
    token = mot_model(tokenizer, "token")
    for block in token.blocks:
        block.ffn.router.weight.data.zero_()
    res = think(token, tokenizer, "the", branches=4, seed=0, creativity=1.0, max_new_tokens=20)
    assert any(sum(v > 0 for v in load) > 2 for b in res.branches for load in b.routing.values())
