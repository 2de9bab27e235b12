"""The lean decode step for Llama-family HF models (static cache, prepacked weights, bfloat16)."""

import pytest
import torch

from mixture_of_thoughts.errors import ConfigError

tf = pytest.importorskip("transformers")

from mixture_of_thoughts.hf import fast as FA  # noqa: E402
from mixture_of_thoughts.hf.generate import hf_step, sample_branches, think_hf  # noqa: E402
from mixture_of_thoughts.hf.graft import graft  # noqa: E402


def _llama(tied=True, seed=0, vocab=31):
    """A random Llama with grouped KV heads (4 query heads share 2 key/value heads)."""
    torch.manual_seed(seed)  # transformers initialises from the global RNG
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=128,
                         tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return tf.LlamaForCausalLM(cfg).eval()


def _reference_logits(model, ids, steps):
    """The model's own forward: the prompt, then ``steps`` greedy tokens one at a time."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        logits, past = [out.logits[:, -1]], out.cache
        tokens = []
        for _ in range(steps):
            nxt = logits[-1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            out = model(input_ids=nxt, cache=past, use_cache=True)
            logits.append(out.logits[:, -1])
            past = out.cache
    return logits, tokens


def _lean_logits(fast, ids, tokens):
    T0 = ids.shape[1]
    fast.reset(ids.shape[0], T0 + len(tokens), ids.device)
    return [fast.forward(ids, 0)] + [fast.forward(t, T0 + j) for j, t in enumerate(tokens)]


@pytest.mark.parametrize("tied", [True, False])
def test_the_lean_float32_step_computes_the_models_logits(tied):
    model = _llama(tied=tied)
    ids = torch.randint(1, 31, (3, 7), generator=torch.Generator().manual_seed(1))
    ref, tokens = _reference_logits(model, ids, 6)
    exact = _lean_logits(FA.FastLlama(model, packed=False), ids, tokens)
    # the same ops on the same weights: bit for bit after the prompt, whose head reads only the last
    # position (the model's reads every one: another matrix shape, another rounding)
    assert (ref[0] - exact[0]).abs().max() < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(ref[1:], exact[1:], strict=True))
    if FA.packed_linear_available():
        packed = _lean_logits(FA.FastLlama(model), ids, tokens)
        err = max((a - b).abs().max().item() for a, b in zip(ref, packed, strict=True))
        assert err < 1e-4  # another summation order in the prepacked kernel, nothing more


def test_bfloat16_stays_close_to_float32_and_is_really_used():
    model = _llama()
    ids = torch.randint(1, 31, (2, 6), generator=torch.Generator().manual_seed(2))
    ref, tokens = _reference_logits(model, ids, 4)
    got = _lean_logits(FA.FastLlama(model, precision="bfloat16"), ids, tokens)
    err = max((a - b).abs().max().item() for a, b in zip(ref, got, strict=True))
    scale = max(a.abs().max().item() for a in ref)
    assert 0 < err < 0.05 * scale  # bfloat16 keeps ~3 significant digits


def test_branches_are_the_same_texts_with_the_lean_step(hf_tokenizer):
    model = _llama()
    seeds = list(range(8))
    ref = sample_branches(model, hf_tokenizer, "the cat", seeds, max_new_tokens=24, lean=False)
    lean = sample_branches(model, hf_tokenizer, "the cat", seeds, max_new_tokens=24)
    assert [b.text for b in lean.branches] == [b.text for b in ref.branches]
    assert len({b.text for b in ref.branches}) > 1
    alone = sample_branches(model, hf_tokenizer, "the cat", [5], max_new_tokens=24)
    assert alone.branches[0].text == lean.branches[5].text  # a branch regenerated alone is the same


def test_grafted_thought_branches_and_their_routing_are_the_same_with_the_lean_step(hf_tokenizer):
    model = graft(_llama(), "all", n_branches=4, k=2)
    kw = dict(branch_seeds=[0, 1, 2, 3], creativity=20.0, max_new_tokens=20, chat=False)  # loud noise
    ref = think_hf(model, hf_tokenizer, "a dog", lean=False, **kw)
    lean = think_hf(model, hf_tokenizer, "a dog", **kw)
    assert [b.text for b in lean.branches] == [b.text for b in ref.branches]
    assert [b.routing for b in lean.branches] == [b.routing for b in ref.branches]
    quiet = think_hf(model, hf_tokenizer, "a dog", **{**kw, "creativity": 0.0})
    assert [b.text for b in quiet.branches] != [b.text for b in lean.branches]  # the noise reaches the layers


def test_the_lean_tensors_follow_the_weights():
    model = _llama()
    first = FA.lean_model(model)
    assert FA.lean_model(model) is first  # packed once
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(2.0)  # an in-place update, as an optimiser's
    second = FA.lean_model(model)
    assert second is not first
    ids = torch.randint(1, 31, (1, 5), generator=torch.Generator().manual_seed(3))
    ref, _ = _reference_logits(model, ids, 0)
    assert (_lean_logits(second, ids, [])[0] - ref[0]).abs().max() < 1e-4


def test_what_the_lean_step_cannot_honour_keeps_the_models_forward_or_is_named(hf_tokenizer):
    model = _llama()
    seen = []
    h = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(1))
    assert "lm_head" in FA.fast_blocker(model)
    sample_branches(model, hf_tokenizer, "the", [0], max_new_tokens=3)  # the model's forward: the hook runs
    assert seen
    with pytest.raises(ConfigError, match="lm_head"):
        hf_step(model, lean=True)
    with pytest.raises(ConfigError, match="bfloat16.*lm_head"):
        hf_step(model, precision="bfloat16")
    h.remove()
    assert FA.fast_blocker(model) is None
    model.train()
    assert "training" in FA.fast_blocker(model)
    model.eval()
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=31, n_positions=32)).eval()
    with pytest.raises(ConfigError, match="Llama-family.*gpt2"):
        hf_step(gpt2, lean=True)
    with pytest.raises(ConfigError, match="precision must be one of"):
        hf_step(model, precision="float16")
    fast = FA.FastLlama(model)
    with pytest.raises(ConfigError, match="reset"):
        fast.forward(torch.ones(1, 2, dtype=torch.long), 0)


def test_mot_think_takes_a_precision_for_a_pretrained_model_only(make_tiny_llama, hf_tokenizer, save_hf_dir,
                                                                 capsys):
    import json

    from mixture_of_thoughts.cli import main

    d = save_hf_dir(make_tiny_llama(hf_tokenizer.vocab_size), hf_tokenizer, name="tiny_precision")
    base = ["think", "--model", str(d), "--prompt", "the", "--branches", "3", "--max-new-tokens", "12", "--json"]
    texts = {}
    for prec in ("float32", "bfloat16"):
        assert main(base + ["--precision", prec]) == 0
        texts[prec] = [b["text"] for b in json.loads(capsys.readouterr().out)["branches"]]
    assert len(texts["bfloat16"]) == 3 and all(isinstance(t, str) for t in texts["bfloat16"])
    assert main(["think", "--prompt", "ROMEO:", "--precision", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mot: error: --precision") and "--model" in err and "Traceback" not in err


def test_mot_think_grafts_with_one_slot_a_token_on_request(make_tiny_llama, hf_tokenizer, save_hf_dir, capsys):
    import json

    from mixture_of_thoughts.cli import main

    d = save_hf_dir(make_tiny_llama(hf_tokenizer.vocab_size), hf_tokenizer, name="tiny_k1")
    base = ["think", "--model", str(d), "--prompt", "the", "--branches", "3", "--max-new-tokens", "12", "--json"]
    texts = {}
    for k, c in (("1", "0"), ("2", "0"), ("1", "1")):
        assert main(base + ["--k", k, "--creativity", c, "--temperature", "0"]) == 0
        texts[k, c] = [(b["text"], b["mean_loglik"]) for b in json.loads(capsys.readouterr().out)["branches"]]
    assert texts["1", "0"] == texts["2", "0"]  # at creativity 0 either graft is the model itself
    assert len(set(texts["1", "1"])) > 1  # one noisy slot a token makes the greedy branches differ
    for argv, needle in ((base + ["--k", "5"], "k must be in [1, n_branches=4]"),
                         (["think", "--prompt", "ROMEO:", "--k", "1"], "--k shapes a graft")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
        assert err.startswith("mot: error:") and needle in err


def test_one_packed_product_of_stacked_weights_equals_the_separate_ones():
    from mixture_of_thoughts.layers.kernels import PackedLinear, packed_linear_available

    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(n, 96, generator=g) for n in (64, 32, 32)]
    x = torch.randn(8, 1, 96, generator=g)
    packed = packed_linear_available()
    apart = torch.cat([PackedLinear(w, None, packed)(x) for w in ws], -1)
    assert torch.equal(PackedLinear(torch.cat(ws), None, packed)(x), apart)  # what the lean step's qkv relies on


def test_packed_matmul_follows_its_weight_and_stays_out_of_training():
    from mixture_of_thoughts.layers.kernels import packed_linear_available, packed_matmul

    owner = torch.nn.Linear(1, 1)
    w, a = torch.randn(16, 24), torch.randn(3, 16)
    with torch.no_grad():
        y = packed_matmul(a, w, owner)
        if not packed_linear_available():  # a build without oneDNN multiplies as usual
            assert y is None
            return
        assert torch.allclose(y, a @ w, atol=1e-5)
        w.mul_(2.0)  # an in-place update: repacked
        assert torch.allclose(packed_matmul(a, w, owner), a @ w, atol=1e-5)
        assert packed_matmul(a.double(), w.double(), owner) is None
    assert packed_matmul(a, w, owner) is None  # a gradient may be wanted: the ordinary matmul


def test_packed_matmul_of_weights_side_by_side_is_each_product():
    """A gated MLP's gate and up as one product (tied graft branches): the same numbers as apart, and
    repacked when either weight changes in place."""
    from mixture_of_thoughts.layers.kernels import packed_linear_available, packed_matmul

    if not packed_linear_available():
        pytest.skip("this PyTorch build has no oneDNN prepacked linear (x86 builds do)")
    owner = torch.nn.Linear(1, 1)
    g = torch.Generator().manual_seed(0)
    gate, up, a = torch.randn(40, 24, generator=g), torch.randn(40, 16, generator=g), torch.randn(5, 40, generator=g)
    with torch.no_grad():
        apart = torch.cat([packed_matmul(a, gate, owner), packed_matmul(a, up, owner)], -1)
        assert torch.equal(packed_matmul(a, (gate, up), owner), apart)
        up.mul_(3.0)
        both = packed_matmul(a, (gate, up), owner)
        torch.testing.assert_close(both[:, 24:], a @ up, atol=1e-5, rtol=1e-5)


def test_the_lean_caches_keep_no_model_alive_and_a_copy_decodes_alike(hf_tokenizer):
    import copy
    import gc
    import weakref

    model = graft(_llama(), "all", n_branches=4, k=2)
    kw = dict(branch_seeds=[0, 1, 2], creativity=5.0, max_new_tokens=10, chat=False)
    first = [b.text for b in think_hf(model, hf_tokenizer, "a", **kw).branches]
    twin = copy.deepcopy(model)  # the packed tensors live outside the modules: nothing odd to copy
    assert [b.text for b in think_hf(twin, hf_tokenizer, "a", **kw).branches] == first
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def _padded_rows(seed=3):
    """Three prompts of 3, 7 and 5 tokens, left-padded (pad id 0), and their mask."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, 31, (n,), generator=g).tolist() for n in (3, 7, 5)]
    from mixture_of_thoughts.generation.decoder import left_pad

    return left_pad(rows, 0, torch.device("cpu"))


