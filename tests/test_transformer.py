"""The dense transformer: KV-cache parity, sliding past the block, causality, initial loss, parameter count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from mixture_of_thoughts.models.transformer import Transformer, count_parameters

ATOL = 1e-5


def _model(**changes) -> Transformer:
    return Transformer(tiny_model_config(**changes)).init_weights(torch.Generator().manual_seed(0)).eval()


def _ids(B=2, T=16, V=13, seed=1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("prefill", [1, 6, 16])
def test_kv_cache_matches_full_forward(prefill):
    model, idx = _model(), _ids()
    full = model(idx).logits  # (B, T, V)
    cache = model.new_cache(idx.shape[0])
    steps = [model(idx[:, :prefill], cache=cache).logits]
    for t in range(prefill, idx.shape[1]):
        steps.append(model(idx[:, t:t + 1], cache=cache).logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL)
    assert cache.length == idx.shape[1]


@torch.no_grad()
def test_last_only_matches_the_last_position():
    model, idx = _model(), _ids()
    assert torch.allclose(model(idx, last_only=True).logits[:, 0], model(idx).logits[:, -1], atol=ATOL)


@torch.no_grad()
def test_cache_keeps_working_past_the_block_size():
    model = _model()
    block = model.config.block_size
    idx = _ids(T=3 * block + 5)
    cache = model.new_cache(2)
    out = model(idx[:, :4], cache=cache, last_only=True)
    for t in range(4, idx.shape[1]):
        out = model(idx[:, t:t + 1], cache=cache, last_only=True)
        assert torch.isfinite(out.logits).all()
    assert cache.length == idx.shape[1]
    assert set(cache.slot_pos.tolist()) == set(range(idx.shape[1] - block, idx.shape[1]))


@torch.no_grad()
def test_causal_model_ignores_future_tokens():
    model, idx = _model(), _ids()
    idx2 = idx.clone()
    idx2[:, 10] = (idx[:, 10] + 1) % 13
    a, b = model(idx).logits, model(idx2).logits
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-4)


@torch.no_grad()
def test_bidirectional_model_sees_the_future():
    model, idx = _model(causal=False), _ids()
    idx2 = idx.clone()
    idx2[:, 10] = (idx[:, 10] + 1) % 13
    a, b = model(idx).logits, model(idx2).logits
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-5)


@torch.no_grad()
def test_time_conditioned_model_needs_time():
    model = _model(causal=False, time_conditioning=True)
    with pytest.raises(ValueError, match="time"):
        model(_ids())
    out = model(_ids(), time=torch.tensor([0.1, 0.9]))
    assert out.logits.shape == (2, 16, 13)


@torch.no_grad()
@pytest.mark.parametrize("V", [13, 65, 200])
def test_initial_loss_is_about_ln_vocab(V):
    model, idx, targets = _model(vocab_size=V), _ids(B=8, V=V), _ids(B=8, V=V, seed=2)
    out = model(idx, targets)  # independent targets: tied weights favour repeating the input token
    # N(0, 0.02) tied embeddings give logits with std ~0.1 at init: the loss exceeds ln V by ~var/2
    assert float(out.loss) == pytest.approx(math.log(V), abs=0.05)


@torch.no_grad()
def test_loss_is_cross_entropy_and_ignores_minus_one():
    model, idx = _model(), _ids()
    targets = torch.roll(idx, -1, dims=1)
    targets[:, -1] = -1
    out = model(idx, targets)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 13), targets[:, :-1].reshape(-1))
    assert float(out.loss) == pytest.approx(float(ref), abs=1e-6)
    assert float(out.aux_loss) == 0.0 and out.stats == {}


def test_init_weights_is_seeded():
    a, b, c = _model(), _model(), Transformer(tiny_model_config()).init_weights(torch.Generator().manual_seed(1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])
    assert a.lm_head.weight is a.wte.weight


def test_count_parameters_counts_tied_weights_once():
    cfg = tiny_model_config()
    model = Transformer(cfg)
    V, d, L, h = cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.dense_hidden
    per_layer = 2 * d + 3 * d * d + d * d + d * h + h * d  # two norms, qkv, proj, fc_in, fc_out
    expected = V * d + L * per_layer + d  # embedding (= LM head), blocks, final norm
    total, active = count_parameters(model)
    assert total == active == expected
    # the state dict holds the tied matrix twice
    assert sum(v.numel() for v in model.state_dict().values()) == expected + V * d


def test_library_leaves_the_global_rng_alone(tmp_path, corpus_file):
    """Building models, generating and training (with dropout) never change the global RNG state."""
    from conftest import tiny_model_config, train_tiny
    from mixture_of_thoughts.config import ThoughtConfig
    from mixture_of_thoughts.data.tokenizer import CharTokenizer
    from mixture_of_thoughts.generation.autoregressive import think
    from mixture_of_thoughts.layers.thoughts import ThoughtsFFN
    from mixture_of_thoughts.models.transformer import Transformer

    before = torch.get_rng_state()
    ThoughtsFFN(32, ThoughtConfig(n_branches=4, k=2, combine="attention"))
    cfg = tiny_model_config(vocab_size=13, thought_layers="all", dropout=0.1)
    model = Transformer(cfg).init_weights(torch.Generator().manual_seed(0))
    think(model, CharTokenizer.from_text(corpus_file.read_text()), "the", branches=2, max_new_tokens=5)
    train_tiny(corpus_file, tmp_path / "run", model=tiny_model_config(dropout=0.1), max_steps=3)
    assert torch.equal(torch.get_rng_state(), before)
