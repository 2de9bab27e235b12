"""The ``mot`` command line: user mistakes end in one ``mot: error:`` line and exit 2; commands work."""

from __future__ import annotations

import json
import math
import os

import pytest

from mixture_of_thoughts.cli import main

TINY_FLAGS = ["--block-size", "16", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--batch-size", "4",
              "--eval-batches", "2", "--warmup-steps", "1", "--device", "cpu", "--quiet"]


def _train_args(data, out, steps=2, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
            "--eval-interval", "1", *TINY_FLAGS, *extra]


def _fails(capsys, argv, *needles) -> str:
    """Run ``mot argv``; assert exit 2 and a single 'mot: error:' line containing ``needles``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mot: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- data problems


def test_missing_data_file(capsys, tmp_path):
    _fails(capsys, _train_args(tmp_path / "nope.txt", tmp_path / "run"), "does not exist")
    assert not (tmp_path / "run").exists()


def test_data_is_a_directory(capsys, tmp_path):
    _fails(capsys, _train_args(tmp_path, tmp_path / "run"), "not a regular file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_data_file(capsys, tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("hello\n" * 100)
    p.chmod(0)
    try:
        _fails(capsys, _train_args(p, tmp_path / "run"), "cannot read")
    finally:
        p.chmod(0o600)


def test_read_error_on_data_file(capsys, tmp_path, monkeypatch):
    """What an unreadable file gives, also when the tests run as root (who can read anything)."""
    p = tmp_path / "secret.txt"
    p.write_text("hello\n" * 100)
    real = type(p).read_bytes

    def denied(self):
        if self == p:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(type(p), "read_bytes", denied)
    _fails(capsys, _train_args(p, tmp_path / "run"), "cannot read", "Permission denied")


@pytest.mark.parametrize("content, needle", [
    (b"", "is empty"),
    (b"\x00\x01\x02binary" * 50, "looks binary"),
    (b"caf\xe9 " * 50, "not valid UTF-8"),
    (b"a short text.\n" * 5, "too short"),
])
def test_unusable_data_files(capsys, tmp_path, content, needle):
    p = tmp_path / "data.txt"
    p.write_bytes(content)
    _fails(capsys, _train_args(p, tmp_path / "run"), needle)


# ----------------------------------------------------------------------------- config problems


def test_invalid_config_values(capsys, corpus_file, tmp_path):
    _fails(capsys, _train_args(corpus_file, tmp_path / "run", 2, "--n-embd", "30", "--n-head", "4"),
           "n_embd (30)", "n_head (4)")
    _fails(capsys, _train_args(corpus_file, tmp_path / "run", 2, "--dropout", "1.0"), "dropout")
    _fails(capsys, _train_args(corpus_file, tmp_path / "run", 2, "--thought-layers", "7"), "thought_layers")
    _fails(capsys, _train_args(corpus_file, tmp_path / "run", 2, "--lr", "-1"), "lr must be")


def test_unknown_preset(capsys, corpus_file, tmp_path):
    _fails(capsys, _train_args(corpus_file, tmp_path / "run", 2, "--preset", "gpt-5"), "unknown preset 'gpt-5'",
           "cpu-small")


def test_bad_config_file(capsys, corpus_file, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"n_embed": 32}}))
    _fails(capsys, _train_args(corpus_file, tmp_path / "run", 2, "--config", cfg), "n_embed")
    cfg.write_text("{oops")
    _fails(capsys, _train_args(corpus_file, tmp_path / "run", 2, "--config", cfg), "not readable JSON")


def test_train_needs_out_and_data(capsys, corpus_file):
    _fails(capsys, ["train", "--data", corpus_file, *TINY_FLAGS], "--out is required")
    _fails(capsys, ["train", "--out", "somewhere", *TINY_FLAGS], "--data is required")


def test_out_dir_that_is_not_a_run_is_refused_unless_forced(capsys, corpus_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    _fails(capsys, _train_args(corpus_file, out), "not empty and is not a run", "--force")
    assert main(_train_args(corpus_file, out, 2, "--force")) == 0
    assert "trained to step 2" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "latest").is_dir()


# ----------------------------------------------------------------------------- checkpoint problems


def test_run_dir_that_is_not_a_checkpoint(capsys, tmp_path):
    _fails(capsys, ["sample", tmp_path, "--max-new-tokens", "5"], "not a run or checkpoint directory")
    _fails(capsys, ["eval", tmp_path / "nope"], "does not exist")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_checkpoint_with_a_missing_file(capsys, run_copy, name):
    (run_copy / "best" / name).unlink()
    _fails(capsys, ["sample", run_copy, "--max-new-tokens", "5"], "missing " + name)


@pytest.mark.parametrize("name, needle", [
    ("model.safetensors", "model.safetensors is corrupt"),
    ("config.json", "config.json is corrupt"),
    ("tokenizer.json", "tokenizer file"),
])
def test_checkpoint_with_a_corrupt_file(capsys, run_copy, name, needle):
    (run_copy / "best" / name).write_bytes(b"\x93garbage{")
    _fails(capsys, ["sample", run_copy, "--max-new-tokens", "5"], needle)
    _fails(capsys, ["eval", run_copy, "--json"], needle)


def test_weights_disagreeing_with_config(capsys, run_copy):
    cfg_path = run_copy / "best" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["n_embd"] = 64
    cfg_path.write_text(json.dumps(cfg))
    _fails(capsys, ["sample", run_copy, "--max-new-tokens", "5"], "weights disagree with config.json")


def test_resume_of_a_non_run(capsys, tmp_path):
    _fails(capsys, ["train", "--resume", tmp_path, "--quiet"], "not a run directory")


# ----------------------------------------------------------------------------- sampling


def _sample(capsys, run, *extra) -> str:
    assert main(["sample", str(run), "--max-new-tokens", "40", "--device", "cpu", *extra]) == 0
    return capsys.readouterr().out


def test_prompt_outside_vocabulary(capsys, tiny_run):
    _fails(capsys, ["sample", tiny_run, "--prompt", "the Zoo", "--max-new-tokens", "5"], "'Z' at 4",
           "--unknown-chars")
    out = _sample(capsys, tiny_run, "--prompt", "the Zoo", "--unknown-chars", "skip", "--json")
    assert json.loads(out)["prompt"] == "the oo"


def test_sample_same_seed_same_text(capsys, tiny_run):
    a = _sample(capsys, tiny_run, "--prompt", "the ", "--seed", "3", "--num-samples", "2")
    b = _sample(capsys, tiny_run, "--prompt", "the ", "--seed", "3", "--num-samples", "2")
    c = _sample(capsys, tiny_run, "--prompt", "the ", "--seed", "4", "--num-samples", "2")
    assert a == b and a != c
    assert a.count("--- sample seed=") == 2 and "seed=3" in a and "seed=4" in a


def test_sample_json_and_cache_parity(capsys, tiny_run):
    a = json.loads(_sample(capsys, tiny_run, "--prompt", "a", "--json", "--max-new-tokens", "15"))
    b = json.loads(_sample(capsys, tiny_run, "--prompt", "a", "--json", "--max-new-tokens", "15", "--no-cache"))
    assert a == b and len(a["samples"][0]["text"]) == 15


def test_sample_stop_string(capsys, tiny_run):
    out = json.loads(_sample(capsys, tiny_run, "--prompt", "the", "--json", "--max-new-tokens", "200", "--stop", "."))
    text = out["samples"][0]["text"]
    assert text.endswith(".") and text.count(".") == 1


def test_bad_sampling_setting(capsys, tiny_run):
    _fails(capsys, ["sample", tiny_run, "--top-p", "1.5"], "top_p")


# ----------------------------------------------------------------------------- eval and resume


def test_eval_json(capsys, tiny_run, corpus_file):
    assert main(["eval", str(tiny_run), "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["objective"] == "ar" and res["bound"] == "exact"
    assert math.isfinite(res["val_loss"]) and 0 < res["val_loss"] < math.log(13)
    assert res["val_bpc"] == pytest.approx(res["val_loss"] / math.log(2))
    assert res["data"] == str(corpus_file)
    # the scored characters: the validation split less its first character
    n = len(corpus_file.read_text(encoding="utf-8"))
    assert res["characters"] == n - int(0.9 * n) - 1


def test_eval_missing_corpus(capsys, run_copy, tmp_path):
    _fails(capsys, ["eval", run_copy, "--data", tmp_path / "gone.txt"], "does not exist")


def test_train_and_resume_from_the_cli(capsys, corpus_file, tmp_path):
    out = tmp_path / "run"
    assert main(_train_args(corpus_file, out, 3)) == 0
    assert "trained to step 3" in capsys.readouterr().out
    _fails(capsys, _train_args(corpus_file, out, 3), "holds a run", "--resume")
    assert main(["train", "--resume", str(out), "--max-steps", "5", "--device", "cpu", "--quiet"]) == 0
    assert "trained to step 5" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
