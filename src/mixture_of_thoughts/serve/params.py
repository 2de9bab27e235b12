"""The playground's requests: parsed from JSON and checked before anything is queued.

Each endpoint takes a JSON object; :func:`think_request`, :func:`diffuse_request` and
:func:`renoise_request` turn it into a frozen dataclass or raise a :class:`~mixture_of_thoughts.errors.ConfigError`
(a ``DataError`` for a prompt the vocabulary cannot encode) whose one-line message the page shows.
Checking here, in the request handler, means a bad request costs no queue slot and gets a plain 400
instead of a stream that fails later. The limits a client may ask for are the server's
:class:`Limits`, set on the command line, never by a request.

Field names follow ``mot think`` / ``mot diffuse`` / ``mot renoise`` (``max_tokens`` is
``--max-new-tokens``), and so do the meanings: branch ``i`` uses seed ``seed + i``; creativity is one
value, ``LO:HI`` spread over the branches, or a list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..generation.diffusion import SAMPLERS
from ..generation.sampling import validate_sampling

MAX_SEED = 2**31 - 1  # seeds are stored in int64 counters; keep them well inside


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``mot serve`` flags)."""

    max_branches: int = 16
    max_tokens: int = 1000  # new tokens (think) or total characters (diffuse, renoise)
    max_prompt: int = 2000  # characters of a prompt or of a text to re-noise
    max_steps: int = 512  # diffusion steps per window


@dataclass(frozen=True)
class ThinkRequest:
    model: str
    prompt: str
    branches: int
    seed: int
    creativity: Any  # None, float, (lo, hi) or list (see generation.decoder.creativity_spread)
    temperature: float
    max_tokens: int
    top_k: int | None
    branch_seeds: list[int] | None  # one seed (and one creativity) to regenerate a branch alone


@dataclass(frozen=True)
class Denoising:
    """How a diffusion request denoises: the keyword arguments of the diffusion samplers."""

    sampler: str
    steps: int | None
    threshold: float
    temperature: float
    creativity: float | None


@dataclass(frozen=True)
class DiffuseRequest:
    model: str
    prompt: str
    length: int
    branches: int
    seed: int
    keep: int | None
    denoising: Denoising


@dataclass(frozen=True)
class RenoiseRequest:
    model: str
    text: str
    noise: float
    variants: int
    seed: int
    denoising: Denoising


# ----------------------------------------------------------------------------- field readers

def _obj(body) -> dict:
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


def _int(d: dict, name: str, default: int | None, lo: int, hi: int, hint: str = "") -> int | None:
    v = d.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not v.is_integer():
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}]{hint}, got {v}")
    return v


def _float(d: dict, name: str, default: float | None, lo: float, hi: float) -> float | None:
    v = d.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {v}")
    return float(v)


def _text(d: dict, name: str, limits: Limits) -> str:
    v = d.get(name, "")
    if not isinstance(v, str):
        raise ConfigError(f"{name} must be a string")
    if not v:
        raise ConfigError(f"the {name} is empty: type some text")
    if len(v) > limits.max_prompt:
        raise ConfigError(f"the {name} has {len(v)} characters, more than this server's limit of {limits.max_prompt}")
    return v


def _model(d: dict) -> str:
    v = d.get("model")
    if not isinstance(v, str) or not v:
        raise ConfigError("model must be the name of one of the served models (see /api/models)")
    return v


def parse_creativity(v):
    """Creativity as ``mot think --creativity`` takes it, from JSON: null, a number, ``"LO:HI"``,
    ``"a,b,c"``, a numeric string, or a list of numbers. Returns None, a float, a ``(lo, hi)`` tuple
    or a list."""
    if v is None or v == "":
        return None
    try:
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, (int, float)):
            out = float(v)
        elif isinstance(v, list):
            out = [float(x) for x in v if not isinstance(x, bool)]
            if len(out) != len(v):
                raise ValueError
        elif isinstance(v, str) and ":" in v:
            lo, hi = v.split(":")
            out = (float(lo), float(hi))
        elif isinstance(v, str) and "," in v:
            out = [float(x) for x in v.split(",")]
        elif isinstance(v, str):
            out = float(v)
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"creativity must be a number, LO:HI or a comma-separated list, got {v!r}") from None
    vals = out if isinstance(out, (list, tuple)) else [out]
    if any(not math.isfinite(x) or x < 0 for x in vals):
        raise ConfigError(f"creativity must be finite and >= 0, got {v!r}")
    return out


