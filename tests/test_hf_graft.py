"""Grafting MoT layers into tiny random Hugging Face causal LMs (no downloads).

Each family (GPT-2 Conv1D MLP, Llama / Mistral / Qwen2 gated SiLU MLP) is built from a config with
2 layers and width 32; a character tokenizer is built in the test.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from mixture_of_thoughts.cli import main  # noqa: E402
from mixture_of_thoughts.errors import ConfigError, MotError  # noqa: E402
from mixture_of_thoughts.hf.finetune import train_graft  # noqa: E402
from mixture_of_thoughts.hf.generate import think_hf  # noqa: E402
from mixture_of_thoughts.hf.graft import (  # noqa: E402
    GraftedThoughts,
    GraftError,
    freeze_except_thoughts,
    graft,
    grafted_layers,
    load_grafted,
    save_grafted,
    thought_noise,
    untie_branches,
)

CHARS = list("abcdefghijklmnopqrstuvwxyz .,\n")
VOCAB = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
FAMILIES = ("gpt2", "llama", "mistral", "qwen2")



def char_tokenizer():
    """A character-level fast tokenizer (BPE without merges), built here: no download."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(vocab=VOCAB, merges=[], unk_token=None))
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def tiny_model(family: str, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)  # transformers initialises from the global RNG; tests may seed it
    V = len(VOCAB)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=128, bos_token_id=0,
                            eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg).eval()
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, vocab_size=V, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
              pad_token_id=0)
    cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
           "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[family]
    return cls[1](cls[0](**kw)).eval()


IDS = torch.tensor([[1, 5, 9, 2, 27, 4, 8, 3, 12, 20], [7, 7, 1, 2, 3, 27, 9, 9, 10, 11]])


@pytest.mark.parametrize("family,k", [(f, 2) for f in FAMILIES] + [("llama", 1)])
def test_graft_at_zero_creativity_equals_original(family, k):
    # k = 1 too: the one branch's output is kept whole (it was scaled by the router's 1 / E)
    model = tiny_model(family)
    with torch.no_grad():
        ref = model(IDS).logits
        graft(model, "all", n_branches=4, k=k)
        with thought_noise(model, [1, 2], creativity=0.0):
            same = model(IDS).logits
        with thought_noise(model, None):  # no noise source: deterministic top-k
            same2 = model(IDS).logits
        with thought_noise(model, [1, 2], creativity=1.0):
            noisy = model(IDS).logits
    assert torch.allclose(same, ref, atol=1e-5)
    assert torch.allclose(same2, ref, atol=1e-5)
    assert (noisy - ref).abs().max() > 1e-4  # branch noise is on at c > 0
    layers = grafted_layers(model)
    assert sorted(layers) == [0, 1] and all(isinstance(m, GraftedThoughts) for m in layers.values())
    assert all(not m.router.weight.detach().any() for m in layers.values())


def test_a_one_branch_graft_keeps_the_mlp_whole_and_its_router_learns():
    from mixture_of_thoughts.layers.thoughts import slot_weights

    z = torch.tensor([[[0.3, -1.0, 2.0, 0.1]]], requires_grad=True)
    idx, active = torch.tensor([[[2]]]), torch.ones(1, 1, 1, dtype=torch.bool)
    w_switch, _ = slot_weights(z, idx, active)
    w_unit, _ = slot_weights(z, idx, active, unit=True)
    assert w_unit.item() == 1.0 and 0 < w_switch.item() < 1
    g_switch, = torch.autograd.grad(w_switch.sum(), z)
    g_unit, = torch.autograd.grad(w_unit.sum(), z)
    torch.testing.assert_close(g_unit, g_switch)  # Switch's gradient, the renormalised value
    model = tiny_model("llama")
    graft(model, "all", n_branches=4, k=1)
    untie_branches(model)
    model.train()
    with thought_noise(model, [1, 2], creativity=1.0):
        model(IDS).logits.square().mean().backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in grafted_layers(model).values())


def test_graft_chosen_layers_and_errors():
    model = tiny_model("llama")
    graft(model, [1], n_branches=3, k=1)
    assert sorted(grafted_layers(model)) == [1]
    assert not isinstance(model.model.layers[0].mlp, GraftedThoughts)
    with pytest.raises(GraftError, match="already grafted"):
        graft(model)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        graft(tiny_model("gpt2"), [5])


