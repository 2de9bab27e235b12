"""Batched, per-branch reproducible sampling from Hugging Face causal LMs (DESIGN §4 and §6).

:func:`sample_branches` runs the package's one branch decoder (``generation.decoder``) through a
Hugging Face step function (:func:`hf_step`); it serves :func:`think_hf` (thought branches of a grafted model)
and :func:`mixture_of_thoughts.hf.specialise.think_experts` (branches with expert profiles of an MoE
model): KV cache, one row per branch, tokens drawn by Gumbel-max from each row's own counter-based
noise (``rng.RowNoise``), so a branch regenerated alone with its seed is the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..generation.autoregressive import LOOKAHEAD
from ..generation.decoder import Sampling, Step, StepFn, ThinkResult, branch_plan, collect_branches, decode
from ..rng import RowNoise
from .graft import thought_noise


def cache_of(out):
    """The KV cache of an HF output (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def cache_kwarg(model: nn.Module) -> str:
    """The name ``model.forward`` takes its KV cache under (``cache`` in transformers >= 5.2x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def hf_step(model: nn.Module, routing: Callable[[], dict[int, torch.Tensor]] | None = None, *,
            lean: bool | None = None, precision: str = "float32") -> StepFn:
    """The decoder's step function for a Hugging Face causal LM, with its KV cache.

    The first call reads the prompt, each later call the one new token. ``routing()`` (optional)
    returns ``{layer: (B, E) row load}`` of the forward call just made.

    ``lean``: run :class:`.fast.FastLlama` (static cache, prepacked weights; Llama-family models)
    instead of the model's own forward; ``None`` = where the model allows it (:func:`.fast.fast_blocker`),
    ``True`` = an error names what prevents it, ``False`` = the model's forward (the reference).
    ``precision="bfloat16"`` runs the lean step on bfloat16 copies of the weights (texts differ).
    """
    from .fast import PRECISIONS, fast_blocker, lean_model

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    why = fast_blocker(model) if lean is not False else "the model's own forward was asked for (lean=False)"
    if why is not None and (lean or precision != "float32"):
        raise ConfigError(f"cannot run the lean decode step{' in ' + precision if precision != 'float32' else ''}: "
                          f"{why}")
    if why is None:
        fast = lean_model(model, precision)
        started = False

        def lean_step(tokens: torch.Tensor, length: int) -> Step:
            nonlocal started
            if not started:  # the prompt: a fresh static cache as long as the token buffer
                fast.reset(tokens.shape[0], tokens.shape[1], tokens.device)
                started = True
                logits = fast.forward(tokens[:, :length], 0)
            else:
                logits = fast.forward(tokens[:, length - 1:length], length - 1)
            return Step(logits, routing() if routing is not None else {})

        return lean_step

    cache_kw = cache_kwarg(model)
    past = None

    def step(tokens: torch.Tensor, length: int) -> Step:
        nonlocal past
        if past is None:
            out = model(input_ids=tokens[:, :length], use_cache=True)
        else:
            out = model(input_ids=tokens[:, length - 1:length], use_cache=True, **{cache_kw: past})
        past = cache_of(out)
        return Step(out.logits[:, -1, :], routing() if routing is not None else {})

    return step


def uses_chat(tokenizer, chat: bool | None) -> bool:
    """Whether to wrap prompts in the chat template: ``None`` = when the tokenizer has one."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has:
        raise ConfigError("this tokenizer has no chat template: drop --chat (or use --no-chat)")
    return has if chat is None else bool(chat)


def prompt_ids(tokenizer, prompt: str, chat: bool = False) -> list[int]:
    """The prompt's ids; with ``chat``, the prompt is the user turn of the chat template, followed by
    the assistant's header. Without, no special tokens; an empty prompt starts from BOS (or EOS)."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ConfigError("empty prompt and the tokenizer has no BOS/EOS token to start from: give --prompt")
        ids = [start]
    return ids


def stop_token_ids(tokenizer, model: nn.Module | None = None) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS and the model's generation-config EOS id(s)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)


@torch.no_grad()
def sample_branches(model: nn.Module, tokenizer, prompt: str, seeds: list[int], *, max_new_tokens: int = 50,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    min_p: float | None = None, stop: str | None = None, creativity: list[float] | None = None,
                    step_stats=None, on_token=None, chat: bool | None = False, lean: bool | None = None,
                    precision: str = "float32") -> ThinkResult:
    """Sample one continuation per seed of an HF causal LM, batched, with the KV cache.

    The shared branch decoder (``generation.decoder.decode``) with :func:`hf_step`: tokens are drawn
    by Gumbel-max from each row's own :class:`RowNoise` (seed ``seeds[b]``), so a row is reproducible
    alone. ``step_stats()`` (optional) returns ``{layer: (B, E) row load}`` after each forward call,
    accumulated into the routing trace. A row stops at any of :func:`stop_token_ids` (not part of its
    text) or once its text ends with ``stop`` (kept; matched on text, whatever tokens spelled it).
    ``chat`` wraps the prompt in the tokenizer's chat template (``None``: when it has one).
    ``lean`` and ``precision`` choose the decode step (:func:`hf_step`).

    Returns:
        :class:`~mixture_of_thoughts.generation.decoder.ThinkResult`.
    """
    dev = next(model.parameters()).device
    chat = uses_chat(tokenizer, chat)
    ids = prompt_ids(tokenizer, prompt, chat)
    check_context(model, len(ids), max_new_tokens)
    model.eval()

    def detokenize(t: list[int]) -> str:
        return tokenizer.decode(t, skip_special_tokens=True)

    step = hf_step(model, step_stats, lean=lean, precision=precision)
    gen = decode(step, torch.tensor(ids, device=dev).repeat(len(seeds), 1), max_new_tokens,
                 RowNoise(seeds, dev, lookahead=min(LOOKAHEAD, max_new_tokens)),
                 Sampling(temperature, top_k, top_p, min_p),
                 stop_ids=stop_token_ids(tokenizer, model), stop_strings=[stop] if stop else (),
                 detokenize=detokenize, on_token=on_token)
    return collect_branches(gen, len(ids), detokenize, list(seeds), creativity, prompt if chat else detokenize(ids))


def check_context(model: nn.Module, prompt_len: int, max_new_tokens: int) -> None:
    """A clear error when the prompt and the new tokens do not fit the model's context."""
    n_ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if n_ctx and prompt_len + max_new_tokens > n_ctx:
        raise ConfigError(f"the prompt has {prompt_len} tokens and --max-new-tokens is {max_new_tokens}: more than "
                          f"the model's context of {n_ctx} tokens; shorten the prompt or ask for fewer tokens")


def think_hf(model: nn.Module, tokenizer, prompt: str, *, branches: int = 4, seed: int = 0,
             branch_seeds: list[int] | None = None, creativity=None, max_new_tokens: int = 50,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, stop: str | None = None, on_token=None,
             chat: bool | None = None, noise_tokens: int | None = None, lean: bool | None = None,
             precision: str = "float32") -> ThinkResult:
    """N thought branches of a grafted HF model in one batched pass with the KV cache.

    Like :func:`mixture_of_thoughts.generation.autoregressive.think`: branch ``i`` owns seed
    ``seed + i`` (token sampling by Gumbel-max and thought noise from its own ``RowNoise``) and a
    creativity (``None`` = the graft's default, a float, a ``(lo, hi)`` spread, or a list), so
    re-running one branch alone (``branch_seeds=[s]``, same creativity) reproduces it. An instruct
    model's prompt goes through its chat template (``chat=None``: when the tokenizer has one) and a
    branch stops at any of its end-of-turn ids. ``noise_tokens=m`` keeps the thought noise for the
    prompt and the first ``m`` generated tokens only ("a thought first, then words"). ``lean`` and
    ``precision`` choose the decode step (:func:`hf_step`).

    Returns:
        :class:`~mixture_of_thoughts.generation.decoder.ThinkResult`; each branch's
        ``routing`` gives, per grafted layer, the fraction of its tokens sent to each branch.
    """
    seeds, crea = branch_plan(branches, seed, branch_seeds, creativity)
    dev = next(model.parameters()).device
    c = torch.tensor(crea, device=dev) if crea is not None else None
    until = None
    if noise_tokens is not None:
        if noise_tokens < 0:
            raise ConfigError(f"noise_tokens must be >= 0, got {noise_tokens}")
        until = len(prompt_ids(tokenizer, prompt, uses_chat(tokenizer, chat))) + noise_tokens
    noise = RowNoise(seeds, dev, lookahead=min(LOOKAHEAD, max_new_tokens))
    with thought_noise(model, noise, c, noise_until=until) as st:
        return sample_branches(model, tokenizer, prompt, seeds, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop,
                               creativity=crea if crea is not None else [st.spec.thoughts.creativity] * len(seeds),
                               step_stats=st.row_loads,
                               on_token=on_token, chat=chat, lean=lean, precision=precision)
