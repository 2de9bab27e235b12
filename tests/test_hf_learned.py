"""Learned thought branches (``hf.learned``) on a tiny random Llama: the upper-only forward, the hooks,
the mixture losses, specialisation on a two-mode dataset, save/load, decoding, and the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from mixture_of_thoughts.errors import CheckpointError, DataError  # noqa: E402
from mixture_of_thoughts.hf import branch_data as D  # noqa: E402
from mixture_of_thoughts.hf import branch_training as TR  # noqa: E402
from mixture_of_thoughts.hf import learned as L  # noqa: E402

PROMPTS = ["tell me", "a story", "what now", "say it", "the end", "go on", "hello", "maybe so", "once more",
           "then what"]
MODES = (" cat sat mat", " dog ran far")
LOGIT_GAIN = 30.0  # a random tiny Llama's logits barely move (std 0.02 head): scale its head so a bias can


def _enc(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def tok(make_hf_char_tokenizer):
    return make_hf_char_tokenizer()


@pytest.fixture(scope="module")
def model(make_tiny_llama, tok):
    m = make_tiny_llama(len(tok))
    with torch.no_grad():
        m.lm_head.weight.mul_(LOGIT_GAIN)
    return m


@pytest.fixture(scope="module")
def two_modes(tok):
    """Each prompt followed by one of two continuations, 4 times each."""
    return [{"prompt": p, "prompt_ids": _enc(tok, p),
             "responses": [{"ids": _enc(tok, MODES[j % 2])} for j in range(8)]} for p in PROMPTS]


@pytest.fixture(scope="module")
def trained(model, tok, two_modes):
    cfg = TR.BranchTrainConfig(branches=2, layers="all", tokens=8, objective="soft-em", epochs=10, batch_prompts=3,
                              lr=0.5, seed=0)
    rng = torch.get_rng_state()
    branches, history = TR.train_branches(model, tok, two_modes, cfg, model_name="tiny")
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is never touched
    return branches, history


def _random_branches(model, B=3, layers="all", seed=1, scale=0.5):
    rms = [1.0] * len(L.resolve_layers(layers, model.config.num_hidden_layers))
    return L.new_branches(model, B, layers, init_scale=scale, hidden_rms=rms,
                          generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("first", [0, 1])
def test_upper_only_forward_equals_full_model(model, tok, first):
    ids = torch.tensor([_enc(tok, "the cat sat"), _enc(tok, "a dog sat a")])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        H = TR._lower_hidden(model, first, input_ids=ids)
        with TR.layer_range(model, first, model.config.num_hidden_layers) as base:
            upper = model.lm_head(base(inputs_embeds=H, use_cache=False).last_hidden_state)
    assert len(L.decoder_layers(model)) == 2  # the layer list is restored
    torch.testing.assert_close(upper, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_branch_loglik_with_zero_vectors_is_the_plain_models(make_tiny_llama, tok, two_modes, attn):
    """Packed groups (the prompt once, a block mask, own positions) read what the full model reads."""
    K = 5
    model = make_tiny_llama(len(tok), seed=2)
    model.set_attn_implementation(attn)
    branches = L.new_branches(model, 3, [1])
    ll, n = TR.branch_loglik(model, branches, TR.cache_groups(model, two_modes[:2], 1, K))
    assert ll.shape == (16, 3) and n.tolist() == [K] * 16
    for g, row in enumerate(two_modes[:2]):
        for k in (0, 1):
            P, resp = len(row["prompt_ids"]), row["responses"][k]["ids"][:K]
            ids = torch.tensor([row["prompt_ids"] + resp])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            direct = sum(float(lp[P - 1 + t, resp[t]]) for t in range(K))
            assert ll[g * 8 + k].tolist() == pytest.approx([direct] * 3, abs=1e-4)


def test_apply_branches_adds_each_rows_vector(model, tok):
    branches = _random_branches(model, B=3, layers=[1])
    seen = []
    row_branch = torch.tensor([2, 0, 2, 1])
    ids = torch.tensor([_enc(tok, "abc")] * 4)
    with torch.no_grad():
        # what layer 1 computes on: the input of its first norm (called after the layer's pre-hooks)
        h = L.decoder_layers(model)[1].input_layernorm.register_forward_pre_hook(
            lambda m, a: seen.append(a[0].clone()))
        try:
            model(input_ids=ids)
            with L.apply_branches(model, branches, row_branch):
                model(input_ids=ids)
            model(input_ids=ids)  # removed on exit
        finally:
            h.remove()
    plain, added, after = seen
    want = branches.vectors[row_branch, 0][:, None, :].expand_as(plain)
    torch.testing.assert_close(added - plain, want)
    assert torch.equal(after, plain)
    with pytest.raises(ValueError, match="row branches"), L.apply_branches(model, branches, torch.tensor([0, 1])):
        model(input_ids=ids)


def test_config_validation():
    with pytest.raises(ValueError, match="objective"):
        TR.BranchTrainConfig(objective="em")
    with pytest.raises(ValueError, match="tokens"):
        TR.BranchTrainConfig(tokens=0)
    assert L.resolve_layers("top4", 30) == [26, 27, 28, 29] and L.resolve_layers("3,1", 4) == [1, 3]
    with pytest.raises(ValueError, match="topN"):
        L.resolve_layers("top9", 4)


# ------------------------------------------------------------------------------------ training


def test_two_branches_take_one_mode_each(model, trained, two_modes):
    branches, history = trained
    ll, _ = TR.branch_loglik(model, branches, TR.cache_groups(model, two_modes, 0, 8))
    winner = ll.argmax(-1).view(len(two_modes), 8)
    even, odd = winner[:, 0::2].float().mean().item(), winner[:, 1::2].float().mean().item()
    assert {round(even), round(odd)} == {0, 1} and abs(even - odd) > 0.9  # each branch owns one mode
    steps = history["steps"]
    assert steps[-1]["mixture_nll"] < 0.5 * steps[0]["mixture_nll"]  # the mixture NLL falls
    assert steps[-1]["entropy"] < 0.1 and steps[-1]["usage"] == pytest.approx([0.5, 0.5], abs=0.2)
    val = history["epochs"]
    assert val[0]["epoch"] == 0 and val[-1]["val_mixture_nll"] < val[0]["val_mixture_nll"]
    assert history["val_prompts"] == 1 and history["train_prompts"] == 9
    assert branches.config.training["objective"] == "soft-em" and branches.config.data_sha256
    assert not any(p.requires_grad is False for p in model.parameters())  # flags restored


def test_wta_also_specialises(model, tok, two_modes):
    cfg = TR.BranchTrainConfig(branches=2, layers=[1], tokens=8, objective="wta", epochs=6, batch_prompts=3, lr=1.0,
                              val_frac=0.0, seed=3)
    branches, history = TR.train_branches(model, tok, two_modes, cfg)
    ll, _ = TR.branch_loglik(model, branches, TR.cache_groups(model, two_modes, 1, 8))
    winner = ll.argmax(-1).view(len(two_modes), 8).float()
    assert abs(winner[:, 0::2].mean() - winner[:, 1::2].mean()) > 0.9
    assert history["steps"][-1]["mixture_nll"] < history["steps"][0]["mixture_nll"] and not history["epochs"]


# ------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip_and_refusals(model, make_tiny_llama, tok, trained, tmp_path):
    import transformers as tf

    branches, history = trained
    out = L.save_branches(branches, tmp_path / "b", history=history)
    back = L.load_branches(out, model)
    assert torch.equal(back.vectors, branches.vectors) and back.config == branches.config
    assert json.loads((out / L.HISTORY_FILE).read_text())["steps"] == history["steps"]
    with pytest.raises(ValueError, match="exists"):
        L.save_branches(branches, out)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind
    other = make_tiny_llama(len(tok), seed=1)
    with pytest.raises(CheckpointError, match="same shapes but other weights"):
        L.load_branches(out, other)
    wide = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tok)))
    with pytest.raises(CheckpointError, match="hidden size 48"):
        L.load_branches(out, wide)
    with pytest.raises(CheckpointError, match="not a learned-branches directory"):
        L.load_branches(tmp_path)


# ------------------------------------------------------------------------------------ decoding


def test_zero_vectors_decode_like_the_plain_model(model, tok):
    from mixture_of_thoughts.hf.generate import sample_branches

    zero = L.new_branches(model, 3, "all")
    ids_list = [_enc(tok, "the cat"), _enc(tok, "a")]
    got = L.generate_learned(model, tok, zero, ids_list, [5, 6, 7], max_new_tokens=8, temperature=1.0)
    plain = L.decode_rows(model, tok, [ids for ids in ids_list for _ in range(3)], [5, 6, 7] * 2,
                           max_new_tokens=8, temperature=1.0)
    assert [g[0] for g in got] == [p[0] for p in plain] and len(got) == 6
    shared = L.decode_rows(model, tok, [ids for ids in ids_list for _ in range(3)], [5, 6, 7] * 2,
                            max_new_tokens=8, temperature=1.0, shared=3)  # each prompt prefilled once
    assert [x[0] for x in shared] == [p[0] for p in plain]
    assert [x[2] for x in shared] == pytest.approx([p[2] for p in plain], abs=1e-5)
    res = L.think_learned(model, tok, "the cat", zero, branches=3, seed=5, max_new_tokens=8, temperature=1.0)
    alone = sample_branches(model, tok, "the cat", [5, 6, 7], max_new_tokens=8, temperature=1.0)
    assert [b.text for b in res.branches] == [b.text for b in alone.branches]
    assert [g[1] for g in got[:3]] == [b.text for b in alone.branches]  # padded batch == alone


def test_a_branch_alone_equals_the_same_branch_in_the_batch(model, tok):
    branches = _random_branches(model, B=3, scale=2.0)
    res = L.think_learned(model, tok, "hello", branches, branches=5, seed=10, max_new_tokens=10, temperature=1.0)
    assert [r.seed for r in res.branches] == [10, 11, 12, 13, 14]
    assert [int(np.argmax(r.routing[1])) for r in res.branches] == [0, 1, 2, 0, 1]
    for i, r in enumerate(res.branches):
        one = L.think_learned(model, tok, "hello", branches, seed=10, branch_seeds=[10 + i], max_new_tokens=10,
                              temperature=1.0)
        assert one.branches[0].text == r.text and one.branches[0].routing == r.routing
    greedy = L.think_learned(model, tok, "hello", branches, seed=0, max_new_tokens=10, temperature=0.0)
    assert len({b.text for b in greedy.branches}) > 1  # the branches themselves differ, not only the seeds
    # the batched prompt-major form: seed j uses branch j mod B, NLL under the branch model
    rows = L.generate_learned(model, tok, branches, [_enc(tok, "hello")], [10, 11, 12, 13, 14], max_new_tokens=10,
                              temperature=1.0)
    assert [r[1] for r in rows] == [b.text for b in res.branches]
    assert [r[2] for r in rows] == pytest.approx([-b.mean_loglik for b in res.branches], abs=1e-4)


# ------------------------------------------------------------------------------------ data


def test_build_branch_data_filters_and_counts(model, tok, tmp_path):
    prompts = [{"prompt": p, "category": "c"} for p in PROMPTS[:3]]
    rows, stats = D.build_branch_data(model, tok, prompts, responses=4, max_new_tokens=6, seed=7, max_nll=50.0,
                                      batch_prompts=2, embedder=None)
    assert stats["responses_sampled"] == 12 and not stats["offtopic_check"]
    assert stats["responses_kept"] == sum(len(r["responses"]) for r in rows)
    assert stats["responses_kept"] + sum(stats["dropped"].values()) == 12
    r0 = rows[0]
    assert r0["prompt_ids"] == _enc(tok, r0["prompt"]) and {"ids", "text", "nll", "seed"} <= set(r0["responses"][0])
    # response j of prompt i has seed 7 + 1000 i + j and is the same decoded alone
    i = PROMPTS.index(r0["prompt"])
    resp = r0["responses"][0]
    j = resp["seed"] - 7 - 1000 * i
    assert 0 <= j < 4
    (alone,) = L.decode_rows(model, tok, [r0["prompt_ids"]], [resp["seed"]], max_new_tokens=6, temperature=1.0)
    assert alone[0] == resp["ids"] and alone[2] == pytest.approx(resp["nll"], abs=1e-3)
    # a strict NLL bound drops everything, and the prompts with it
    none, st = D.build_branch_data(model, tok, prompts, responses=2, max_new_tokens=4, max_nll=0.01, embedder=None)
    assert none == [] and st["prompts_dropped"] == 3 and st["dropped"]["nll"] + st["dropped"]["empty"] == 6
    path = tmp_path / "d.jsonl"
    D.write_branch_data(rows, stats, path)
    assert D.load_branch_data(path) == rows and json.loads(D.stats_path(path).read_text())["prompts"] == 3
    with pytest.raises(ValueError, match="--force"):
        D.write_branch_data(rows, stats, path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "responses": []}\n')
    with pytest.raises(DataError, match="line 1"):
        D.load_branch_data(bad)


# ------------------------------------------------------------------------------------ commands


@pytest.fixture(scope="module")
def tiny_dir(save_hf_dir, model, tok):
    return save_hf_dir(model, tok)


class _FakeEmbedder:
    def embed(self, texts):
        return np.ones((len(texts), 4))


def test_commands_end_to_end(tiny_dir, tmp_path, monkeypatch, capsys):
    from mixture_of_thoughts.cli import main
    from mixture_of_thoughts.metrics import semantic

    monkeypatch.setattr(semantic, "get_embedder", lambda *a, **k: _FakeEmbedder())
    data = tmp_path / "data.jsonl"
    argv = ["branch-data", "--model", str(tiny_dir), "--prompts", "4", "--responses", "4", "--max-new-tokens", "8",
            "--max-nll", "50", "--out", str(data), "--quiet"]
    assert main(argv) == 0
    assert "responses kept" in capsys.readouterr().out
    rows = D.load_branch_data(data)
    assert len(rows) >= 2 and json.loads(D.stats_path(data).read_text())["model"] == str(tiny_dir.resolve())
    assert main(argv) == 2 and "--force" in capsys.readouterr().err

    out = tmp_path / "br"
    targv = ["train-branches", "--model", str(tiny_dir), "--data", str(data), "--branches", "2", "--layers", "top1",
             "--tokens", "6", "--epochs", "2", "--batch-prompts", "2", "--out", str(out), "--quiet"]
    assert main(targv) == 0
    printed = capsys.readouterr().out
    assert "trained 2 branches" in printed and "winner share" in printed
    cfg = json.loads((out / L.CONFIG_FILE).read_text())
    assert cfg["layers"] == [1] and cfg["branches"] == 2 and cfg["training"]["tokens"] == 6
    assert main(targv) == 2 and "exists" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["train-branches", "--model", str(tiny_dir), "--data", str(bad), "--out", str(tmp_path / "br2"),
                 "--quiet"]) == 2
    assert "not valid JSON" in capsys.readouterr().err and not (tmp_path / "br2").exists()

    # think with the learned branches: --model defaults to the one they were trained on, --branches to B
    think = ["think", "--learned", str(out), "--prompt", "the cat", "--max-new-tokens", "6", "--temperature", "0"]
    assert main(think + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [b["seed"] for b in res["branches"]] == [0, 1]
    assert main(think) == 0
    assert "learned branch 1" in capsys.readouterr().out
    assert main(think + ["--json", "--branch-seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["branches"][0]["text"] == res["branches"][1]["text"]
    assert main(think + ["--creativity", "1"]) == 2 and "learned branches have none" in capsys.readouterr().err
