"""Typed, validated configuration: the model, its thought layers, and training.

Configs are small dataclasses validated in ``__post_init__``; every error is a
:class:`~mixture_of_thoughts.errors.ConfigError` naming the field and the allowed range. They are
saved as JSON next to the weights and rebuilt from that JSON at load, never from defaults.

Presets follow nanoGPT's character-level recipes so that figures compare:

* ``cpu-small``: nanoGPT's CPU recipe (4 layers, 4 heads, width 128, block 64).
* ``shakespeare-char``: nanoGPT's "baby GPT" (6 layers, 6 heads, width 384, block 256), also
  tiny-diffusion's size.
* ``*-mot``: the same with every FFN replaced by a Mixture-of-Thoughts layer of E = 8 branches,
  k = 2 active, branch hidden 2·d: the same *active* FFN parameters per token as the dense 4·d FFN.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

NOISE_SCALES = ("absolute", "relative")
NOISE_MODES = ("token", "persistent", "orthogonal")
ROUTES = ("token", "sequence")
COMBINERS = ("weighted", "attention")
OBJECTIVES = ("ar", "diffusion")


def _positive(obj, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")


def _in_range(obj, name: str, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    v = getattr(obj, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ConfigError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {v!r}")


@dataclass
class ThoughtConfig:
    """The Mixture-of-Thoughts layer (DESIGN §1).

    Attributes:
        n_branches: E, the number of thought branches (FFN experts).
        k: branches active per token; with ``k_min`` set, the upper end of a range ``k_min..k``.
        k_min: lower end of the active-branch range, drawn per token or per sequence (``route``);
            ``None`` means exactly ``k``.
        branch_hidden: hidden width of each branch; ``None`` means ``2 * n_embd``.
        creativity: default creativity c >= 0 (0 = deterministic top-k MoE).
        route: ``"token"`` (fresh router noise per token) or ``"sequence"`` (one draw per
            sequence and layer, kept across positions and KV-cache steps).
        combine: ``"weighted"`` (sum of branch outputs weighted by router weights) or
            ``"attention"`` (per-token attention over the k selected branch outputs).
        noise_init: initial value of the learnable branch input and hidden noise scales.
        noise_scale: ``"absolute"`` (noise std ``c * s``) or ``"relative"`` (``c * s * RMS``, the RMS
            of each row's branch input, and of its hidden pre-activation, taken before the noise and
            without gradient): relative noise means the same perturbation in every layer and model,
            whatever its activation size. Grafts use ``"relative"``; ``"absolute"`` is the default of
            the char models (and of every checkpoint written before the field existed).
        noise_mode: ``"token"`` (fresh branch noise at every position), ``"persistent"`` (one noise
            vector per row, branch and layer, kept at every position: a fixed direction per branch) or
            ``"orthogonal"`` (persistent directions made mutually orthogonal across the batch's rows).
        balance_coef: coefficient of the Switch-Transformer load-balancing loss.
        z_coef: coefficient of the router z-loss.
        diversity_coef: coefficient of the branch-diversity loss (mean pairwise cosine).
    """

    n_branches: int = 8
    k: int = 2
    k_min: int | None = None
    branch_hidden: int | None = None
    creativity: float = 1.0
    route: str = "token"
    combine: str = "weighted"
    noise_init: float = 0.02
    noise_scale: str = "absolute"
    noise_mode: str = "token"
    balance_coef: float = 0.01
    z_coef: float = 1e-3
    diversity_coef: float = 0.0

    def __post_init__(self):
        _positive(self, "n_branches", "k")
        if self.k > self.n_branches:
            raise ConfigError(f"k must be in [1, n_branches={self.n_branches}], got {self.k}")
        if self.k_min is not None:
            if not isinstance(self.k_min, int) or not 1 <= self.k_min <= self.k:
                raise ConfigError(f"k_min must be an integer in [1, k={self.k}] or null, got {self.k_min!r}")
        if self.branch_hidden is not None:
            _positive(self, "branch_hidden")
        _in_range(self, "creativity", 0.0, float("inf"))
        if self.route not in ROUTES:
            raise ConfigError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.combine not in COMBINERS:
            raise ConfigError(f"combine must be one of {COMBINERS}, got {self.combine!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ConfigError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if self.noise_scale not in NOISE_SCALES:
            raise ConfigError(f"noise_scale must be one of {NOISE_SCALES}, got {self.noise_scale!r}")
        for name in ("noise_init", "balance_coef", "z_coef", "diversity_coef"):
            _in_range(self, name, 0.0, float("inf"))


@dataclass
class ModelConfig:
    """The transformer (DESIGN §2).

    Attributes:
        vocab_size: number of token ids the embedding holds (the diffusion model adds ``[MASK]``).
        block_size: the longest context seen in training.
        n_layer, n_head, n_embd: depth, attention heads, width (``n_embd % n_head == 0``).
        ffn_hidden: hidden width of the dense FFN; ``None`` means ``4 * n_embd``.
        dropout: dropout probability in [0, 1).
        causal: causal attention (language model) or bidirectional (diffusion denoiser).
        time_conditioning: add an embedding of the noise level t (diffusion).
        thought_layers: ``"none"``, ``"all"`` or a list of layer indices with MoT FFNs.
        thoughts: the MoT layer configuration (used where ``thought_layers`` selects).
        rope_base: RoPE frequency base.
        bias: biases in linear layers.
    """

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    ffn_hidden: int | None = None
    dropout: float = 0.0
    causal: bool = True
    time_conditioning: bool = False
    thought_layers: str | list[int] = "none"
    thoughts: ThoughtConfig = field(default_factory=ThoughtConfig)
    rope_base: float = 10000.0
    bias: bool = False

    def __post_init__(self):
        if isinstance(self.thoughts, dict):
            self.thoughts = ThoughtConfig(**self.thoughts)
        _positive(self, "vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"head size n_embd/n_head must be even for RoPE, got {self.n_embd // self.n_head}")
        if self.ffn_hidden is not None:
            _positive(self, "ffn_hidden")
        _in_range(self, "dropout", 0.0, 1.0, hi_open=True)
        _in_range(self, "rope_base", 1.0, float("inf"), lo_open=True)
        tl = self.thought_layers
        if isinstance(tl, str):
            if tl not in ("none", "all"):
                raise ConfigError(f"thought_layers must be 'none', 'all' or a list of layer indices, got {tl!r}")
        else:
            tl = list(tl)
            bad = [i for i in tl if not isinstance(i, int) or not 0 <= i < self.n_layer]
            if bad:
                raise ConfigError(f"thought_layers indices must be in [0, {self.n_layer - 1}], got {bad}")
            self.thought_layers = sorted(set(tl))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def dense_hidden(self) -> int:
        return self.ffn_hidden or 4 * self.n_embd

    @property
    def branch_hidden(self) -> int:
        return self.thoughts.branch_hidden or 2 * self.n_embd

    def thought_layer_indices(self) -> list[int]:
        if self.thought_layers == "none":
            return []
        if self.thought_layers == "all":
            return list(range(self.n_layer))
        return list(self.thought_layers)

    @property
    def has_thoughts(self) -> bool:
        return bool(self.thought_layer_indices())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping (nanoGPT's shakespeare_char defaults).

    Attributes:
        objective: ``"ar"`` (next character) or ``"diffusion"`` (masked diffusion ELBO).
        batch_size: sequences per step per process.
        max_steps: optimisation steps.
        lr, min_lr: peak and final learning rate (cosine decay after linear warm-up).
        warmup_steps: linear warm-up length.
        weight_decay, beta1, beta2: AdamW settings (decay on matrices only).
        grad_clip: gradient-norm clip (0 disables).
        eval_interval: evaluate every this many steps (and at the last step).
        eval_batches: validation batches per evaluation (fixed, the same every time).
        seed: seeds the data order, initialisation and noise.
        diffusion_eval_draws: K, draws of t per validation sequence for the diffusion bpc bound.
    """

    objective: str = "ar"
    batch_size: int = 12
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_batches: int = 20
    seed: int = 1337
    diffusion_eval_draws: int = 4

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        _positive(self, "batch_size", "max_steps", "eval_interval", "eval_batches", "diffusion_eval_draws")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        _in_range(self, "lr", 0.0, 1.0, lo_open=True)
        _in_range(self, "min_lr", 0.0, self.lr)
        _in_range(self, "weight_decay", 0.0, float("inf"))
        _in_range(self, "beta1", 0.0, 1.0, hi_open=True)
        _in_range(self, "beta2", 0.0, 1.0, hi_open=True)
        _in_range(self, "grad_clip", 0.0, float("inf"))
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown train config fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


_MOT = {"thought_layers": "all", "thoughts": {"n_branches": 8, "k": 2}}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu-small": {
        "model": {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0},
        "train": {"batch_size": 12, "max_steps": 2000, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100},
    },
    "shakespeare-char": {
        "model": {"block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.2},
        "train": {"batch_size": 64, "max_steps": 5000, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100},
    },
}
# Game of 24 traces (mot game24 train): one trace is ~100 characters, a block holds one or two
PRESETS["game24"] = {
    "model": {"block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 192, "dropout": 0.0},
    "train": {"batch_size": 32, "max_steps": 2000, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100},
}
# the thought twin: 5.3 M parameters (8 branches, k = 2) at ~0.52 s a step here, so 1600 steps fit 15 minutes
PRESETS["game24-mot"] = {"model": {**PRESETS["game24"]["model"], **_MOT},
                         "train": {**PRESETS["game24"]["train"], "max_steps": 1600}}
PRESETS["cpu-small-mot"] = {"model": {**PRESETS["cpu-small"]["model"], **_MOT},
                            "train": dict(PRESETS["cpu-small"]["train"])}
PRESETS["shakespeare-char-mot"] = {"model": {**PRESETS["shakespeare-char"]["model"], **_MOT},
                                   "train": dict(PRESETS["shakespeare-char"]["train"])}


LAYER_SETS = ("all", "lower", "upper")


def layer_set(spec: str | list[int], n_layer: int) -> list[int]:
    """The decoder layers a ``--layers`` value names, for a model of ``n_layer`` layers: ``all``,
    ``lower`` (the first half), ``upper`` (the second half), ``topN`` (the last N), comma-separated
    indices (``0,2,5``) or a list of indices. The one parser behind every ``--layers`` (``mot think``,
    ``mot graft``, ``mot train-branches``, the comparison's grid); an empty set or an index out of
    range is a :class:`ConfigError`."""
    if isinstance(spec, str):
        spec = spec.strip().lower()
        if spec.startswith("top"):
            n = int(spec[3:]) if spec[3:].isdigit() else 0
            if not 1 <= n <= n_layer:
                raise ConfigError(f"layers {spec!r}: topN needs N in [1, {n_layer}]")
            return list(range(n_layer - n, n_layer))
        if spec == "all":
            return list(range(n_layer))
        if spec == "lower":
            return list(range(n_layer // 2))
        if spec == "upper":
            return list(range(n_layer // 2, n_layer))
        try:
            spec = [int(v) for v in spec.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"layers must be all, lower, upper, topN or comma-separated indices like 0,2,5; "
                              f"got {spec!r}") from None
    idx = sorted({int(i) for i in spec})
    bad = [i for i in idx if not 0 <= i < n_layer]
    if bad or not idx:
        raise ConfigError(f"layers must be all, lower, upper, topN or indices in [0, {n_layer - 1}], got {spec!r}")
    return idx


def preset(name: str) -> dict[str, dict[str, Any]]:
    """A deep copy of preset ``name`` as ``{"model": {...}, "train": {...}}``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return json.loads(json.dumps(PRESETS[name]))


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (``{"model": {...}, "train": {...}}`` or flat model fields)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {p} is not readable JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {p} must hold a JSON object")
    return d
