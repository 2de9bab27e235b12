"""Batched, per-branch reproducible sampling from Hugging Face causal LMs (DESIGN §4 and §6).

:func:`sample_branches` is the loop shared by :func:`think_hf` (thought branches of a grafted model)
and :func:`mixture_of_thoughts.hf.specialise.think_experts` (branches with expert profiles of an MoE
model): KV cache, one row per branch, tokens drawn by Gumbel-max from each row's own counter-based
noise (``rng.RowNoise``), so a branch regenerated alone with its seed is the same.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..errors import ConfigError
from ..rng import RowNoise
from .graft import thought_noise


def _cache_of(out):
    """The KV cache of an HF output (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


@torch.no_grad()
def sample_branches(model: nn.Module, tokenizer, prompt: str, seeds: list[int], *, max_new_tokens: int = 50,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    min_p: float | None = None, stop: str | None = None, creativity: list[float] | None = None,
                    step_stats=None):
    """Sample one continuation per seed of an HF causal LM, batched, with the KV cache.

    Tokens are drawn by Gumbel-max from each row's own :class:`RowNoise` (seed ``seeds[b]``), so a row
    is reproducible alone. ``step_stats()`` (optional) returns ``{layer: (B, E) row load}`` after each
    forward call, accumulated into the routing trace. A row stops at EOS or once it ends with ``stop``.

    Returns:
        :class:`~mixture_of_thoughts.generation.autoregressive.ThinkResult`.
    """
    from ..generation.autoregressive import Branch, ThinkResult
    from ..generation.sampling import sample_tokens, validate_sampling
    from ..metrics.diversity import distinct_n, self_bleu

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    validate_sampling(temperature, top_k, top_p, min_p)
    n = len(seeds)
    dev = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ConfigError("empty prompt and the tokenizer has no BOS/EOS token to start from: give --prompt")
        ids = [start]
    stop_ids = tokenizer(stop, add_special_tokens=False)["input_ids"] if stop else None
    eos = tokenizer.eos_token_id
    noise = RowNoise(seeds, dev)
    T0 = len(ids)
    tokens = torch.tensor(ids, device=dev).repeat(n, 1)
    logprobs = torch.zeros(n, max_new_tokens, device=dev)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    routing: dict[int, torch.Tensor] = {}
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    model.eval()
    out = model(input_ids=tokens, use_cache=True)
    for i in range(max_new_tokens):
        logits = out.logits[:, -1, :]
        nxt = sample_tokens(logits, noise, T0 + i, temperature, top_k, top_p, min_p)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        logprobs[:, i] = torch.log_softmax(logits.float(), -1).gather(-1, nxt[:, None])[:, 0]
        if i > 0 and step_stats is not None:  # routing of the step that read the previous generated token
            for layer, load in step_stats().items():
                routing[layer] = routing.get(layer, 0) + load.float().cpu() * (~done)[:, None]
        hit = torch.zeros(n, dtype=torch.bool)
        if eos is not None:
            hit |= nxt.cpu() == eos
        if stop_ids and i + 1 >= len(stop_ids):
            hit |= (tokens[:, -len(stop_ids):].cpu() == torch.tensor(stop_ids)).all(-1)
        hit &= ~done
        lengths = torch.where(hit, torch.full_like(lengths, i + 1), lengths)
        done |= hit
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        out = model(input_ids=nxt[:, None], use_cache=True, **{cache_kw: _cache_of(out)})
    res = []
    for b in range(n):  # decoding to strings is per row by nature
        L = int(lengths[b])
        gen = tokens[b, T0:T0 + L].tolist()
        if eos is not None and gen and gen[-1] == eos:
            gen = gen[:-1]
        text = tokenizer.decode(gen, skip_special_tokens=True)
        ll = float(logprobs[b, :L].mean()) if L else 0.0
        route = {layer: [round(float(v), 4) for v in (load[b] / load[b].sum().clamp_min(1e-9))]
                 for layer, load in routing.items()}
        res.append(Branch(text, seeds[b], None if creativity is None else creativity[b], ll, route))
    texts = [br.text for br in res]
    div = {"distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3),
           "self_bleu": self_bleu(texts) if n > 1 else float("nan")}
    return ThinkResult(tokenizer.decode(ids, skip_special_tokens=True), res, div)


def think_hf(model: nn.Module, tokenizer, prompt: str, *, branches: int = 4, seed: int = 0,
             branch_seeds: list[int] | None = None, creativity=None, max_new_tokens: int = 50,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, stop: str | None = None):
    """N thought branches of a grafted HF model in one batched pass with the KV cache.

    Like :func:`mixture_of_thoughts.generation.autoregressive.think`: branch ``i`` owns seed
    ``seed + i`` (token sampling by Gumbel-max and thought noise from its own ``RowNoise``) and a
    creativity (``None`` = the graft's default, a float, a ``(lo, hi)`` spread, or a list), so
    re-running one branch alone (``branch_seeds=[s]``, same creativity) reproduces it.

    Returns:
        :class:`~mixture_of_thoughts.generation.autoregressive.ThinkResult`; each branch's
        ``routing`` gives, per grafted layer, the fraction of its tokens sent to each branch.
    """
    from ..generation.autoregressive import creativity_spread

    seeds = list(branch_seeds) if branch_seeds is not None else [seed + i for i in range(branches)]
    if not seeds:
        raise ConfigError("branches must be >= 1")
    crea = creativity_spread(creativity, len(seeds))
    dev = next(model.parameters()).device
    c = torch.tensor(crea, device=dev) if crea is not None else None
    with thought_noise(model, RowNoise(seeds, dev), c) as st:
        return sample_branches(model, tokenizer, prompt, seeds, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop,
                               creativity=crea if crea is not None else [st.spec.thoughts.creativity] * len(seeds),
                               step_stats=lambda: {k: v["row_load"] for k, v in st.stats.items()})