def test_unsupported_architecture_lists_supported():
    import transformers as tf

    model = tf.MixtralForCausalLM(tf.MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, num_key_value_heads=2, vocab_size=50))
    with pytest.raises(GraftError, match="gpt2, llama, mistral, qwen2"):
        graft(model)
    assert issubclass(GraftError, MotError)


def test_freeze_train_and_generate():
    model = tiny_model("gpt2")
    graft(model, "all", n_branches=4, k=2)
    trainable, total = freeze_except_thoughts(model)
    assert 0 < trainable < total
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".mlp." in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tok = char_tokenizer()
    ids = torch.tensor(tok("the cat sat on the mat. " * 30)["input_ids"])
    losses = train_graft(model, ids, steps=8, batch_size=4, block_size=24, lr=1e-2, seed=0)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= names  # only thought parameters moved
    out = model.generate(IDS[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


def test_save_load_roundtrip_and_think_reproducible(tmp_path):
    tok = char_tokenizer()
    model = tiny_model("qwen2")
    graft(model, "all", n_branches=4, k=2, seed=3)
    ids = torch.tensor(tok("a red dot and a cat. " * 30)["input_ids"])
    train_graft(model, ids, steps=4, batch_size=2, block_size=16, lr=1e-2)
    save_grafted(model, tmp_path / "g", tok)
    spec = json.loads((tmp_path / "g" / "graft.json").read_text())
    assert spec["layers"] == [0, 1] and spec["thoughts"]["n_branches"] == 4 and spec["thoughts"]["k"] == 2
    # the base weights alone load as the original architecture, with the original MLPs
    import transformers as tf

    base = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "g")
    assert not isinstance(base.model.layers[0].mlp, GraftedThoughts)
    loaded = load_grafted(tmp_path / "g")
    with torch.no_grad(), thought_noise(model, [5, 6], 1.0):
        a = model(IDS).logits
    with torch.no_grad(), thought_noise(loaded, [5, 6], 1.0):
        b = loaded(IDS).logits
    assert torch.equal(a, b)
    kw = dict(max_new_tokens=12, creativity=(0.5, 1.5))
    r1 = think_hf(model, tok, "the ", branches=3, seed=10, **kw)
    r2 = think_hf(loaded, tok, "the ", branches=3, seed=10, **kw)
    assert [b.text for b in r1.branches] == [b.text for b in r2.branches]
    assert [b.creativity for b in r1.branches] == [0.5, 1.0, 1.5]
    alone = think_hf(loaded, tok, "the ", branch_seeds=[11], creativity=[1.0], max_new_tokens=12)
    assert alone.branches[0].text == r1.branches[1].text  # one branch regenerated alone
    assert set(r1.branches[0].routing) == {0, 1}


def test_save_refuses_non_empty_dir(tmp_path):
    model = graft(tiny_model("gpt2"), [0])
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(MotError, match="not empty"):
        save_grafted(model, tmp_path)
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_cli_graft_then_think(tmp_path, capsys):
    tok = char_tokenizer()
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    tok.save_pretrained(base)
    data = tmp_path / "data.txt"
    data.write_text("the cat sat on the mat.\nthe rat ate the tea.\n" * 20)
    out = tmp_path / "grafted"
    rc = main(["graft", "--model", str(base), "--layers", "all", "--branches", "4", "--k", "2", "--data", str(data),
               "--steps", "3", "--batch-size", "2", "--block-size", "16", "--lr", "1e-3", "--out", str(out), "--quiet"])
    assert rc == 0
    assert "trainable" in capsys.readouterr().out
    assert (out / "graft.json").is_file() and (out / "thoughts.safetensors").is_file()
    rc = main(["think", str(out), "--prompt", "the ", "--branches", "3", "--max-new-tokens", "8", "--seed", "1",
               "--creativity", "0.5:1.5", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["branches"]) == 3 and [b["seed"] for b in res["branches"]] == [1, 2, 3]
    assert main(["graft", "--model", str(base), "--data", str(data), "--out", str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_graft_writes_heldout_nll_and_timing(tmp_path, capsys):
    """metrics.jsonl: a start record, step records (tokens, wall time) and the held-out NLL before and
    after at each creativity; before training at c = 0 it is the ungrafted model's own NLL."""
    import torch.nn.functional as F

    tok = char_tokenizer()
    base = tmp_path / "base"
    plain = tiny_model("llama")
    plain.save_pretrained(base)
    tok.save_pretrained(base)
    text = "the cat sat on the mat.\nthe rat ate the tea.\n" * 20
    (tmp_path / "data.txt").write_text(text)
    out = tmp_path / "g"
    assert main(["graft", "--model", str(base), "--data", str(tmp_path / "data.txt"), "--steps", "4",
                 "--batch-size", "2", "--block-size", "16", "--log-every", "2", "--eval-windows", "3",
                 "--eval-creativities", "0,1", "--out", str(out), "--quiet"]) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["event"] == "start" and recs[0]["trainable_params"] < recs[0]["n_params"]
    steps = [r for r in recs if "step" in r]
    assert [r["step"] for r in steps] == [2, 4] and [r["tokens"] for r in steps] == [64, 128]
    assert 0 < steps[0]["wall_s"] <= steps[1]["wall_s"]
    evals = {(r["eval"], r["creativity"]): r["nll_per_token"] for r in recs if "eval" in r}
    assert set(evals) == {("before", 0.0), ("before", 1.0), ("after", 0.0), ("after", 1.0)}
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    held = ids[int(ids.numel() * 0.9):]
    win = torch.stack([held[i * 16:i * 16 + 17] for i in range(3)])
    with torch.no_grad():
        logits = plain(input_ids=win[:, :-1]).logits
    ref = F.cross_entropy(logits.reshape(-1, logits.size(-1)), win[:, 1:].reshape(-1)).item()
    assert evals[("before", 0.0)] == pytest.approx(ref, abs=1e-4)
    assert evals[("before", 1.0)] != evals[("before", 0.0)]
    assert "held-out NLL per token" in capsys.readouterr().out


def test_noise_tokens_keeps_the_noise_for_the_prompt_and_the_first_tokens_only():
    from mixture_of_thoughts.config import ThoughtConfig
    from mixture_of_thoughts.hf.graft import GraftSpec, GraftState
    from mixture_of_thoughts.rng import RowNoise

    st = GraftState.new(GraftSpec("llama", [0], ThoughtConfig(), 0))
    st.noise, st.noise_until = RowNoise([1, 2]), 10
    st.positions = torch.tensor([9])
    assert st.noise_for(2, torch.device("cpu")) is st.noise
    st.positions = torch.tensor([10])
    assert st.noise_for(2, torch.device("cpu")) is None

    tok, model = char_tokenizer(), graft(tiny_model("llama"), "all", noise_init=2.0)
    kw = dict(branches=3, seed=0, creativity=1.0, max_new_tokens=12, temperature=0.0)
    always = [b.text for b in think_hf(model, tok, "the cat", **kw).branches]
    assert [b.text for b in think_hf(model, tok, "the cat", noise_tokens=12, **kw).branches] == always
    assert [b.text for b in think_hf(model, tok, "the cat", noise_tokens=0, **kw).branches] != always
    with pytest.raises(ConfigError, match="noise_tokens"):
        think_hf(model, tok, "the cat", noise_tokens=-1, **kw)


@pytest.mark.parametrize("family", ("gpt2", "llama"))
@pytest.mark.parametrize("k,k_min,scale", [(2, None, "relative"), (1, None, "relative"), (3, None, "absolute"),
                                            (3, 1, "relative")])
def test_tied_branches_take_the_dispatch_free_path_with_the_same_numbers(family, k, k_min, scale):
    """Tied branches at inference skip the sort by branch; each (token, slot) pair gets the same arithmetic
    as the general layer, under a router that is not zero (routing matters), per-branch noise scales, a
    per-row creativity with a row at 0, no noise at all, a k range and a hook that bans a branch."""
    from mixture_of_thoughts.config import ThoughtConfig
    from mixture_of_thoughts.layers.thoughts import ThoughtsFFN
    from mixture_of_thoughts.rng import RowNoise

    model = tiny_model(family)
    cfg = ThoughtConfig(n_branches=4, k=k, k_min=k_min, creativity=1.0, noise_init=0.3, noise_scale=scale)
    graft(model, "all", thoughts=cfg)
    layer = grafted_layers(model)[1]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.router.weight.normal_(0, 0.5, generator=g)
        layer.s_in.copy_(torch.rand(4, generator=g))
        layer.s_hid.copy_(torch.rand(4, generator=g))
    x = torch.randn(3, 5, 32, generator=g)
    pos = torch.arange(7, 12)
    noise = RowNoise([4, 5, 6])
    with torch.no_grad():
        assert layer.tied and layer._shared_path(noise)

    def both(noise, creativity):
        with torch.no_grad():
            ref = ThoughtsFFN.forward(layer, x, noise=noise, positions=pos, creativity=creativity, aux=False)
            out = layer._shared_forward(x, noise, pos, creativity)
        torch.testing.assert_close(out.y, ref.y, atol=1e-6, rtol=1e-5)
        for key in ("load", "row_load", "active_k"):
            torch.testing.assert_close(out.stats[key], ref.stats[key])
        return out.y

    noisy = both(noise, 1.0)
    both(noise, torch.tensor([1.5, 0.0, 0.5]))
    quiet = both(None, None)
    assert not torch.allclose(noisy, quiet, atol=1e-3)  # the noise does reach the output
    handle = layer.router.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([0]), float("-inf")))
    try:
        banned = both(noise, 1.0)
    finally:
        handle.remove()
    assert not torch.allclose(banned, noisy, atol=1e-4)
    assert not layer._shared_path(noise)  # a gradient may be wanted: the general path
    layer.untie()
    with torch.no_grad():
        assert not layer._shared_path(noise)


@pytest.mark.parametrize("family", ("gpt2", "llama"))
@pytest.mark.parametrize("k,scale,route", [(1, "relative", "token"), (2, "relative", "token"), (3, "absolute", "token"),
                                           (2, "relative", "sequence")])
def test_a_zero_router_over_tied_branches_is_skipped_with_the_same_numbers(family, k, scale, route, monkeypatch):
    """A training-free graft (tied branches, one noise scale, the router at zero) cannot route: every slot
    weighs the same whichever branch it picks. That layer skips its router; its output and routing
    statistics equal the routed path's exactly, for prompts and single decode steps, at a float and a
    per-row creativity (a row at 0) and without noise; the statistics of all layers counted at once
    equal each layer's. An edit that makes routing matter turns the shortcut off."""
    from mixture_of_thoughts.config import ThoughtConfig
    from mixture_of_thoughts.hf.graft import RoutingCounts
    from mixture_of_thoughts.rng import RowNoise

    model = tiny_model(family)
    graft(model, "all", thoughts=ThoughtConfig(n_branches=4, k=k, creativity=1.0, noise_init=0.3, noise_scale=scale,
                                               route=route))
    layers = grafted_layers(model)
    layer = layers[1]
    g = torch.Generator().manual_seed(0)
    noise = RowNoise([4, 5, 6])
    real_plan = GraftedThoughts._free_plan

    def both(x, pos, creativity, noise=noise):
        with torch.no_grad():
            assert layer.routing_free()
            out = layer._shared_forward(x, noise, pos, creativity)
            monkeypatch.setattr(GraftedThoughts, "_free_plan", lambda self: (False, None))
            ref = layer._shared_forward(x, noise, pos, creativity)
            monkeypatch.setattr(GraftedThoughts, "_free_plan", real_plan)
        assert isinstance(out.stats, RoutingCounts) and not isinstance(ref.stats, RoutingCounts)
        assert torch.equal(out.y, ref.y)
        for key in ("load", "row_load", "active_k"):
            assert torch.equal(out.stats[key], ref.stats[key]), key
        return out

    for T, start in ((5, 0), (1, 9)):
        x, pos = torch.randn(3, T, 32, generator=g), torch.arange(start, start + T)
        noisy = both(x, pos, 1.0)
        both(x, pos, torch.tensor([1.5, 0.0, 0.5]))
        quiet = both(x, pos, None, noise=None)
        assert not torch.allclose(noisy.y, quiet.y, atol=1e-3)  # the noise does reach the output
    with torch.no_grad(), thought_noise(model, noise, torch.tensor([1.0, 0.0, 2.0])) as st:
        model(input_ids=torch.randint(1, len(VOCAB), (3, 6), generator=g))
        assert all(isinstance(s, RoutingCounts) for s in st.stats.values())
        together = st.row_loads()
        assert list(together) == sorted(layers)
        for i in layers:
            assert torch.equal(together[i], st.stats[i]["row_load"])
    with torch.no_grad():
        layer.s_in[0] += 0.1  # one branch noisier than the others: the branch picked matters
        assert not layer.routing_free()
        layer.s_in[0] -= 0.1
        layer.s_in.copy_(layer.s_in[1:2].expand(4).clone())
        assert layer.routing_free()
        layer.router.weight[0, 0] = 1e-3  # a router that is not zero weighs the slots
        assert not layer.routing_free()
        layer.router.weight.zero_()
        assert layer.routing_free()
    layer.untie()
    assert not layer.routing_free()
