"""The training loop: learning, bitwise resume, divergence, interruption, and the --out policy."""

from __future__ import annotations

import copy
import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_model_config, tiny_train_config, train_tiny
from mixture_of_thoughts.errors import CheckpointError, TrainingDiverged
from mixture_of_thoughts.training import trainer
from mixture_of_thoughts.training.checkpoint import load_checkpoint, load_trainer_state
from mixture_of_thoughts.training.distributed import DistInfo
from mixture_of_thoughts.training.objectives import AutoregressiveObjective
from mixture_of_thoughts.training.optim import lr_at, make_optimizer
from mixture_of_thoughts.training.trainer import train

LOSS_KEYS = ("train_loss", "val_loss")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run):
    return [(m["step"], *(m[k] for k in LOSS_KEYS)) for m in _metrics(run)]


def _weights(run, which="latest"):
    return load_file(str(run / which / "model.safetensors"))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, corpus_file):
    """Six steps in one go, evaluated at every step (the reference for the resume tests)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    res = train_tiny(corpus_file, out)
    assert res.step == 6 and not res.interrupted
    return out


def test_lr_schedule_matches_hand_computed_values():
    cfg = tiny_train_config(max_steps=14, warmup_steps=4, lr=1e-2, min_lr=1e-3)
    # warm-up: lr * (step + 1) / (warmup + 1), linear in the step
    assert [lr_at(s, cfg) for s in range(4)] == pytest.approx([2e-3, 4e-3, 6e-3, 8e-3], rel=1e-12)
    # cosine over steps 4..14: min_lr + (lr - min_lr) * (1 + cos(pi * (step - 4) / 10)) / 2
    assert lr_at(4, cfg) == pytest.approx(1e-2, rel=1e-12)  # the peak, where the warm-up ends
    assert lr_at(6, cfg) == pytest.approx(0.0091405765, rel=1e-8)  # cos(pi/5) = 0.80901699
    assert lr_at(9, cfg) == pytest.approx(0.0055, rel=1e-12)  # half-way: the mean of lr and min_lr
    assert lr_at(12, cfg) == pytest.approx(0.0018594235, rel=1e-7)  # cos(4 pi/5) = -0.80901699
    # constant min_lr from max_steps on
    assert lr_at(14, cfg) == lr_at(15, cfg) == lr_at(1000, cfg) == 1e-3
    lrs = [lr_at(s, cfg) for s in range(4, 15)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # strictly decreasing after the warm-up
    assert lr_at(0, tiny_train_config(max_steps=10, warmup_steps=0, lr=1e-2, min_lr=1e-3)) == pytest.approx(1e-2)


def test_make_optimizer_decays_matrices_only():
    net = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3),
                              torch.nn.Linear(3, 2, bias=False))
    net[3].weight.requires_grad_(False)  # frozen: in no group
    cfg = tiny_train_config(weight_decay=0.25, lr=2e-3, beta1=0.8, beta2=0.95)
    opt = make_optimizer(net, cfg, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert [id(p) for p in decay["params"]] == [id(net[0].weight), id(net[1].weight)]
    assert [id(p) for p in no_decay["params"]] == [id(net[1].bias), id(net[2].weight), id(net[2].bias)]
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    assert all(g["lr"] == 2e-3 and g["betas"] == (0.8, 0.95) for g in opt.param_groups)


def _adamw_run(opt, params, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-2 / (i + 1)  # the trainer sets the rate every step
        opt.zero_grad(set_to_none=True)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def _params(seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g).requires_grad_(), torch.randn(3, generator=g).requires_grad_()]


def test_fused_adamw_is_torch_adamw_bit_for_bit_and_shares_its_state_dict():
    from mixture_of_thoughts.training.optim import FusedAdamW

    def groups(ps):
        return [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "weight_decay": 0.0}]

    ours_p, ref_p = _params(), _params()
    ours = FusedAdamW(groups(ours_p), lr=1e-2, betas=(0.9, 0.95))
    ref = torch.optim.AdamW(groups(ref_p), lr=1e-2, betas=(0.9, 0.95), fused=True)
    _adamw_run(ours, ours_p)
    _adamw_run(ref, ref_p)
    for a, b in zip(ours_p, ref_p, strict=True):
        assert torch.equal(a, b)
    # a state saved by either continues in the other exactly
    into_torch = functools.partial(torch.optim.AdamW, fused=True)
    for src, src_p, other in ((ours, ours_p, into_torch), (ref, ref_p, FusedAdamW)):
        cont_p = [p.detach().clone().requires_grad_() for p in src_p]
        cont = other(groups(cont_p), lr=1.0, betas=(0.5, 0.5))
        cont.load_state_dict(copy.deepcopy(src.state_dict()))  # as through a checkpoint file
        assert cont.param_groups[0]["betas"] == (0.9, 0.95) and cont.param_groups[1]["weight_decay"] == 0.0
        _adamw_run(cont, cont_p, seed=7)
        _adamw_run(src, src_p, seed=7)
        for a, b in zip(cont_p, src_p, strict=True):
            assert torch.equal(a, b)
    ours.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in ours_p)
    with pytest.raises(ValueError, match="different parameter groups"):
        FusedAdamW([{"params": ours_p, "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95)).load_state_dict(
            ours.state_dict())


def test_training_does_not_import_torch_dynamo(corpus_file, tmp_path):
    """Constructing torch.optim's optimisers imports torch._dynamo, ~1 s of every process; training
    here needs none of it."""
    code = ("import sys; from conftest import tiny_model_config, tiny_train_config; "
            "from mixture_of_thoughts.training.trainer import train; "
            f"train({str(corpus_file)!r}, {str(tmp_path / 'run')!r}, tiny_model_config(), "
            "tiny_train_config(max_steps=2, eval_interval=1)); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("chunk_tokens", [1, 2 * 4 * 16])  # one batch a pass; two batches a pass (3 = 2 + 1)
def test_evaluation_in_chunks_is_the_mean_over_its_batches(corpus_text, monkeypatch, chunk_tokens):
    """Scoring the fixed batches in chunks gives the mean loss of the batches scored one by one."""
    from mixture_of_thoughts.data.batches import CharDataset, get_batch
    from mixture_of_thoughts.models.transformer import Transformer

    monkeypatch.setattr(trainer, "EVAL_CHUNK_TOKENS", chunk_tokens)
    cfg = tiny_train_config(eval_batches=3)
    model = Transformer(tiny_model_config(block_size=16)).init_weights(torch.Generator().manual_seed(0))
    ds = CharDataset(corpus_text, 16)
    ev = trainer._Evaluator(ds, cfg, 16, torch.device("cpu"))
    assert [x.shape[0] for x, _ in ev.batches["val"]] == ([4, 4, 4] if chunk_tokens == 1 else [8, 4])
    out = ev(model, AutoregressiveObjective(), cfg, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    with torch.no_grad():
        for split in ("train", "val"):
            ref = [float(model(*get_batch(ds.split(split), 16, 4, g)).loss) for _ in range(3)]
            assert out[f"{split}_loss"] == pytest.approx(sum(ref) / 3, rel=1e-6)


def test_make_optimizer_groups_every_transformer_parameter_once():
    from mixture_of_thoughts.models.transformer import Transformer

    model = Transformer(tiny_model_config(bias=True, thought_layers=[1]))
    decay, no_decay = make_optimizer(model, tiny_train_config(), torch.device("cpu")).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"] + no_decay["params"]) == sorted(names.values())
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert any(names[id(p)].endswith("bias") for p in no_decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])


class _Recorder:
    """A TrainProgress that records its calls."""

    def __init__(self):
        self.calls = []

    def start(self, total, initial, desc):
        self.calls.append(("start", total, initial, desc))

    def update(self, step, metrics):
        self.calls.append(("update", step, dict(metrics)))

    def close(self):
        self.calls.append(("close",))


def test_progress_is_told_of_every_step_and_of_evaluations(corpus_file, tmp_path):
    rec = _Recorder()
    out = tmp_path / "run"
    cfg = tiny_train_config(eval_interval=2)
    train(str(corpus_file), out, tiny_model_config(), cfg, device="cpu", progress=rec, stop_after=3)
    assert rec.calls[0] == ("start", 6, 0, "train ar") and rec.calls[-1] == ("close",)
    updates = [c[1:] for c in rec.calls[1:-1]]
    assert [step for step, _ in updates] == [1, 2, 3]
    assert all(c[0] == "update" for c in rec.calls[1:-1])
    for step, m in updates:
        assert math.isfinite(m["loss"]) and m["lr"] == lr_at(step - 1, cfg)
    logged = {m["step"]: m for m in _metrics(out)}
    assert sorted(logged) == [2, 3]  # evaluated at step 2 (interval) and 3 (stop)
    assert "val_loss" not in updates[0][1]
    for step, m in updates[1:]:  # the evaluation's record rides along with its step
        assert {k: m[k] for k in logged[step]} == logged[step]

    rec = _Recorder()
    train(str(corpus_file), out, None, None, resume=True, device="cpu", progress=rec)
    assert rec.calls[0] == ("start", 6, 3, "train ar") and rec.calls[-1] == ("close",)
    assert [c[1] for c in rec.calls[1:-1]] == [4, 5, 6]


def test_progress_is_closed_when_training_diverges(corpus_file, tmp_path, monkeypatch):
    def diverge(self, model, x, y, generator):
        out = real(self, model, x, y, generator)
        return out._replace(loss=out.loss * float("nan"))

    real = AutoregressiveObjective.loss
    monkeypatch.setattr(AutoregressiveObjective, "loss", diverge)
    rec = _Recorder()
    with pytest.raises(TrainingDiverged):
        train(str(corpus_file), tmp_path / "run", tiny_model_config(), tiny_train_config(), device="cpu",
              progress=rec)
    assert [c[0] for c in rec.calls] == ["start", "close"]


def test_progress_is_silent_and_no_files_are_written_on_other_ranks(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.distributed, "setup", lambda dev: (DistInfo(rank=1), dev))
    rec = _Recorder()
    out = tmp_path / "run"
    res = train(str(corpus_file), out, tiny_model_config(), tiny_train_config(max_steps=2), device="cpu",
                progress=rec)
    assert res.step == 2 and rec.calls == []
    assert not out.exists()


def test_loss_goes_down(tiny_run):
    m = _metrics(tiny_run)
    assert [r["step"] for r in m] == [10, 20, 30, 40]
    assert m[-1]["val_loss"] < m[0]["val_loss"] - 0.1
    assert m[-1]["train_loss"] < math.log(13) - 0.3  # the loss starts near ln V
    assert all(r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2)) for r in m)
    best = load_checkpoint(tiny_run)
    assert best.meta["val_loss"] == pytest.approx(min(r["val_loss"] for r in m))


def test_run_files(tiny_run):
    assert {p.name for p in tiny_run.iterdir()} == {"latest", "best", "metrics.jsonl"}
    ck = load_checkpoint(tiny_run, which="latest")
    assert ck.meta["step"] == 40 and ck.meta["train"]["max_steps"] == 40 and ck.objective == "ar"
    assert ck.model.config.vocab_size == 13  # set from the corpus, not the config given


def test_resume_is_bitwise(straight_run, corpus_file, tmp_path):
    out = tmp_path / "run"
    res = train(str(corpus_file), out, tiny_model_config(), tiny_train_config(), device="cpu", stop_after=3)
    assert res.step == 3 and load_trainer_state(out / "latest")["step"] == 3
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3]
    res = train(str(corpus_file), out, None, None, resume=True, device="cpu")
    assert res.step == 6
    assert _losses(out) == _losses(straight_run)
    _assert_same_weights(_weights(out), _weights(straight_run))
    _assert_same_weights(_weights(out, "best"), _weights(straight_run, "best"))


def test_resume_with_more_steps_and_data_from_the_run(straight_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    res = train(None, out, None, None, resume=True, device="cpu", max_steps=8)
    assert res.step == 8
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert load_checkpoint(out, which="latest").meta["train"]["max_steps"] == 8


def test_nan_loss_raises_and_keeps_last_good_state(corpus_file, tmp_path, monkeypatch):
    real = AutoregressiveObjective.loss
    calls = {"n": 0}

    def poisoned(self, model, x, y, generator):
        calls["n"] += 1
        out = real(self, model, x, y, generator)
        if calls["n"] == 4:  # the step that would take us from 3 to 4
            return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(AutoregressiveObjective, "loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"became nan at step 3.*--lr"):
        train_tiny(corpus_file, out, max_steps=6, eval_interval=2)
    ck = load_checkpoint(out, which="latest")
    assert load_trainer_state(ck.path)["step"] == 3
    assert all(torch.isfinite(p).all() for p in ck.model.state_dict().values())
    # the saved weights are those after step 3, which a clean run reproduces
    monkeypatch.undo()
    clean = tmp_path / "clean"
    train(str(corpus_file), clean, tiny_model_config(), tiny_train_config(eval_interval=2), device="cpu",
          stop_after=3)
    _assert_same_weights(_weights(out), _weights(clean))


def test_keyboard_interrupt_saves_and_resume_continues(straight_run, corpus_file, tmp_path, monkeypatch):
    real = trainer.lr_at

    def interrupt_at_3(step, cfg):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, cfg)

    monkeypatch.setattr(trainer, "lr_at", interrupt_at_3)
    out = tmp_path / "run"
    res = train_tiny(corpus_file, out)
    assert res.interrupted and res.step == 3
    assert load_trainer_state(out / "latest")["step"] == 3
    monkeypatch.undo()
    res = train(str(corpus_file), out, None, None, resume=True, device="cpu")
    assert res.step == 6 and not res.interrupted
    assert _losses(out) == _losses(straight_run)
    _assert_same_weights(_weights(out), _weights(straight_run))


def test_out_dir_that_is_not_a_run_is_refused_unless_forced(corpus_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "sub").mkdir()
    with pytest.raises(CheckpointError, match="not empty and is not a run.*--force"):
        train_tiny(corpus_file, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"]
    res = train(str(corpus_file), out, tiny_model_config(), tiny_train_config(max_steps=2), device="cpu", force=True)
    assert res.step == 2
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub").is_dir()


def test_existing_run_is_refused_unless_forced_and_force_starts_afresh(straight_run, corpus_file, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    with pytest.raises(CheckpointError, match="holds a run.*--resume"):
        train_tiny(corpus_file, out)
    train(str(corpus_file), out, tiny_model_config(), tiny_train_config(max_steps=2), device="cpu", force=True)
    assert [m["step"] for m in _metrics(out)] == [1, 2]  # the old metrics are gone, not appended to
    assert load_trainer_state(out / "latest")["step"] == 2


def test_out_is_a_file_or_resume_of_a_non_run(corpus_file, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        train_tiny(corpus_file, f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a run directory"):
        train(str(corpus_file), tmp_path / "empty", None, None, resume=True, device="cpu")


def test_resume_is_bitwise_with_dropout_and_thought_noise(corpus_file, tmp_path):
    """Dropout (global RNG, forked and checkpointed) and MoT noise (generator) both resume exactly."""
    cfg = dict(dropout=0.2, thought_layers="all")
    straight = tmp_path / "straight"
    train(str(corpus_file), straight, tiny_model_config(**cfg), tiny_train_config(), device="cpu")
    out = tmp_path / "run"
    train(str(corpus_file), out, tiny_model_config(**cfg), tiny_train_config(), device="cpu", stop_after=3)
    train(str(corpus_file), out, None, None, resume=True, device="cpu")
    assert _losses(out) == _losses(straight)
    _assert_same_weights(_weights(out), _weights(straight))


def test_mot_run_logs_per_layer_router_statistics(corpus_file, tmp_path):
    out = tmp_path / "mot"
    train(str(corpus_file), out, tiny_model_config(thought_layers=[1], thoughts={"n_branches": 4, "k": 2}),
          tiny_train_config(max_steps=2, eval_interval=2), device="cpu")
    rec = _metrics(out)[-1]
    assert set(rec["router_entropy"]) == set(rec["balance_loss"]) == set(rec["z_loss"]) == {"1"}
    assert 0 < rec["router_entropy"]["1"] <= math.log(4) + 1e-6  # entropy of a 4-way distribution
    assert 0 < rec["balance_loss"]["1"] <= 4  # E * sum_e f_e P_e lies in (0, E]; 1 when both are uniform
    assert abs(sum(rec["branch_load"]["1"]) - 1) < 1e-4 and rec["aux_loss"] > 0
