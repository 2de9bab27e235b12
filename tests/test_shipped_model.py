"""The small MoT model that ships inside the package (used by `make demo` and `mot think`)."""

from __future__ import annotations

import json

import pytest
import torch

from mixture_of_thoughts.cli.core import DEFAULT_MODEL
from mixture_of_thoughts.data.batches import CharDataset
from mixture_of_thoughts.data.corpus import load_corpus
from mixture_of_thoughts.generation.autoregressive import think
from mixture_of_thoughts.metrics.quality import ar_nll
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


def test_shipped_model_branches_reproduce_alone(shipped):
    res = think(shipped.model, shipped.tokenizer, "ROMEO:", branches=4, seed=3, creativity=(0.5, 1.5),
                max_new_tokens=60)
    texts = [b.text for b in res.branches]
    assert len(set(texts)) == 4  # the branches differ
    alone = think(shipped.model, shipped.tokenizer, "ROMEO:", branch_seeds=[res.branches[2].seed],
                  creativity=[res.branches[2].creativity], max_new_tokens=60)
    assert alone.branches[0].text == texts[2]
    assert all(set(t) <= set(shipped.tokenizer.chars) for t in texts)
    assert torch.isfinite(torch.tensor([b.mean_loglik for b in res.branches])).all()
