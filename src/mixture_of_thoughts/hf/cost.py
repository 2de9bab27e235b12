"""Compute and price of full training versus grafting (DESIGN §6) — pure arithmetic.

This module imports neither ``torch`` nor ``transformers`` (``mot cost`` works without the ``[hf]`` extra).

Formulas (N parameters used per token, D tokens; a multiply-add counts as 2 FLOPs; attention's
context-length term and the embedding lookup are ignored, as in Kaplan et al. 2020, §2.1):

* **Full training**: ``C_full = 6·N·D`` — forward ``2·N·D``, backward ``4·N·D`` (``2·N·D`` for the
  gradients with respect to the activations, ``2·N·D`` for the gradients with respect to the weights).
* **Grafting** (only the MoT parameters, ``N_t = trainable_fraction · N``, are trained, on ``D_g``
  tokens)::

      C_graft = 2·N·D_g                 forward through the whole model
              + 2·N_bp·D_g              activation gradients, from the loss down to the first trainable layer
              + 2·N_t·D_g               weight gradients of the trainable parameters only

  ``N_bp = backprop_fraction · N`` is the part of the model the activation gradients must pass
  through: every layer *above* the lowest trainable one (frozen or not), plus the LM head. Grafting
  every layer (``--layers all``) makes that nearly the whole model, so the honest default is
  ``backprop_fraction = 1``: ``C_graft = 4·N·D_g + 2·N_t·D_g``. The often-quoted
  ``2·N·D_g + 4·N_t·D_g`` is the lower limit where only the trainable layers need activation
  gradients (``N_bp = N_t``); it holds only when the grafted layers sit at the very top.
* **Time and price**: ``GPU-hours = C / (peak_tflops · 1e12 · mfu) / 3600``; ``price = GPU-hours ·
  usd_per_gpu_hour``. ``mfu`` is the model-FLOPs utilisation actually achieved (0.3–0.5 is typical
  for well-tuned dense training).

For a grafted MoT model ``N`` should be the *active* parameters per token (k branches of E), which
is larger than the original model's when k > 1; the figures here take ``N`` as given.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from ..errors import ConfigError

SECONDS_PER_HOUR = 3600.0
TERA = 1e12
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal D ≈ 20·N
_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}

# Parameter counts of well-known models (GPT-2 small as reported by OpenAI; Llama-1 7B exact count).
PRESETS = {"gpt2": 124e6, "llama-7b": 6.74e9}


def parse_count(s: str | float | int, name: str = "value") -> float:
    """``"124M"`` -> 1.24e8. Suffixes K, M, B (or G), T, case-insensitive; plain numbers and 1e9 work too.

    Raises:
        ConfigError: naming ``name`` when ``s`` is not a positive count.
    """
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        v = float(s)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(s))
        if not m:
            raise ConfigError(f"{name} must be a number with an optional K/M/B/T suffix (e.g. 124M, 10B), got {s!r}")
        v = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be > 0, got {s!r}")
    return v


@dataclass
class Hardware:
    """The accelerator: dense peak throughput, achieved utilisation, and rental price."""

    peak_tflops: float = 989.0  # H100 SXM, dense BF16
    mfu: float = 0.4
    usd_per_gpu_hour: float = 2.5

    def __post_init__(self):
        if not self.peak_tflops > 0:
            raise ConfigError(f"gpu_tflops must be > 0, got {self.peak_tflops}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"mfu must be in (0, 1], got {self.mfu}")
        if not self.usd_per_gpu_hour >= 0:
            raise ConfigError(f"gpu_hour_usd must be >= 0, got {self.usd_per_gpu_hour}")

    def gpu_hours(self, flops: float) -> float:
        return flops / (self.peak_tflops * TERA * self.mfu) / SECONDS_PER_HOUR


@dataclass
class Estimate:
    """One line of the comparison: what is trained, on how many tokens, at what cost."""

    name: str
    flops: float
    gpu_hours: float
    usd: float
    tokens: float
    formula: str


def full_training_flops(params: float, tokens: float) -> float:
    """``6·N·D``."""
    return 6.0 * params * tokens


def graft_flops(params: float, tokens: float, trainable_fraction: float, backprop_fraction: float = 1.0) -> float:
    """``2·N·D + 2·N_bp·D + 2·N_t·D`` with ``N_t = trainable_fraction·N``, ``N_bp = backprop_fraction·N``.

    ``backprop_fraction`` must be at least ``trainable_fraction`` (the trainable layers themselves
    need activation gradients).
    """
    if not 0 < trainable_fraction <= 1:
        raise ConfigError(f"trainable_fraction must be in (0, 1], got {trainable_fraction}")
    if not trainable_fraction <= backprop_fraction <= 1:
        raise ConfigError(f"backprop_fraction must be in [trainable_fraction={trainable_fraction}, 1], "
                          f"got {backprop_fraction}")
    return 2.0 * params * tokens * (1.0 + backprop_fraction + trainable_fraction)


def estimate(params: float, tokens: float, hw: Hardware, *, trainable_fraction: float = 0.1,
             graft_tokens: float = 1e9, backprop_fraction: float = 1.0) -> list[Estimate]:
    """Full training on ``tokens`` and grafting on ``graft_tokens``, priced on ``hw``.

    Returns:
        ``[full, graft]`` :class:`Estimate` objects.
    """
    full = full_training_flops(params, tokens)
    graft = graft_flops(params, graft_tokens, trainable_fraction, backprop_fraction)
    return [
        Estimate("full training", full, hw.gpu_hours(full), hw.gpu_hours(full) * hw.usd_per_gpu_hour, tokens,
                 "6*N*D"),
        Estimate("grafting", graft, hw.gpu_hours(graft), hw.gpu_hours(graft) * hw.usd_per_gpu_hour, graft_tokens,
                 f"2*N*D*(1 + {backprop_fraction:g} backprop + {trainable_fraction:g} trainable)"),
    ]


def human(x: float) -> str:
    """``1.24e8`` -> ``124M`` (3 significant digits)."""
    for suf, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suf}"
    return f"{x:.3g}"


def format_table(params: float, hw: Hardware, rows: list[Estimate]) -> str:
    """A plain-text report of :func:`estimate`'s rows."""
    lines = [f"N = {human(params)} parameters; {hw.peak_tflops:g} peak TFLOP/s per GPU at {hw.mfu:.0%} MFU, "
             f"${hw.usd_per_gpu_hour:g}/GPU-hour",
             f"{'':14s} {'tokens':>8s} {'FLOPs':>10s} {'GPU-hours':>11s} {'price USD':>11s}  formula"]
    for r in rows:
        lines.append(f"{r.name:14s} {human(r.tokens):>8s} {r.flops:10.3e} {r.gpu_hours:11,.2f} "
                     f"{r.usd:11,.2f}  {r.formula}")
    return "\n".join(lines)


def to_dict(rows: list[Estimate]) -> list[dict]:
    return [asdict(r) for r in rows]
