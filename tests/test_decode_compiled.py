"""The compiled decode step (``models/decode.py``): the same texts as eager decoding, dense and MoT.

Compiling costs seconds per graph shape, so each test reuses a few shapes (rows x width).
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model_config
from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.generation.autoregressive import generate, think
from mixture_of_thoughts.models.decode import CompiledDecoder, _branch_order, compiler_available
from mixture_of_thoughts.models.transformer import Transformer
from mixture_of_thoughts.rng import RowNoise

pytestmark = pytest.mark.skipif(not compiler_available(), reason="TorchInductor needs a C++ compiler")


def model_of(tokenizer, **changes) -> Transformer:
    cfg = tiny_model_config(vocab_size=tokenizer.vocab_size, **changes)
    return Transformer(cfg).init_weights(torch.Generator().manual_seed(3)).eval()


def test_compiled_dense_decoding_is_eager_decoding_past_the_block(tokenizer):
    model = model_of(tokenizer)
    prompt = torch.tensor([tokenizer.encode("the cat")] * 3)
    noise = RowNoise([1, 2, 3])
    # 7 + 30 tokens: past the block of 16, so the ring buffer wraps and the window slides
    a = generate(model, prompt, 30, noise, temperature=torch.tensor([0.7, 1.0, 0.0]))
    b = generate(model, prompt, 30, noise, temperature=torch.tensor([0.7, 1.0, 0.0]), compile=True)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert not torch.equal(a.tokens[0], a.tokens[1])  # the rows are different samples


@pytest.mark.parametrize("thoughts", [
    {"route": "token", "k_min": 1, "noise_scale": "relative"},  # a drawn k per token, noise scaled to the row
    {"route": "sequence"},
])
def test_compiled_thought_layers_are_the_eager_layers(tokenizer, thoughts):
    model = model_of(tokenizer, bias=True, thought_layers="all",
                     thoughts={"n_branches": 4, "k": 2, "noise_init": 0.5, **thoughts})
    kw = dict(branches=4, seed=10, creativity=(0.0, 2.0), max_new_tokens=24)
    eager = think(model, tokenizer, "the", **kw)
    fast = think(model, tokenizer, "the", compile=True, **kw)
    assert [b.text for b in fast.branches] == [b.text for b in eager.branches]
    assert len({b.text for b in fast.branches}) > 1
    for e, f in zip(eager.branches, fast.branches, strict=True):
        assert f.routing.keys() == e.routing.keys()
        for layer in e.routing:
            assert f.routing[layer] == pytest.approx(e.routing[layer], abs=1e-4)
        assert f.mean_loglik == pytest.approx(e.mean_loglik, abs=1e-5)


def test_compiled_decoding_runs_hooked_layers_eagerly(tokenizer):
    """A hook on a router (steering, routing traces) must see every step: that layer runs eagerly."""
    model = model_of(tokenizer, thought_layers="all", thoughts={"n_branches": 4, "k": 2})
    calls = []
    handle = model.blocks[0].ffn.router.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    try:
        res = think(model, tokenizer, "the", branches=2, seed=0, max_new_tokens=6, compile=True)
    finally:
        handle.remove()
    assert len(calls) == 6  # the prompt's prefill and 5 one-token steps (the 6th token needs no step)
    assert all(len(b.text) == 6 for b in res.branches)
    # a hook on the whole model (the playground's) sees every step's output, stats as the eager layer's
    outs = []
    handle = model.register_forward_hook(lambda m, i, o: outs.append(o))
    try:
        think(model, tokenizer, "the", branches=2, seed=0, max_new_tokens=6, compile=True)
    finally:
        handle.remove()
    assert len(outs) == 6
    assert set(outs[-1].stats[1]) == {"load", "row_load", "active_k"}


def test_branch_order_is_a_stable_sort_of_the_slots_by_branch():
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1, 2), (8, 1, 2), (5, 3, 3)]:
        idx = torch.randint(0, 4, shape, generator=g)
        e, perm, rank = _branch_order(idx)
        flat = idx.reshape(-1)
        assert torch.equal(perm, torch.sort(flat, stable=True).indices)  # ties keep the slot order
        assert torch.equal(e, flat[perm]) and torch.equal(perm[rank], torch.arange(flat.numel()))


def test_compiled_thought_layer_reports_the_eager_routing_stats(tokenizer):
    model = model_of(tokenizer, thought_layers="all", thoughts={"n_branches": 4, "k": 2, "k_min": 1})
    noise = RowNoise([4, 5, 6])
    cache = model.new_cache(3)
    prompt = torch.tensor([tokenizer.encode("the cat")] * 3)
    model(prompt, cache=cache, noise=noise, creativity=1.0)
    fast_cache = model.new_cache(3)
    model(prompt, cache=fast_cache, noise=noise, creativity=1.0)
    nxt = torch.tensor([[1], [2], [3]])
    eager = model(nxt, cache=cache, noise=noise, creativity=1.0, last_only=True, aux=False)
    fast = CompiledDecoder(model)(nxt, fast_cache, noise=noise, creativity=1.0)
    assert torch.allclose(fast.logits, eager.logits, atol=1e-5)
    for layer, stats in eager.stats.items():
        assert set(fast.stats[layer]) == set(stats)
        for key, value in stats.items():
            assert torch.allclose(fast.stats[layer][key], value), key


def test_compiled_decoding_needs_the_cache_and_a_causal_model(tokenizer):
    model = model_of(tokenizer)
    with pytest.raises(ConfigError, match="KV cache"):
        generate(model, torch.tensor([[1]]), 4, RowNoise([0]), use_cache=False, compile=True)
    with pytest.raises(ConfigError, match="causal"):
        CompiledDecoder(model_of(tokenizer, causal=False))
    with pytest.raises(ValueError, match="prefill"):
        CompiledDecoder(model)(torch.tensor([[1]]), model.new_cache(1))
    cache = model.new_cache(1)
    model(torch.tensor([[1]]), cache=cache)
    with pytest.raises(ValueError, match="eval mode"):
        CompiledDecoder(model.train())(torch.tensor([[1]]), cache)


def test_compiled_decoding_of_the_shipped_model_gives_its_texts():
    """The trained MoT model that ships: 8 branches at creativity 0.5 .. 1.5, compiled and eager."""
    from mixture_of_thoughts.cli.core import DEFAULT_MODEL
    from mixture_of_thoughts.training.checkpoint import load_checkpoint

    ck = load_checkpoint(DEFAULT_MODEL)
    kw = dict(branches=8, seed=1, creativity=(0.5, 1.5), max_new_tokens=120)
    eager = think(ck.model, ck.tokenizer, "ROMEO:", **kw)
    fast = think(ck.model, ck.tokenizer, "ROMEO:", compile=True, **kw)
    assert [b.text for b in fast.branches] == [b.text for b in eager.branches]
    alone = think(ck.model, ck.tokenizer, "ROMEO:", branch_seeds=[fast.branches[5].seed],
                  creativity=[fast.branches[5].creativity], max_new_tokens=120, compile=True)
    assert alone.branches[0].text == fast.branches[5].text


def test_compiled_decoding_without_a_compiler_says_so(tokenizer, monkeypatch):
    import mixture_of_thoughts.models.decode as decode

    monkeypatch.setattr(decode, "compiler_available", lambda: False)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        think(model_of(tokenizer), tokenizer, "the", max_new_tokens=3, compile=True)


def test_static_graphs_compile_once_per_signature_and_fall_back_past_their_limit(caplog):
    """``_Static``: a graph per call signature (shapes, strides, dtypes, constants), reused; past
    ``MAX_GRAPHS`` the function runs eagerly, with one warning."""
    from mixture_of_thoughts.models.decode import _Static

    calls = []

    def fn(x, w, scale: float, extra):
        calls.append(1)  # runs at tracing time and on eager calls only
        y = (x.unsqueeze(-2) * w).sum(-1) * scale
        return y, (y.sum(), extra is None)

    f = _Static(fn)
    f.MAX_GRAPHS = 1
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 5, generator=g), torch.randn(3, 5, generator=g)
    y, (total, no_extra) = f(x, w, 2.0, None)
    assert torch.allclose(y, (x @ w.T) * 2.0, atol=1e-6) and torch.allclose(total, y.sum())
    assert no_extra is True  # a constant output keeps its Python value
    traced = len(calls)
    y2, _ = f(x + 1, w, 2.0, None)  # the same signature: the compiled graph, not fn
    assert len(calls) == traced and torch.allclose(y2, ((x + 1) @ w.T) * 2.0, atol=1e-6)
    with caplog.at_level("WARNING"):
        y3, _ = f(x, w, 3.0, None)  # a new constant is a new signature: past the limit, eager
        f(x[:1], w, 2.0, None)
    assert len(calls) == traced + 2 and torch.allclose(y3, (x @ w.T) * 3.0, atol=1e-6)
    assert sum("further shapes run eagerly" in r.message for r in caplog.records) == 1


def test_compiled_decoder_converts_a_creativity_tensor_once_and_follows_changes_to_it(tokenizer):
    model = model_of(tokenizer, thought_layers="all", thoughts={"n_branches": 4, "k": 2})
    dec, f = CompiledDecoder(model), model.blocks[0].ffn
    h, noise, c = torch.zeros(2, 1, 32), RowNoise([1, 2]), torch.tensor([0.5, 0.0])
    first, draws = dec._layer_creativity(f, c, noise, h)
    assert draws and first.shape == (2, 1, 1) and first.flatten().tolist() == [0.5, 0.0]
    assert dec._layer_creativity(f, c, noise, h)[0] is first  # kept across steps
    c.zero_()  # changed in place: converted again, and a batch all at creativity 0 draws no noise
    again, draws = dec._layer_creativity(f, c, noise, h)
    assert not draws and again.flatten().tolist() == [0.0, 0.0]
    assert not dec._layer_creativity(f, torch.tensor([1.0, 1.0]), None, h)[1]  # no noise source: no draws