def _single_creativity(d: dict):
    c = parse_creativity(d.get("creativity"))
    if c is not None and not isinstance(c, float):
        raise ConfigError("creativity for a diffusion model takes a single number")
    return c


def _denoising(d: dict, limits: Limits) -> Denoising:
    sampler = d.get("sampler", "confidence")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    steps = _int(d, "steps", None, 1, limits.max_steps)
    threshold = _float(d, "threshold", 0.9, 1e-6, 1.0)
    return Denoising(sampler, steps, threshold, _float(d, "temperature", 1.0, 0.0, 100.0), _single_creativity(d))


# ----------------------------------------------------------------------------- requests

def think_request(body, limits: Limits) -> ThinkRequest:
    """A checked :class:`ThinkRequest` from a JSON body (``ConfigError`` naming the first bad field)."""
    d = _obj(body)
    branch_seeds = d.get("branch_seeds")
    if branch_seeds is not None:
        if (not isinstance(branch_seeds, list) or len(branch_seeds) != 1 or isinstance(branch_seeds[0], bool)
                or not isinstance(branch_seeds[0], int) or not 0 <= branch_seeds[0] <= MAX_SEED):
            raise ConfigError(f"branch_seeds must be a list of one seed in [0, {MAX_SEED}] (regenerate one branch)")
    branches = _int(d, "branches", 4, 1, limits.max_branches, " (this server's maximum)")
    seed = _int(d, "seed", 0, 0, MAX_SEED - limits.max_branches)
    temperature = _float(d, "temperature", 1.0, 0.0, 100.0)
    top_k = _int(d, "top_k", None, 1, 1_000_000)
    validate_sampling(temperature, top_k, None, None)
    creativity = parse_creativity(d.get("creativity"))
    n = 1 if branch_seeds else branches
    if isinstance(creativity, list) and len(creativity) != n:
        raise ConfigError(f"creativity list has {len(creativity)} values for {n} branches")
    return ThinkRequest(model=_model(d), prompt=_text(d, "prompt", limits), branches=branches, seed=seed,
                        creativity=creativity, temperature=temperature,
                        max_tokens=_int(d, "max_tokens", 200, 1, limits.max_tokens, " (this server's maximum)"),
                        top_k=top_k, branch_seeds=branch_seeds)


def diffuse_request(body, limits: Limits) -> DiffuseRequest:
    """A checked :class:`DiffuseRequest` (``length`` counts the prompt's characters too, as ``mot diffuse``)."""
    d = _obj(body)
    denoising = _denoising(d, limits)
    branches = _int(d, "branches", 4, 1, limits.max_branches, " (this server's maximum)")
    keep = _int(d, "keep", None, 1, limits.max_branches)
    return DiffuseRequest(model=_model(d), prompt=_text(d, "prompt", limits),
                          length=_int(d, "length", 128, 1, limits.max_tokens, " (this server's maximum)"),
                          branches=branches, seed=_int(d, "seed", 0, 0, MAX_SEED - 4 * limits.max_branches),
                          keep=keep, denoising=denoising)


def renoise_request(body, limits: Limits) -> RenoiseRequest:
    """A checked :class:`RenoiseRequest` (``noise``: the fraction of characters masked again, in [0, 1])."""
    d = _obj(body)
    denoising = _denoising(d, limits)
    text = _text(d, "text", limits)
    if len(text) > limits.max_tokens:
        raise ConfigError(f"the text has {len(text)} characters, more than this server's limit of {limits.max_tokens}")
    return RenoiseRequest(model=_model(d), text=text, noise=_float(d, "noise", 0.3, 0.0, 1.0),
                          variants=_int(d, "variants", 4, 1, limits.max_branches, " (this server's maximum)"),
                          seed=_int(d, "seed", 0, 0, MAX_SEED - limits.max_branches), denoising=denoising)
