"""The small MoT model that ships inside the package (used by `make demo` and `mot think`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mixture_of_thoughts.cli.core import DEFAULT_MODEL
from mixture_of_thoughts.data.batches import CharDataset
from mixture_of_thoughts.data.corpus import load_corpus
from mixture_of_thoughts.generation.autoregressive import think
from mixture_of_thoughts.metrics.quality import ar_nll
from mixture_of_thoughts.rng import RowNoise
from mixture_of_thoughts.training.checkpoint import load_checkpoint

RECORDED = json.loads((DEFAULT_MODEL / "RECORDED.json").read_text())


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(DEFAULT_MODEL)


def test_shipped_model_is_a_mot_language_model(shipped):
    cfg = shipped.model.config
    assert shipped.objective == "ar" and cfg.causal
    assert cfg.thought_layer_indices() == list(range(cfg.n_layer))
    assert shipped.tokenizer.vocab_size == cfg.vocab_size == 65


def test_shipped_model_validation_loss_matches_record(shipped, shakespeare):
    ds = CharDataset(load_corpus(shakespeare), shipped.model.config.block_size, shipped.tokenizer)
    total, count = ar_nll(shipped.model, ds.val)
    assert count == RECORDED["characters"]
    assert abs(total / count - RECORDED["val_loss"]) < 0.05


NEW = 58  # "ROMEO:" + 58 characters fill the shipped model's 64-character block exactly


def test_shipped_model_branches_reproduce_alone(shipped):
    model, tok = shipped.model, shipped.tokenizer
    res = think(model, tok, "ROMEO:", branches=4, seed=3, creativity=(0.5, 1.5), max_new_tokens=NEW)
    texts = [b.text for b in res.branches]
    assert len(set(texts)) == 4  # the branches differ
    alone = think(model, tok, "ROMEO:", branch_seeds=[res.branches[2].seed],
                  creativity=[res.branches[2].creativity], max_new_tokens=NEW)
    assert alone.branches[0].text == texts[2]
    assert alone.branches[0].mean_loglik == pytest.approx(res.branches[2].mean_loglik, abs=1e-5)
    # each branch's mean log-likelihood is that of its text under one uncached forward pass of the model
    # with the branch's own noise and creativity
    for b in res.branches:
        ids = torch.tensor([tok.encode("ROMEO:" + b.text)])
        assert ids.shape[1] == model.config.block_size
        with torch.no_grad():
            logits = model(ids, noise=RowNoise([b.seed]), creativity=torch.tensor([b.creativity])).logits
        logp = torch.log_softmax(logits[0, 5:-1], -1).gather(-1, ids[0, 6:, None])
        assert b.mean_loglik == pytest.approx(float(logp.mean()), abs=1e-4)
    # a trained model: its own samples are far likelier than uniform guesses over 65 characters
    assert all(b.mean_loglik > -math.log(65) + 1.5 for b in res.branches)
