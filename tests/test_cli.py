"""The ``mot`` command line: user mistakes end in one ``mot: error:`` line and exit 2; commands work."""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixture_of_thoughts.cli import main

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

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


def test_sample_and_think_compiled(capsys, tiny_run):
    """``--compile`` decodes through the compiled step: the same samples; a wrong use says why."""
    a = json.loads(_sample(capsys, tiny_run, "--prompt", "a", "--json", "--max-new-tokens", "15", "--num-samples", "2"))
    b = json.loads(_sample(capsys, tiny_run, "--prompt", "a", "--json", "--max-new-tokens", "15", "--num-samples", "2",
                           "--compile"))
    assert a == b
    _fails(capsys, ["sample", tiny_run, "--compile", "--no-cache"], "KV cache")
    _fails(capsys, ["think", "--model", "smollm2", "--compile"], "--compile", "run directory")


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


# ----------------------------------------------------------------------------- --help


def _subcommands() -> list[str]:
    from mixture_of_thoughts.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mot ")
    for name in _subcommands():
        assert name in out
    assert "the last 10% of its corpus" in " ".join(out.split())  # a literal %, not a format directive


def test_every_subcommand_has_help():
    assert {"train", "sample", "think", "eval", "diffuse", "renoise", "compare", "graft", "experts", "steer",
            "cost"} <= set(_subcommands())


@pytest.mark.parametrize("name", _subcommands())
def test_subcommand_help(capsys, name):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: mot {name}"), captured.out[:200]
    assert "Traceback" not in captured.err


def test_percent_signs_in_docstrings_are_literal():
    from mixture_of_thoughts.cli import add_command

    def cmd_x(args):
        """Uses 100% of %d things, %(prog)s and %o.

        Second paragraph: 50% and %(prog)s.
        """

    def cmd_y(args):
        """Plain 10% here."""

    p = argparse.ArgumentParser(prog="mot")
    sub = p.add_subparsers()
    add_command(sub, "x", cmd_x)
    add_command(sub, "y", cmd_y)
    assert "Uses 100% of %d things, %(prog)s and %o." in p.format_help()
    assert "Second paragraph: 50% and %(prog)s." in sub.choices["x"].format_help()
    assert "Plain 10% here." in sub.choices["y"].format_help()


# ----------------------------------------------------------------------------- boolean flags


@pytest.mark.parametrize("text, value", [
    ("true", True), ("True", True), ("YES", True), ("on", True), ("1", True),
    ("false", False), ("False", False), ("no", False), ("OFF", False), ("0", False),
])
def test_parse_bool_accepts(text, value):
    from mixture_of_thoughts.cli.common import parse_bool

    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["maybe", "", "2", "tru", "yess", "none"])
def test_parse_bool_rejects(text):
    from mixture_of_thoughts.cli.common import parse_bool

    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        parse_bool(text)


