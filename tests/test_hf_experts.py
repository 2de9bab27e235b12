"""Expert control on tiny random MoE models (Hugging Face v5 families and this package's MoT layers)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from mixture_of_thoughts.errors import ConfigError, MotError  # noqa: E402
from mixture_of_thoughts.hf.specialise import expert_specialisation, plot_specialisation, think_experts  # noqa: E402
from mixture_of_thoughts.steering.experts import (  # noqa: E402
    ExpertController,
    ExpertProfile,
    NoExpertsError,
    find_moe_layers,
    select_experts,
)

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss")
E = 4
IDS = torch.tensor([[1, 5, 9, 2, 27, 4, 8, 3], [7, 7, 1, 2, 3, 27, 9, 9]])



def tiny_moe(family: str, seed: int = 0):
    """2 layers, width 32, 4 experts, top-2; routers given N(0, 1) weights (some families init them to 0)."""
    import transformers as tf

    torch.manual_seed(seed)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, eos_token_id=0, pad_token_id=0)
    if family == "mixtral":
        m = tf.MixtralForCausalLM(tf.MixtralConfig(**kw, num_local_experts=E, num_experts_per_tok=2))
    elif family == "qwen2_moe":
        m = tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**kw, num_experts=E, num_experts_per_tok=2,
                                                     moe_intermediate_size=32, shared_expert_intermediate_size=32))
    elif family == "qwen3_moe":
        m = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**kw, num_experts=E, num_experts_per_tok=2,
                                                     moe_intermediate_size=32, head_dim=16))
    elif family == "olmoe":
        m = tf.OlmoeForCausalLM(tf.OlmoeConfig(**kw, num_experts=E, num_experts_per_tok=2))
    else:
        m = tf.GptOssForCausalLM(tf.GptOssConfig(**kw, num_local_experts=E, num_experts_per_tok=2, head_dim=16,
                                                 layer_types=["full_attention"] * 2))
    with torch.no_grad():
        for layer in find_moe_layers(m):
            layer.router.weight.normal_(0.0, 1.0)
    return m.eval()


def _experts_seen(model):
    """Pre-hooks on the fused experts modules: the expert ids each one is actually asked to run."""
    seen, handles = set(), []
    for layer in find_moe_layers(model):
        def hook(module, args):
            idx, w = args[1], args[2]
            seen.update(idx[w > 0].unique().tolist())
        handles.append(layer.block.experts.register_forward_pre_hook(hook))
    return seen, handles


@pytest.mark.parametrize("family", FAMILIES)
def test_force_ban_and_restore(family):
    model = tiny_moe(family)
    with torch.no_grad():
        ref = model(IDS).logits
        seen, handles = _experts_seen(model)
        with ExpertController(model, record=True) as ctl:
            assert torch.equal(model(IDS).logits, ref)  # recording alone changes nothing
            assert len(seen) == E
            seen.clear()
            ctl.reset_records()
            ctl.set_profile(ExpertProfile(force=[1, 3]))
            forced = model(IDS).logits
            rates = ctl.activation_rates()
            assert seen == {1, 3}  # only experts 1 and 3 received tokens
            assert torch.equal(rates[:, [0, 2]], torch.zeros(2, 2))
            assert torch.allclose(rates[:, [1, 3]], torch.ones(2, 2))
            assert (forced - ref).abs().max() > 1e-4
            seen.clear()
            ctl.set_profile(ExpertProfile(force=[2]))  # fewer than k: the spare slot gets weight 0
            model(IDS)
            assert seen == {2}
            seen.clear()
            ctl.set_profile(ExpertProfile(ban=[0, 1]))
            model(IDS)
            assert seen == {2, 3}
        for h in handles:
            h.remove()
        assert torch.equal(model(IDS).logits, ref)  # bit for bit after leaving the context


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss", "qwen3_moe"])
def test_reselection_matches_router(family):
    """select_experts on unedited logits reproduces the router's own weights and indices exactly."""
    model = tiny_moe(family)
    layer = find_moe_layers(model)[0]
    x = torch.randn(10, 32)
    with torch.no_grad():
        logits, w, i = layer.router(x)
        w2, i2 = select_experts(logits, layer.top_k, layer.rule, layer.renormalise, w.dtype)
    assert torch.equal(i, i2) and torch.equal(w, w2)


