"""The cost estimator: pure arithmetic checked on hand-computed cases (no torch, no transformers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.hf.cost import (
    PRESETS,
    Hardware,
    estimate,
    full_training_flops,
    graft_flops,
    human,
    parse_count,
)


@pytest.mark.parametrize("s, v", [("124M", 124e6), ("6.74B", 6.74e9), ("10b", 1e10), ("1T", 1e12), ("2k", 2e3),
                                  ("1e9", 1e9), ("1.5G", 1.5e9), (" 7 ", 7.0), (3, 3.0)])
def test_parse_count(s, v):
    assert parse_count(s) == pytest.approx(v, rel=1e-12)


@pytest.mark.parametrize("bad", ["", "12X", "-5M", "0", "M", "1.2.3B"])
def test_parse_count_rejects(bad):
    with pytest.raises(ConfigError, match="--params"):
        parse_count(bad, "--params")


def test_full_training_gpt2_by_hand():
    # 6 * 124e6 * 10e9 = 7.44e18 FLOPs; at 989 TFLOP/s * 0.4 = 3.956e14 FLOP/s -> 18806.9 s = 5.2241 h
    hw = Hardware(989.0, 0.4, 2.5)
    full, graft = estimate(124e6, 10e9, hw, trainable_fraction=0.1, graft_tokens=1e9)
    assert full.flops == pytest.approx(7.44e18)
    assert full.gpu_hours == pytest.approx(7.44e18 / 3.956e14 / 3600)
    assert full.gpu_hours == pytest.approx(5.22413, rel=1e-5)
    assert full.usd == pytest.approx(5.22413 * 2.5, rel=1e-5)
    # grafting: 2*N*D*(1 + 1 + 0.1) = 2 * 124e6 * 1e9 * 2.1 = 5.208e17
    assert graft.flops == pytest.approx(5.208e17)
    assert graft.usd == pytest.approx(5.208e17 / 3.956e14 / 3600 * 2.5)


def test_graft_formula_terms():
    N, D = 1e9, 1e6
    # top-only graft (activation gradients only through the trainable part): 2ND + 4 N_t D
    assert graft_flops(N, D, 0.25, backprop_fraction=0.25) == pytest.approx(2 * N * D + 4 * 0.25 * N * D)
    # everything grafted (default): 4ND + 2 N_t D, and with N_t = N it equals full training
    assert graft_flops(N, D, 0.25) == pytest.approx(4 * N * D + 2 * 0.25 * N * D)
    assert graft_flops(N, D, 1.0) == pytest.approx(full_training_flops(N, D))
    with pytest.raises(ConfigError, match="backprop_fraction"):
        graft_flops(N, D, 0.5, backprop_fraction=0.2)
    with pytest.raises(ConfigError, match="trainable_fraction"):
        graft_flops(N, D, 0.0)


def test_llama7b_preset_and_hardware_checks():
    assert PRESETS == {"gpt2": 124e6, "llama-7b": 6.74e9}
    full, _ = estimate(PRESETS["llama-7b"], 1e12, Hardware(1000.0, 0.5, 2.0))
    # 6 * 6.74e9 * 1e12 = 4.044e22 FLOPs / 5e14 FLOP/s = 8.088e7 s = 22466.7 h -> $44933.3
    assert full.flops == pytest.approx(4.044e22)
    assert full.gpu_hours == pytest.approx(22466.6667, rel=1e-6)
    assert full.usd == pytest.approx(44933.3333, rel=1e-6)
    with pytest.raises(ConfigError, match="mfu"):
        Hardware(989.0, 1.5, 2.5)
    assert human(124e6) == "124M" and human(6.74e9) == "6.74B"


def test_cost_module_imports_neither_torch_nor_transformers():
    code = ("import sys; import mixture_of_thoughts.hf.cost; "
            "print(json.dumps(['transformers' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False]


def test_cli_cost(capsys):
    from mixture_of_thoughts.cli import main

    assert main(["cost", "--params", "124M", "--tokens", "10B", "--gpu-tflops", "989", "--mfu", "0.4",
                 "--gpu-hour-usd", "2.5", "--trainable-fraction", "0.1", "--graft-tokens", "1B", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["estimates"][0]["flops"] == pytest.approx(7.44e18)
    assert d["estimates"][1]["flops"] == pytest.approx(5.208e17)
    assert main(["cost", "--preset", "llama-7b", "--tokens", "1T"]) == 0
    text = capsys.readouterr().out
    assert "6.74B" in text and "4.044e+22" in text
    assert main(["cost", "--params", "12X"]) == 2
    assert "--params" in capsys.readouterr().err


def test_hf_commands_without_transformers_say_what_to_install(tmp_path):
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from mixture_of_thoughts.cli import main\n"
            f"sys.exit(main(['graft', '--model', 'm', '--data', {str(tmp_path / 'd.txt')!r}, '--out', "
            f"{str(tmp_path / 'o')!r}]))")
    (tmp_path / "d.txt").write_text("some text")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2
    assert "pip install 'mixture-of-thoughts[hf]'" in out.stderr


# ----------------------------------------------------------------------------- mot cost --measured

START = {"event": "start", "n_params": 100_000_000, "trainable_params": 25_000_000, "model": "gpt2-demo",
         "device": "cpu", "cpu": "2-core x86_64"}


def _run_dir(tmp_path, records, *, spec=True, name="run"):
    """A synthetic ``mot graft`` output directory: graft.json and metrics.jsonl (records, or raw text)."""
    d = tmp_path / name
    d.mkdir()
    if spec:
        (d / "graft.json").write_text(json.dumps({"model_type": "gpt2", "layers": [0, 1, 2, 3],
                                                  "thoughts": {"n_branches": 4, "k": 2}, "seed": 0, "format": 1}))
    if records is not None:
        text = records if isinstance(records, str) else "".join(json.dumps(r) + "\n" for r in records)
        (d / "metrics.jsonl").write_text(text)
    return d


# 100 steps of 4,000 tokens in 1,800 s; N = 100M, N_t = 25M (N_t/N = 0.25)
RECORDS = [START,
           {"eval": "before", "creativity": 1.0, "nll_per_token": 3.9},
           {"step": 50, "tokens": 200_000, "wall_s": 900.0, "s_per_step": 18.0, "loss": 3.5},
           {"step": 100, "tokens": 400_000, "wall_s": 1800.0, "s_per_step": 18.0, "loss": 3.2},
           {"eval": "after", "creativity": 1.0, "nll_per_token": 3.1}]


def test_read_measured_run(tmp_path):
    from mixture_of_thoughts.hf.cost import read_measured_run

    r = read_measured_run(_run_dir(tmp_path, RECORDS))
    assert (r.steps, r.tokens, r.wall_s, r.loss) == (100, 400_000, 1800.0, 3.2)  # the last step record
    assert (r.n_params, r.trainable_params, r.model, r.device, r.cpu) == (1e8, 2.5e7, "gpt2-demo", "cpu",
                                                                          "2-core x86_64")
    assert (r.model_type, r.layers) == ("gpt2", [0, 1, 2, 3])
    # no graft.json, no start record, wall time from s_per_step, a truncated last line skipped
    text = json.dumps({"step": 10, "tokens": 4000, "s_per_step": 2.5}) + "\n" + '{"step": 11, "tok'
    r = read_measured_run(_run_dir(tmp_path, text, spec=False, name="bare"))
    assert (r.steps, r.tokens, r.wall_s, r.n_params, r.model_type) == (10, 4000, 25.0, None, None)


def test_cli_cost_measured_by_hand(tmp_path, capsys):
    from mixture_of_thoughts.cli import main

    run = _run_dir(tmp_path, RECORDS)
    hw = ["--gpu-tflops", "1000", "--mfu", "0.5", "--gpu-hour-usd", "2"]
    assert main(["cost", "--measured", str(run), "--tokens", "1B", *hw, "--measured-tflops", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params"] == 1e8 and d["trainable_fraction"] == 0.25 and d["tokens"] == 1e9
    # run: 2 * 1e8 * 4e5 * (1 + 1 + 0.25) = 1.8e14 FLOPs in 1800 s = 1e11 FLOP/s; GPU 1000e12 * 0.5 = 5e14, 5000x
    assert d["run_flops"] == pytest.approx(1.8e14)
    assert d["run_flops_per_s"] == pytest.approx(1e11)
    assert d["gpu_flops_per_s"] == pytest.approx(5e14)
    assert d["gpu_over_run"] == pytest.approx(5000)
    # on the run's device: 1800 s = 0.5 h; scaled to 1e9 tokens: 1800 * 1e9 / 4e5 = 4.5e6 s = 1250 h
    assert d["device_hours"] == pytest.approx(0.5)
    assert d["device_hours_scaled"] == pytest.approx(1250)
    graft, full, at_run_mfu = d["estimates"]
    # 1250 h / 5000 = 0.25 GPU-hours = 4.5e17 / 5e14 / 3600; $2/h -> $0.50
    assert graft["flops"] == pytest.approx(4.5e17)
    assert graft["gpu_hours"] == pytest.approx(0.25) and graft["usd"] == pytest.approx(0.5)
    # 6 * 1e8 * 1e9 = 6e17 / 5e14 = 1200 s = 1/3 h -> $2/3
    assert full["flops"] == pytest.approx(6e17)
    assert full["gpu_hours"] == pytest.approx(1 / 3) and full["usd"] == pytest.approx(2 / 3)
    # the run's MFU: 1e11 / 2e12 = 5%; at 5% of 1000 TFLOP/s: 4.5e17 / 5e13 = 9000 s = 2.5 h = 1250 h * 2/1000
    assert d["run_mfu"] == pytest.approx(0.05)
    assert at_run_mfu["gpu_hours"] == pytest.approx(2.5) and at_run_mfu["usd"] == pytest.approx(5.0)
    assert len(d["notes"]) == 3

    # the text table; --tokens defaults to the run's; --params / --trainable-fraction override the run's
    assert main(["cost", "--measured", str(run), *hw]) == 0
    text = capsys.readouterr().out
    assert "100 steps, 400K tokens in 1,800.0 s" in text and "5,000x more" in text
    assert "give --measured-tflops" in text
    assert main(["cost", "--measured", str(run), "--params", "200M", "--trainable-fraction", "0.5",
                 *hw, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tokens"] == 4e5 and d["params_source"] == "--params"
    assert d["run_flops"] == pytest.approx(2 * 2e8 * 4e5 * 2.5)


def _one_line_error(capsys, argv, *needles):
    from mixture_of_thoughts.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mot: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err


def test_cli_cost_measured_errors(tmp_path, capsys):
    _one_line_error(capsys, ["cost", "--measured", str(tmp_path / "nope")], "no such directory", "nope")
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["cost", "--measured", str(tmp_path / "file")], "is a file")
    _one_line_error(capsys, ["cost", "--measured", str(_run_dir(tmp_path, None, name="empty"))],
                    "no metrics.jsonl")
    only_evals = [START, {"eval": "before", "creativity": 1.0, "nll_per_token": 3.9}]
    _one_line_error(capsys, ["cost", "--measured", str(_run_dir(tmp_path, only_evals, name="nostep"))],
                    "no record with 'step'")
    _one_line_error(capsys, ["cost", "--measured", str(_run_dir(tmp_path, [{"step": 5, "wall_s": 3.0}],
                                                                name="notokens"))], "'tokens'")
    _one_line_error(capsys, ["cost", "--measured", str(_run_dir(tmp_path, [{"step": 5, "tokens": 100}],
                                                                name="nowall"))], "'wall_s'", "'s_per_step'")
    _one_line_error(capsys, ["cost", "--measured", str(_run_dir(tmp_path, [{"step": 5, "tokens": "many",
                                                                            "wall_s": 1.0}], name="badtok"))],
                    "'tokens'")
    _one_line_error(capsys, ["cost", "--measured", str(_run_dir(tmp_path, '{"step": 1\n{"step": 2, "tokens": 9, '
                                                                          '"wall_s": 1}\n', name="badline"))],
                    "line 1 is not JSON")
    noparams = _run_dir(tmp_path, [{"step": 5, "tokens": 100, "wall_s": 1.0}], name="noparams")
    _one_line_error(capsys, ["cost", "--measured", str(noparams)], "'n_params'", "--params")
    good = _run_dir(tmp_path, RECORDS, name="good")
    _one_line_error(capsys, ["cost", "--measured", str(good), "--graft-tokens", "1B"], "--graft-tokens")
    _one_line_error(capsys, ["cost", "--params", "124M", "--measured-tflops", "2"], "--measured")
    _one_line_error(capsys, ["cost", "--measured", str(good), "--measured-tflops", "0"], "--measured-tflops")