def test_bool_flags_parse_both_ways_and_reject_junk(capsys):
    from mixture_of_thoughts.cli import build_parser

    p = build_parser()
    assert p.parse_args(["train", "--bias", "Off"]).bias is False
    assert p.parse_args(["train", "--bias", "ON"]).bias is True
    assert p.parse_args(["train", "--causal", "no"]).causal is False
    assert p.parse_args(["train"]).bias is None  # not given: the preset decides
    with pytest.raises(SystemExit) as e:
        main(["train", "--bias", "maybe", "--data", "x", "--out", "y"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "mot train: error: argument --bias" in err and "'maybe'" in err


# ----------------------------------------------------------------------------- --data, one resolution


def _named_corpus(monkeypatch, tmp_path, text: str):
    """MOT_DATA_DIR holding a 'shakespeare' corpus, and a working directory without a file of that name."""
    d = tmp_path / "datadir"
    d.mkdir()
    (d / "tinyshakespeare.txt").write_text(text, encoding="utf-8")
    monkeypatch.setenv("MOT_DATA_DIR", str(d))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def test_read_corpus_resolves_names_like_train(monkeypatch, tmp_path, corpus_text):
    from mixture_of_thoughts.cli.common import read_corpus
    from mixture_of_thoughts.data.corpus import load_corpus

    _named_corpus(monkeypatch, tmp_path, corpus_text)
    assert read_corpus("shakespeare") == corpus_text == load_corpus("shakespeare")
    (tmp_path / "cwd" / "shakespeare").write_text("a file that happens to be called shakespeare")
    assert read_corpus("shakespeare") == corpus_text  # the name wins, as for mot train
    p = tmp_path / "mine.txt"
    p.write_text("my own text\n", encoding="utf-8")
    assert read_corpus(str(p)) == "my own text\n"


def test_graft_resolves_data_names(monkeypatch, tmp_path, corpus_text, capsys):
    """``mot graft --data shakespeare`` reads the named corpus (not a file called 'shakespeare')."""
    from mixture_of_thoughts.cli import hf as cli_hf
    from mixture_of_thoughts.errors import ConfigError

    _named_corpus(monkeypatch, tmp_path, corpus_text)
    seen = []
    real = cli_hf.read_corpus

    def spy(data):
        seen.append(real(data))
        return seen[-1]

    def stop(name, device=None):
        raise ConfigError("stopped before loading the model")

    from mixture_of_thoughts.hf import registry

    monkeypatch.setattr(cli_hf, "read_corpus", spy)
    monkeypatch.setattr(registry, "load_pretrained", stop)
    _fails(capsys, ["graft", "--model", "gpt2", "--data", "shakespeare", "--out", tmp_path / "o"], "stopped before")
    assert seen == [corpus_text]


@pytest.mark.parametrize("make, needle", [
    (lambda tmp: tmp / "nope.txt", "does not exist"),
    (lambda tmp: tmp, "not a regular file"),
])
def test_graft_bad_data_is_a_one_line_error(capsys, tmp_path, make, needle):
    _fails(capsys, ["graft", "--model", "gpt2", "--data", make(tmp_path), "--out", tmp_path / "o"], needle)


def test_graft_out_that_is_a_file(capsys, tmp_path, corpus_file):
    f = tmp_path / "a-file"
    f.write_text("x")
    _fails(capsys, ["graft", "--model", "gpt2", "--data", corpus_file, "--out", f], "is a file")


def test_steer_bad_profile_delta(capsys):
    _fails(capsys, ["steer", "some-model", "--prompt", "x", "--profile", "boost=1;delta=lots"], "delta takes a number")


def test_graft_named_corpus_then_think_end_to_end(monkeypatch, tmp_path, corpus_text, capsys):
    """A tiny random Llama grafted on --data shakespeare, then ``mot think`` on the result (no download)."""
    pytest.importorskip("transformers")
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models

    _named_corpus(monkeypatch, tmp_path, corpus_text)
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(sorted(set(corpus_text)))}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tk.decoder = decoders.Fuse()
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    base = tmp_path / "base"
    tf.LlamaForCausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    out = tmp_path / "grafted"
    assert main(["graft", "--model", str(base), "--data", "shakespeare", "--steps", "2", "--batch-size", "2",
                 "--block-size", "16", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out  # one token per character: 90% trained on, 10% held out
    n_train = int(len(corpus_text) * 0.9)
    assert f"{n_train:,} training tokens, {len(corpus_text) - n_train:,} held out" in printed
    assert main(["think", str(out), "--prompt", "the ", "--branches", "2", "--max-new-tokens", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["branches"]) == 2


# ----------------------------------------------------------------------------- a closed stdout


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="needs Linux's F_SETPIPE_SZ to shrink the pipe")
def test_output_into_a_closed_pipe_exits_quietly():
    """``mot think --json | head -c 10``: no traceback, no 'Exception ignored', exit status 0."""
    r, w = os.pipe()
    try:
        # a pipe smaller than the output, so that the writer is still writing when the reader leaves
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        proc = subprocess.Popen([sys.executable, "-m", "mixture_of_thoughts.cli", "think", "--json",
                                 "--max-new-tokens", "50", "--branches", "16"], stdout=w, stderr=subprocess.PIPE)
    finally:
        os.close(w)
    try:
        head = os.read(r, 10)  # at most 10 bytes, like head -c 10
    finally:
        os.close(r)
    _, err = proc.communicate(timeout=600)
    err = err.decode(errors="replace")
    assert head.startswith(b"{")
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 0, err


# ----------------------------------------------------------------------------- code shape


def test_no_function_in_the_cli_is_longer_than_60_lines():
    import mixture_of_thoughts.cli as cli

    long = []
    for f in sorted(Path(cli.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{f.name}:{node.name} ({n} lines)")
    assert not long, long
