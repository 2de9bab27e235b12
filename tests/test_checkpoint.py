"""Checkpoints: round trip, clear errors for missing or corrupt files, atomic saves, safe trainer state."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import tiny_model_config
from mixture_of_thoughts.data.tokenizer import CharTokenizer
from mixture_of_thoughts.errors import CheckpointError
from mixture_of_thoughts.models.transformer import Transformer
from mixture_of_thoughts.training import checkpoint as ckmod
from mixture_of_thoughts.training.checkpoint import (
    load_checkpoint,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)

IDS = torch.tensor([[0, 3, 5, 7, 2, 1, 12, 4]])


def _model(seed=0, **changes) -> Transformer:
    return Transformer(tiny_model_config(**changes)).init_weights(torch.Generator().manual_seed(seed)).eval()


@pytest.fixture
def tok(tokenizer) -> CharTokenizer:
    return tokenizer


@pytest.fixture
def saved(tmp_path, tok):
    model = _model()
    path = save_checkpoint(tmp_path / "ck", model, tok, objective="ar", meta={"step": 7, "data": "x.txt"},
                           trainer_state={"step": 7, "rng": torch.Generator().manual_seed(1).get_state()})
    return path, model


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _hidden_entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip_gives_identical_logits(saved, tok):
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                      "trainer_state.pt"]
    ck = load_checkpoint(path)
    assert torch.equal(_logits(ck.model), _logits(model))
    assert ck.model.config == model.config
    assert ck.tokenizer.chars == tok.chars
    assert ck.objective == "ar" and ck.meta["step"] == 7 and ck.meta["data"] == "x.txt"
    assert ck.model.lm_head.weight is ck.model.wte.weight  # still tied after loading
    assert not ck.model.training
    assert _hidden_entries(path.parent) == []


def test_run_directory_resolves_best_then_latest(tmp_path, tok):
    run = tmp_path / "run"
    save_checkpoint(run / "latest", _model(1), tok, objective="ar")
    assert resolve_checkpoint(run) == run / "latest"  # no best/ yet
    save_checkpoint(run / "best", _model(2), tok, objective="ar")
    assert resolve_checkpoint(run) == run / "best"
    assert resolve_checkpoint(run, "latest") == run / "latest"
    assert torch.equal(_logits(load_checkpoint(run, which="latest").model), _logits(_model(1)))


def test_save_over_an_existing_checkpoint_replaces_it(saved, tok):
    path, _ = saved
    other = _model(seed=3)
    save_checkpoint(path, other, tok, objective="ar")
    assert torch.equal(_logits(load_checkpoint(path).model), _logits(other))
    assert not (path / "trainer_state.pt").exists()
    assert _hidden_entries(path.parent) == []


def test_missing_path_and_non_checkpoint_dirs(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a run or checkpoint directory"):
        load_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_missing_file_is_named(saved, name):
    path, _ = saved
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=f"incomplete: missing {name}"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, msg", [
    ("{not json", "config.json is corrupt"),
    ('{"model": {}}', "not a mixture-of-thoughts/1 checkpoint config"),
    ("[1, 2]", "not a mixture-of-thoughts/1"),
])
def test_corrupt_config_json(saved, content, msg):
    path, _ = saved
    (path / "config.json").write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(path)


def _edit_model_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"].update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_invalid_model_config_in_checkpoint(saved):
    path, _ = saved
    _edit_model_config(path, n_embd=30)
    with pytest.raises(CheckpointError, match="invalid model config.*n_embd"):
        load_checkpoint(path)
    _edit_model_config(path, n_embd=32, mystery=1)
    with pytest.raises(CheckpointError, match="invalid model config.*mystery"):
        load_checkpoint(path)


@pytest.mark.parametrize("garbage", [b"", b"not a safetensors file at all", None])
def test_corrupt_safetensors(saved, garbage):
    path, _ = saved
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if garbage is None else garbage)  # None: truncated
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("changes, what", [
    ({"n_embd": 64}, r"wte.weight: \(13, 32\) in the file, \(13, 64\) in config.json"),
    ({"vocab_size": 20}, r"wte.weight: \(13, 32\) in the file, \(20, 32\)"),
    ({"n_layer": 3}, "missing blocks.2"),
    ({"n_layer": 1}, "unexpected blocks.1"),
])
def test_weights_disagreeing_with_config(saved, changes, what):
    path, _ = saved
    _edit_model_config(path, **changes)
    with pytest.raises(CheckpointError, match="weights disagree with config.json.*" + what):
        load_checkpoint(path)


def test_expected_objective(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match="is a ar model but this command needs a diffusion run"):
        load_checkpoint(path, expect="diffusion")
    assert load_checkpoint(path, expect="ar").objective == "ar"


def _failing_after(n, real, exc: Exception | None = None):
    """``real`` whose call number ``n + 1`` (only that one) raises ``exc``."""
    calls = {"n": 0}

    def f(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n + 1:
            raise exc or OSError("disk full")
        return real(*a, **kw)
    return f


@pytest.mark.parametrize("ok_calls", [0, 1])
def test_interrupted_rename_keeps_previous_checkpoint(saved, tok, monkeypatch, ok_calls):
    """``os.replace`` failing on the first (old out of the way) or second (new into place) rename."""
    path, model = saved
    monkeypatch.setattr(os, "replace", _failing_after(ok_calls, os.replace))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _model(seed=5), tok, objective="ar")
    monkeypatch.undo()
    assert torch.equal(_logits(load_checkpoint(path).model), _logits(model))
    assert _hidden_entries(path.parent) == []


def test_crash_while_writing_weights_keeps_previous_checkpoint(saved, tok, monkeypatch):
    path, model = saved

    def half_written(m, filename, *a, **kw):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckmod, "save_model", half_written)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _model(seed=5), tok, objective="ar")
    assert torch.equal(_logits(load_checkpoint(path).model), _logits(model))
    assert _hidden_entries(path.parent) == []


def test_first_save_interrupted_leaves_nothing(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(ckmod.torch, "save", _failing_after(0, torch.save))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", _model(), tok, objective="ar", trainer_state={"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_trainer_state_loads_with_weights_only(saved):
    path, _ = saved
    state = load_trainer_state(path)
    assert state["step"] == 7 and torch.equal(state["rng"], torch.Generator().manual_seed(1).get_state())


class _Payload:
    """Not a tensor, dict or number: ``weights_only`` loading must refuse to unpickle it."""


def test_trainer_state_with_arbitrary_objects_is_refused(saved):
    path, _ = saved
    torch.save({"step": 1, "evil": _Payload()}, path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt"):
        load_trainer_state(path)


def test_trainer_state_missing_or_corrupt(saved):
    path, _ = saved
    (path / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt"):
        load_trainer_state(path)
    (path / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError, match="cannot resume"):
        load_trainer_state(path)


def test_trained_run_state_is_weights_only_loadable(tiny_run):
    state = load_trainer_state(tiny_run / "latest")
    assert state["step"] == 40
    assert {"optimizer", "batch_gen", "noise_gen", "best_val_loss"} <= set(state)
