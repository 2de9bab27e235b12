"""The one entry point: ``mixture_of_thoughts.load(spec).think(prompt)``, and the one layer-set parser."""

from __future__ import annotations

import pytest
import torch

import mixture_of_thoughts as mot
from mixture_of_thoughts.config import ModelConfig, layer_set
from mixture_of_thoughts.data.tokenizer import CharTokenizer
from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.generation.autoregressive import think
from mixture_of_thoughts.models.transformer import Transformer
from mixture_of_thoughts.training.checkpoint import load_checkpoint, save_checkpoint


def test_the_package_exports_load_and_thinker_only():
    assert mot.__all__ == ["load", "Thinker"]
    assert mot.load.__module__ == "mixture_of_thoughts.api"
    with pytest.raises(AttributeError, match="no attribute"):
        mot.think  # noqa: B018


def test_load_without_a_spec_is_the_shipped_model_and_thinks_as_the_library_does():
    th = mot.load()
    assert th.kind == "ar" and th.thought_layers == [0, 1, 2, 3] and th.n_branches == 8
    res = th.think("ROMEO:", branches=3, seed=4, creativity=(0.5, 1.5), max_new_tokens=20)
    ck = load_checkpoint(mot.api.SHIPPED)
    ref = think(ck.model, ck.tokenizer, "ROMEO:", branches=3, seed=4, creativity=(0.5, 1.5), max_new_tokens=20)
    assert [b.text for b in res.branches] == [b.text for b in ref.branches]
    assert len({b.text for b in res.branches}) == 3


def test_a_denoiser_loads_but_does_not_continue(tmp_path):
    tok = CharTokenizer(list("ab "))
    model = Transformer(ModelConfig(vocab_size=4, block_size=16, n_layer=1, n_head=2, n_embd=16, causal=False,
                                    time_conditioning=True)).init_weights(torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path / "d", model, tok, objective="diffusion")
    th = mot.load(tmp_path / "d")
    assert th.kind == "diffusion" and th.thought_layers == [] and th.n_branches == 0
    with pytest.raises(ConfigError, match="denoiser"):
        th.think("ab")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match="a file, not a run"):
        mot.load(tmp_path / "f.txt")


def test_a_pretrained_model_is_grafted_on_the_layers_asked_for(make_tiny_llama, hf_tokenizer, save_hf_dir):
    d = save_hf_dir(make_tiny_llama(hf_tokenizer.vocab_size), hf_tokenizer)
    th = mot.load(str(d))
    assert th.kind == "hf" and th.grafted_now and th.thought_layers == [0, 1] and th.n_branches == 4
    assert mot.load(str(d), graft="upper").thought_layers == [1]
    plain = mot.load(str(d), graft=None)
    assert plain.thought_layers == [] and not plain.grafted_now and not hasattr(plain.model, "mot_graft")
    res = th.think("ab", branches=2, seed=3, max_new_tokens=5, chat=False)
    again = mot.load(str(d)).think("ab", branch_seeds=[4], max_new_tokens=5, chat=False)
    assert again.branches[0].text == res.branches[1].text  # branch 1 (seed 4) alone is the same text


@pytest.mark.parametrize("spec,expect", [("all", [0, 1, 2, 3, 4, 5]), ("lower", [0, 1, 2]), ("upper", [3, 4, 5]),
                                         ("top2", [4, 5]), ("5,0,0", [0, 5]), ([2, 1], [1, 2]), (" Top1 ", [5])])
def test_one_layer_set_parser(spec, expect):
    assert layer_set(spec, 6) == expect


@pytest.mark.parametrize("spec", ["none", "", "6", "-1", "top0", "top7", "middle", "1,x"])
def test_bad_layer_sets_are_refused_with_the_forms_named(spec):
    with pytest.raises(ConfigError, match="layers"):
        layer_set(spec, 6)


def test_mot_graft_takes_upper_like_mot_think(tmp_path, make_tiny_llama, hf_tokenizer, save_hf_dir, capsys):
    from mixture_of_thoughts.cli import main

    d = save_hf_dir(make_tiny_llama(hf_tokenizer.vocab_size), hf_tokenizer, name="tiny_upper")
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abd abe. " * 200)
    rc = main(["graft", "--model", str(d), "--data", str(corpus), "--layers", "upper", "--steps", "2",
               "--out", str(tmp_path / "g")])
    assert rc == 0, capsys.readouterr().err
    assert mot.load(str(tmp_path / "g")).thought_layers == [1]
    assert main(["graft", "--model", str(d), "--data", str(corpus), "--layers", "middle", "--steps", "2",
                 "--out", str(tmp_path / "h")]) == 2
    assert "lower, upper" in capsys.readouterr().err
