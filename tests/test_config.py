"""Config validation (errors name the field), JSON round trips and presets."""

from __future__ import annotations

import json

import pytest

from mixture_of_thoughts.config import (
    PRESETS,
    ModelConfig,
    ThoughtConfig,
    TrainConfig,
    load_json,
    preset,
)
from mixture_of_thoughts.errors import ConfigError, MotError

TINY = dict(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_config_error_is_a_value_error_and_a_user_error():
    with pytest.raises(ValueError):
        ModelConfig(**{**TINY, "n_embd": 30, "n_head": 4})
    assert issubclass(ConfigError, MotError)


def test_n_embd_not_divisible_by_n_head_names_both():
    with pytest.raises(ConfigError, match=r"n_embd \(30\).*n_head \(4\)"):
        ModelConfig(**{**TINY, "n_embd": 30, "n_head": 4})


def test_odd_head_size_is_refused_for_rope():
    with pytest.raises(ConfigError, match="head size"):
        ModelConfig(**{**TINY, "n_embd": 30, "n_head": 2})  # head size 15


@pytest.mark.parametrize("name", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "ffn_hidden"])
@pytest.mark.parametrize("value", [-1, 0, 2.5, True])
def test_non_positive_or_non_integer_sizes_name_the_field(name, value):
    with pytest.raises(ConfigError, match=rf"^{name} must be a positive integer"):
        ModelConfig(**{**TINY, name: value})


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_dropout_out_of_range(value):
    with pytest.raises(ConfigError, match=r"dropout must be in \[0.0, 1.0\)"):
        ModelConfig(**{**TINY, "dropout": value})
    assert ModelConfig(**{**TINY, "dropout": 0.99}).dropout == 0.99


@pytest.mark.parametrize("layers", ["some", [2], [-1], [0, "1"]])
def test_bad_thought_layers(layers):
    with pytest.raises(ConfigError, match="thought_layers"):
        ModelConfig(**{**TINY, "thought_layers": layers})


def test_thought_layers_are_normalised_and_selected():
    cfg = ModelConfig(**{**TINY, "thought_layers": [1, 0, 1]})
    assert cfg.thought_layers == [0, 1]
    assert cfg.thought_layer_indices() == [0, 1] and cfg.has_thoughts
    assert ModelConfig(**{**TINY, "thought_layers": "all"}).thought_layer_indices() == [0, 1]
    dense = ModelConfig(**TINY)
    assert dense.thought_layer_indices() == [] and not dense.has_thoughts


@pytest.mark.parametrize("changes, field", [
    ({"k": 9}, "k"),
    ({"k": 0}, "k"),
    ({"n_branches": 0}, "n_branches"),
    ({"k_min": 3}, "k_min"),
    ({"route": "word"}, "route"),
    ({"combine": "sum"}, "combine"),
    ({"creativity": -0.5}, "creativity"),
    ({"balance_coef": -1.0}, "balance_coef"),
])
def test_thought_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"^{field} "):
        ThoughtConfig(**changes)


@pytest.mark.parametrize("changes, field", [
    ({"objective": "gan"}, "objective"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0.0}, "lr"),
    ({"lr": 1e-3, "min_lr": 1e-2}, "min_lr"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"beta2": 1.0}, "beta2"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"seed": 1.5}, "seed"),
])
def test_train_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"^{field} "):
        TrainConfig(**changes)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="unknown preset 'tiny-gpt'") as e:
        preset("tiny-gpt")
    for name in PRESETS:
        assert name in str(e.value)


def test_unknown_field_in_from_dict_is_named():
    with pytest.raises(ConfigError, match="n_embed"):
        ModelConfig.from_dict({**TINY, "n_embed": 32})
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_model_config_json_round_trip():
    cfg = ModelConfig(**{**TINY, "thought_layers": [1], "dropout": 0.1, "rope_base": 500.0,
                         "thoughts": ThoughtConfig(n_branches=4, k=2, k_min=1, route="sequence", combine="attention")})
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.thoughts, ThoughtConfig) and back.thoughts.route == "sequence"


def test_train_config_json_round_trip():
    cfg = TrainConfig(objective="diffusion", batch_size=3, max_steps=7, lr=2e-3, min_lr=1e-4, seed=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.__dict__))) == cfg


def test_nested_thought_dict_is_validated():
    with pytest.raises(ConfigError, match="^k "):
        ModelConfig.from_dict({**TINY, "thoughts": {"n_branches": 2, "k": 3}})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_valid_configs(name):
    d = preset(name)
    m, t = ModelConfig.from_dict(d["model"]), TrainConfig.from_dict(d["train"])
    assert m.has_thoughts == name.endswith("-mot")
    assert t.min_lr <= t.lr


def test_preset_values_follow_nanogpt():
    m = ModelConfig.from_dict(preset("shakespeare-char")["model"])
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    m = ModelConfig.from_dict(preset("cpu-small")["model"])
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (4, 4, 128, 64)
    mot = ModelConfig.from_dict(preset("cpu-small-mot")["model"])
    assert (mot.thoughts.n_branches, mot.thoughts.k, mot.branch_hidden) == (8, 2, 2 * mot.n_embd)
    # k active branches of hidden 2d hold as many parameters per token as the dense 4d FFN
    assert mot.thoughts.k * mot.branch_hidden == m.dense_hidden


def test_preset_returns_a_copy():
    d = preset("cpu-small")
    d["model"]["n_layer"] = 99
    assert preset("cpu-small")["model"]["n_layer"] == 4


def test_load_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_json(bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON object"):
        load_json(arr)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"model": {"n_layer": 2}}), encoding="utf-8")
    assert load_json(ok) == {"model": {"n_layer": 2}}
