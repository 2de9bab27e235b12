"""Batched autoregressive generation with the KV cache, and ``think``: N thought branches at once.

``think`` runs all branches of one prompt in one batched pass. Branch ``i`` owns the seed
``seed + i`` (or an explicit seed) and a creativity; every random number it sees (token sampling,
router Gumbel noise, branch noise) comes from its own counter-based stream, so regenerating it
alone with ``branch_seeds=[s]`` and the same creativity gives the same text on the same device and
dtype (up to a flip between two logits within rounding error of each other).
"""

from __future__ import annotations

import logging

import torch

from ..data.tokenizer import CharTokenizer
from ..errors import ConfigError, DataError
from ..models.decode import CompiledDecoder
from ..models.transformer import Transformer
from ..rng import RowNoise
from .decoder import (  # noqa: F401  (Branch, creativity_spread: re-exported for the own-model API)
    Branch,
    Generation,
    Sampling,
    Step,
    StepFn,
    ThinkResult,
    branch_plan,
    collect_branches,
    creativity_spread,
    decode,
)

log = logging.getLogger(__name__)
EMPTY_PROMPT = "\n"  # an empty prompt starts from a newline, as nanoGPT's sample.py does
LOOKAHEAD = 16  # positions of noise drawn at once while decoding (see rng.RowNoise)


def prepare_prompt(tokenizer: CharTokenizer, prompt: str, block_size: int | None, unknown: str = "error") -> list[int]:
    """Encode ``prompt``: an empty one becomes a newline; one longer than ``block_size`` (when given)
    keeps its last block."""
    ids = tokenizer.encode(prompt, unknown=unknown)
    if not ids:
        ids = tokenizer.encode(EMPTY_PROMPT, unknown="replace")
    if block_size is not None and len(ids) > block_size:
        log.warning("prompt has %d characters, more than the block size %d: keeping the last %d",
                    len(ids), block_size, block_size)
        ids = ids[-block_size:]
    return ids


def transformer_step(model: Transformer, noise: RowNoise, *, creativity: float | torch.Tensor | None = None,
                     route: str | None = None, use_cache: bool = True, compile: bool = False) -> StepFn:
    """The decoder's step function for a causal :class:`Transformer`.

    With the KV cache the first call reads the prompt and each later call the one new token; without
    it every call recomputes the last ``block_size`` tokens (the reference path) through a throw-away
    cache that starts at the window's absolute position, so position-keyed noise matches exactly.
    ``compile`` runs the one-token steps through :class:`~mixture_of_thoughts.models.decode.CompiledDecoder`.
    """
    if compile and not use_cache:
        raise ConfigError("compile needs the KV cache (drop --no-cache)")
    block = model.config.block_size
    cache = model.new_cache(noise.batch_size) if use_cache else None
    fast = CompiledDecoder(model) if compile else None
    kw = dict(noise=noise, creativity=creativity, route=route, last_only=True, aux=False)

    def step(tokens: torch.Tensor, length: int) -> Step:
        if fast is not None and cache.length > 0:
            out = fast(tokens[:, length - 1:length], cache, noise=noise, creativity=creativity, route=route)
        elif use_cache:
            ids = tokens[:, :length] if cache.length == 0 else tokens[:, length - 1:length]
            out = model(ids, cache=cache, **kw)
        else:
            lo = max(0, length - block)
            window_cache = model.new_cache(tokens.shape[0], start=lo) if lo > 0 else None
            out = model(tokens[:, lo:length], cache=window_cache, **kw)
        return Step(out.logits[:, -1, :], {layer: s["row_load"] for layer, s in out.stats.items()})

    return step


