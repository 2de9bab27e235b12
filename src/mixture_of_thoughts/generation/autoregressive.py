"""Batched autoregressive generation with the KV cache, and ``think``: N thought branches at once.

``think`` runs all branches of one prompt in one batched pass. Branch ``i`` owns the seed
``seed + i`` (or an explicit seed) and a creativity; every random number it sees (token sampling,
router Gumbel noise, branch noise) comes from its own counter-based stream, so regenerating it
alone with ``branch_seeds=[s]`` and the same creativity gives the same text on the same device and
dtype (up to a flip between two logits within rounding error of each other).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch

from ..data.tokenizer import CharTokenizer
from ..errors import ConfigError, DataError
from ..models.transformer import Transformer
from ..rng import RowNoise
from .sampling import sample_tokens, validate_sampling

log = logging.getLogger(__name__)
EMPTY_PROMPT = "\n"  # an empty prompt starts from a newline, as nanoGPT's sample.py does


@dataclass
class Generation:
    """Raw result of :func:`generate`.

    Attributes:
        tokens: (B, T_prompt + n) ids.
        logprobs: (B, n) log-probability of each generated token under the model (temperature 1, no filter).
        lengths: (B,) generated tokens kept per row (shorter when a stop string ended the row).
        routing: {layer: (B, E)} fraction of each row's generated tokens sent to each branch.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    routing: dict[int, torch.Tensor] = field(default_factory=dict)


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


@torch.no_grad()
def generate(model: Transformer, prompt_ids: torch.Tensor, max_new_tokens: int, noise: RowNoise, *,
             temperature: float | torch.Tensor = 1.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, creativity: float | torch.Tensor | None = None,
             use_cache: bool = True, stop_ids: list[int] | None = None) -> Generation:
    """Generate ``max_new_tokens`` per row.

    Args:
        model: a causal :class:`Transformer` (eval mode is set here).
        prompt_ids: (B, T0) prompt ids, ``T0 <= block_size``.
        noise: per-row noise (``RowNoise(seeds)``) driving sampling and the thought layers.
        temperature: float or (B,) tensor; 0 is greedy.
        creativity: thought-layer creativity: None (config default), float, or (B,) tensor.
        use_cache: use the KV cache; ``False`` recomputes the last block at every step (reference).
        stop_ids: a stop string's ids; a row stops once its generated text ends with it.
    Returns:
        :class:`Generation`.
    """
    if not model.config.causal:
        raise ConfigError("generate needs a causal (autoregressive) model; use the diffusion samplers "
                          "for a diffusion model")
    validate_sampling(float(torch.as_tensor(temperature).min()), top_k, top_p, min_p)
    model.eval()
    B, T0 = prompt_ids.shape
    block = model.config.block_size
    dev = model.wte.weight.device
    tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=dev)
    tokens[:, :T0] = prompt_ids.to(dev)
    logprobs = torch.zeros(B, max_new_tokens, device=dev)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    routing: dict[int, torch.Tensor] = {}
    stop = torch.tensor(stop_ids, device=dev) if stop_ids else None

    cache = model.new_cache(B) if use_cache else None
    out = model(tokens[:, :T0], cache=cache, noise=noise, creativity=creativity, last_only=True)
    for i in range(max_new_tokens):
        pos = T0 + i
        logits = out.logits[:, -1, :]
        nxt = sample_tokens(logits, noise, pos, temperature, top_k, top_p, min_p)
        tokens[:, pos] = nxt
        logprobs[:, i] = torch.log_softmax(logits.float(), -1).gather(-1, nxt[:, None])[:, 0]
        if i > 0:  # routing of the step that read the previous generated token
            for layer, s in out.stats.items():
                routing[layer] = routing.get(layer, 0) + s["row_load"].float() * (~done)[:, None]
        if stop is not None and pos + 1 - T0 >= len(stop):
            hit = (tokens[:, pos + 1 - len(stop):pos + 1] == stop).all(-1) & ~done
            lengths = torch.where(hit, torch.full_like(lengths, i + 1), lengths)
            done |= hit
            if bool(done.all()):
                tokens, logprobs = tokens[:, :pos + 1], logprobs[:, :i + 1]
                break
        if i == max_new_tokens - 1:
            break
        if use_cache:
            out = model(tokens[:, pos:pos + 1], cache=cache, noise=noise, creativity=creativity, last_only=True)
        else:
            lo = max(0, pos + 1 - block)
            out = _forward_window(model, tokens[:, lo:pos + 1], lo, noise, creativity)
    routing = {k: v / v.sum(-1, keepdim=True).clamp_min(1e-9) for k, v in routing.items()}
    return Generation(tokens, logprobs, lengths, routing)


