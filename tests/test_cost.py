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