def _padded_logits(lm, ids, steps, reorder=None):
    """Prompt, then ``steps`` greedy tokens through ``lm.logits`` (with a row reorder after step 1)."""
    T0 = ids.shape[1]
    tokens = torch.zeros(ids.shape[0], T0 + steps, dtype=torch.long)
    tokens[:, :T0] = ids
    out = []
    for t in range(steps):
        logits = lm.logits(tokens, T0 + t)
        out.append(logits)
        tokens[:, T0 + t] = logits.argmax(-1)
        if t == 1 and reorder is not None:
            lm.reorder(reorder)
            tokens = tokens[reorder]
    return out


@pytest.mark.parametrize("shared", [1, 2])
def test_the_padded_lean_step_computes_the_padded_models_logits(shared):
    """Left-padded rows (each row's own positions and key mask), a prompt read once for two rows, and
    beams reordered: unpacked, the lean logits are the model's padded forward's bit for bit after the
    prompt; packed, within 1e-4."""
    from mixture_of_thoughts.hf.vary import PaddedLM

    model = _llama()
    ids, mask = _padded_rows()
    ids, mask = ids.repeat_interleave(shared, 0), mask.repeat_interleave(shared, 0)
    rows = torch.arange(ids.shape[0]).flip(0) if shared == 1 else None  # beams of one prompt keep their mask
    with torch.no_grad():
        ref = _padded_logits(PaddedLM(model, mask, shared), ids, 6, rows)
    exact = _padded_logits(FA.PaddedLean(FA.FastLlama(model, packed=False), mask, shared), ids, 6, rows)
    assert (ref[0] - exact[0]).abs().max() < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(ref[1:], exact[1:], strict=True))
    assert not torch.equal(exact[0][0], exact[0][-1])  # the rows differ: padding really is in play
    if FA.packed_linear_available():
        packed = _padded_logits(FA.PaddedLean(FA.FastLlama(model), mask, shared), ids, 6, rows)
        assert max((a - b).abs().max().item() for a, b in zip(ref, packed, strict=True)) < 1e-4