def generate(model: Transformer, prompt_ids: torch.Tensor, max_new_tokens: int, noise: RowNoise, *,
             temperature: float | torch.Tensor = 1.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, creativity: float | torch.Tensor | None = None, route: str | None = None,
             use_cache: bool = True, compile: bool = False, stop_ids: list[int] | None = None,
             on_token=None) -> Generation:
    """Generate ``max_new_tokens`` per row with a causal :class:`Transformer` (the branch decoder).

    Args:
        model: a causal model (eval mode is set here).
        prompt_ids: (B, T0) prompt ids, ``T0 <= block_size``.
        noise: per-row noise (``RowNoise(seeds)``) driving sampling and the thought layers.
        temperature: float or (B,) tensor; 0 is greedy.
        creativity: thought-layer creativity: None (config default), float, or (B,) tensor.
        route: thought-layer routing for this call (``"token"`` / ``"sequence"``; None = configured).
        use_cache: use the KV cache; ``False`` recomputes the last block at every step (reference).
        compile: decode one token at a time through a TorchInductor-compiled step
            (:class:`~mixture_of_thoughts.models.decode.CompiledDecoder`): several times faster for
            long generations, after a one-off compile; the same texts.
        stop_ids: a stop string's ids; a row stops once its generated text ends with it.
        on_token: see :func:`~mixture_of_thoughts.generation.decoder.decode`.
    Returns:
        :class:`~mixture_of_thoughts.generation.decoder.Generation`.
    """
    if not model.config.causal:
        raise ConfigError("generate needs a causal (autoregressive) model; use the diffusion samplers "
                          "for a diffusion model")
    model.eval()
    prompt_ids = prompt_ids.to(model.wte.weight.device)
    if not noise.lookahead:  # one position per step: draw the noise LOOKAHEAD positions at a time
        noise = noise.with_lookahead(min(LOOKAHEAD, max_new_tokens))
    step = transformer_step(model, noise, creativity=creativity, route=route, use_cache=use_cache, compile=compile)
    return decode(step, prompt_ids, max_new_tokens, noise, Sampling(temperature, top_k, top_p, min_p),
                  stop_sequences=[stop_ids] if stop_ids else (), on_token=on_token)


def think(model: Transformer, tokenizer: CharTokenizer, prompt: str, *, branches: int = 8, seed: int = 0,
          branch_seeds: list[int] | None = None, creativity=None, max_new_tokens: int = 200,
          temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
          min_p: float | None = None, stop: str | None = None, unknown_chars: str = "error",
          use_cache: bool = True, compile: bool = False, route: str | None = None, on_token=None) -> ThinkResult:
    """N thought branches for one prompt in one batched pass.

    Args:
        model, tokenizer: a causal model (dense or MoT) and its tokenizer.
        prompt: the text to continue (see :func:`prepare_prompt` for empty and long prompts).
        branches: N; ignored when ``branch_seeds`` is given.
        seed: branch ``i`` gets seed ``seed + i``.
        branch_seeds: explicit per-branch seeds (e.g. one seed to regenerate one branch alone).
        creativity: None (the model's default), a float, ``(lo, hi)`` spread linearly over the
            branches, or one value per branch. Dense models ignore it (their branches differ by
            sampling only).
        max_new_tokens, temperature, top_k, top_p, min_p, stop: sampling settings.
        route: thought-layer routing for this call (None = each layer's configured routing).
        use_cache, compile: see :func:`generate`.
        on_token: called after each decoding step (see ``decoder.decode``).
    Returns:
        :class:`ThinkResult` with per-branch text, seed, creativity, mean log-likelihood and
        routing trace, and the set's diversity (distinct-2, distinct-3, self-BLEU).
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    seeds, crea = branch_plan(branches, seed, branch_seeds, creativity)
    n = len(seeds)
    ids = prepare_prompt(tokenizer, prompt, model.config.block_size, unknown_chars)
    dev = model.wte.weight.device
    stop_ids = None
    if stop:
        try:
            stop_ids = tokenizer.encode(stop)
        except DataError as e:
            raise DataError(f"stop string: {e}") from None
    c = torch.tensor(crea, device=dev) if crea is not None else None
    gen = generate(model, torch.tensor(ids, device=dev).repeat(n, 1), max_new_tokens, RowNoise(seeds, dev),
                   temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, creativity=c, route=route,
                   use_cache=use_cache, compile=compile, stop_ids=stop_ids, on_token=on_token)
    branch_crea = crea if crea is not None and model.config.has_thoughts else None
    return collect_branches(gen, len(ids), tokenizer.decode, seeds, branch_crea, tokenizer.decode(ids))