def _forward_window(model, window, start, noise, creativity):
    """Forward over ``window`` whose first token sits at absolute position ``start`` (no cache).

    A throw-away cache that starts at ``start`` gives the window its absolute positions, so that
    position-keyed noise matches the cached path exactly.
    """
    cache = model.new_cache(window.shape[0])
    cache.length = start
    return model(window, cache=cache, noise=noise, creativity=creativity, last_only=True)


@dataclass
class Branch:
    """One thought branch: its text and how it was made."""

    text: str
    seed: int
    creativity: float | None
    mean_loglik: float  # mean log-probability per generated character, nats
    routing: dict[int, list[float]]  # per thought layer: fraction of tokens sent to each branch


@dataclass
class ThinkResult:
    prompt: str
    branches: list[Branch]
    diversity: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def creativity_spread(spec, n: int) -> list[float] | None:
    """Creativity per branch from ``None``, a float, a ``(lo, hi)`` pair (linear spread) or a list."""
    if spec is None:
        return None
    if isinstance(spec, (int, float)):
        vals = [float(spec)] * n
    elif isinstance(spec, tuple) and len(spec) == 2:
        lo, hi = map(float, spec)
        vals = [lo] * n if n == 1 else [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    else:
        vals = [float(v) for v in spec]
        if len(vals) != n:
            raise ConfigError(f"creativity list has {len(vals)} values for {n} branches")
    if any(v < 0 for v in vals):
        raise ConfigError(f"creativity must be >= 0, got {min(vals)}")
    return vals


def think(model: Transformer, tokenizer: CharTokenizer, prompt: str, *, branches: int = 8, seed: int = 0,
          branch_seeds: list[int] | None = None, creativity=None, max_new_tokens: int = 200,
          temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
          min_p: float | None = None, stop: str | None = None, unknown_chars: str = "error",
          use_cache: bool = True) -> ThinkResult:
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
    Returns:
        :class:`ThinkResult` with per-branch text, seed, creativity, mean log-likelihood and
        routing trace, and the set's diversity (distinct-2, distinct-3, self-BLEU).
    """
    from ..metrics.diversity import distinct_n, self_bleu

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    seeds = list(branch_seeds) if branch_seeds is not None else [seed + i for i in range(branches)]
    if not seeds:
        raise ConfigError("branches must be >= 1")
    n = len(seeds)
    crea = creativity_spread(creativity, n)
    ids = prepare_prompt(tokenizer, prompt, model.config.block_size, unknown_chars)
    dev = model.wte.weight.device
    prompt_ids = torch.tensor(ids, device=dev).repeat(n, 1)
    stop_ids = None
    if stop:
        try:
            stop_ids = tokenizer.encode(stop)
        except DataError as e:
            raise DataError(f"stop string: {e}") from None
    c = torch.tensor(crea, device=dev) if crea is not None else None
    gen = generate(model, prompt_ids, max_new_tokens, RowNoise(seeds, dev), temperature=temperature,
                   top_k=top_k, top_p=top_p, min_p=min_p, creativity=c, use_cache=use_cache, stop_ids=stop_ids)
    T0 = len(ids)
    out = []
    for b in range(n):  # decoding to Python strings is per row by nature (not a hot path)
        L = int(gen.lengths[b])
        text = tokenizer.decode(gen.tokens[b, T0:T0 + L])
        ll = float(gen.logprobs[b, :L].mean()) if L else 0.0
        route = {layer: [round(float(v), 4) for v in load[b]] for layer, load in gen.routing.items()}
        branch_crea = None if crea is None or not model.config.has_thoughts else crea[b]
        out.append(Branch(text, seeds[b], branch_crea, ll, route))
    texts = [br.text for br in out]
    div = {"distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3)}
    div["self_bleu"] = self_bleu(texts) if n > 1 else float("nan")
    return ThinkResult(tokenizer.decode(ids), out, div)