def test_padded_rows_decode_the_same_texts_lean_or_not(hf_tokenizer, monkeypatch):
    """The comparison's padded decode (several prompts x seeds in one pass, grafted with thought noise or
    not) gives every row the same text through the lean step as through the model's forward."""
    from mixture_of_thoughts.experiments.compare_lm import decode_rows
    from mixture_of_thoughts.experiments.lm_grid import Contender
    from mixture_of_thoughts.hf import vary

    rows = [hf_tokenizer(p)["input_ids"] for p in ("a dog", "the cat sat on", "tea")]
    rows = [r for r in rows for _ in range(3)]
    seeds = [0, 1, 2] * 3
    for model, c in ((_llama(), Contender("temperature", "temperature", temperature=1.0)),
                     (graft(_llama(), "all", n_branches=4, k=2),
                      Contender("thoughts", "creativity", creativity=20.0, temperature=0.0))):
        lean = decode_rows(model, hf_tokenizer, c, rows, seeds, 12, torch.device("cpu"))
        with monkeypatch.context() as mp:  # the model's own padded forward, as before the lean step took padding
            mp.setattr(FA, "fast_blocker", lambda m: "the reference")
            ref = decode_rows(model, hf_tokenizer, c, rows, seeds, 12, torch.device("cpu"))
            assert isinstance(vary.padded_lm(model, torch.ones(1, 2)), vary.PaddedLM)
        assert isinstance(vary.padded_lm(model, torch.ones(1, 2)), FA.PaddedLean)
        assert [r[1] for r in lean] == [r[1] for r in ref]
        assert [r[2] for r in lean] == pytest.approx([r[2] for r in ref], abs=1e-4, nan_ok=True)
        assert len({r[1] for r in lean}) > 3