def test_per_row_profiles_and_steering():
    model = tiny_moe("olmoe")
    with torch.no_grad(), ExpertController(model, record=True) as ctl:
        ctl.set_profile([ExpertProfile(force=[0]), ExpertProfile(ban=[0])])
        model(IDS)
        rec = ctl.records(0)[0]
        assert torch.equal(rec.index[0].unique(), torch.tensor([0]))  # row 0 only expert 0
        assert 0 not in rec.index[1][rec.weight[1] > 0].tolist()  # row 1 never expert 0
        ctl.reset_records()
        ctl.set_profile(ExpertProfile(boost=[2], delta=1.0))  # SteerMoE: expert 2 above every other
        model(IDS)
        assert torch.allclose(ctl.activation_rates()[:, 2], torch.ones(2))
        ctl.reset_records()
        ctl.set_profile(ExpertProfile(suppress=[2], delta=1.0))
        model(IDS)
        assert torch.equal(ctl.activation_rates()[:, 2], torch.zeros(2))
        with pytest.raises(ConfigError, match="one per row"):
            ctl.set_profile([ExpertProfile(), ExpertProfile(), ExpertProfile()])
            model(IDS)


def test_clear_errors():
    model = tiny_moe("mixtral")
    ctl = ExpertController(model)
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        ctl.set_profile(ExpertProfile(force=[4]))
    with pytest.raises(ConfigError, match="no allowed expert"):
        ctl.set_profile(ExpertProfile(ban=[0, 1, 2, 3]))
    with pytest.raises(ConfigError, match="not MoE layers"):
        ctl.set_profile(ExpertProfile(ban={7: [0]}))
    import transformers as tf

    dense = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=2, vocab_size=50))
    with pytest.raises(NoExpertsError, match="mixtral") as e:
        ExpertController(dense)
    assert isinstance(e.value, MotError)


def test_controller_on_mot_transformer(tiny_config):
    from mixture_of_thoughts.models.transformer import Transformer

    cfg = tiny_config
    cfg.thought_layers = "all"
    cfg.thoughts.n_branches, cfg.thoughts.k = 4, 2
    model = Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        ref = model(x).logits
        with ExpertController(model, record=True) as ctl:
            ctl.set_profile(ExpertProfile(force=[1, 3]))
            out = model(x)
            for s in out.stats.values():
                assert torch.equal(s["load"][[0, 2]], torch.zeros(2))
            rates = ctl.activation_rates()
            assert torch.allclose(rates[:, [1, 3]], torch.ones(2, 2)) and not rates[:, [0, 2]].any()
            assert (out.logits - ref).abs().max() > 1e-6
            ctl.set_profile(ExpertProfile(ban=[0]))
            assert model(x).stats[0]["load"][0] == 0
        assert torch.equal(model(x).logits, ref)


def test_specialisation_heatmap_and_profile_branches(tmp_path):
    from test_hf_graft import char_tokenizer

    tok = char_tokenizer()
    model = tiny_moe("mixtral")
    model.resize_token_embeddings(len(tok.get_vocab()))
    spec = expert_specialisation(model, tok, ["aaaa bbbb", "abab abab"], ["xyz zyx", "zzzz yyyy"])
    assert spec.rates_a.shape == (2, E) and spec.tokens_a == 18
    assert torch.allclose(spec.rates_a.sum(1), torch.full((2,), 2.0))  # k experts per token
    assert torch.allclose(spec.diff, spec.rates_a - spec.rates_b)
    top = spec.top("a", 2)
    assert set(top) == {0, 1} and top[0][0][1] >= top[0][1][1]
    png = plot_specialisation(spec, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profiles = [ExpertProfile(), ExpertProfile(force=[0, 1]), ExpertProfile(ban=[0, 1])]
    res = think_experts(model, tok, "the ", profiles, seed=3, max_new_tokens=6)
    assert [b.seed for b in res.branches] == [3, 4, 5]
    for layer in (0, 1):
        assert sum(res.branches[1].routing[layer][2:]) == 0  # forced row used only experts 0, 1
        assert sum(res.branches[2].routing[layer][:2]) == 0
    alone = think_experts(model, tok, "the ", [ExpertProfile(ban=[0, 1])], seed=5, max_new_tokens=6)
    assert alone.branches[0].text == res.branches[2].text  # a profile branch regenerated alone
