"""Evaluators, multi-branch denoising, and "noising an idea" (DESIGN §3–4).

Evaluators share one interface, ``score(texts, prompt) -> (N,) tensor`` (higher is better):

* :class:`ElboEvaluator`: the diffusion model's own ELBO, as negative bits per character (a bound,
  so it ranks by a noisy upper bound on the NLL; every text is scored with the same seed, so texts
  of the same length share the t draws and masks).
* :class:`ARLikelihoodEvaluator`: an autoregressive model's mean log-likelihood in nats per
  character (``metrics.quality``): an independent judge.
* :class:`DiversityEvaluator`: ``1 - max`` character-4-gram Jaccard similarity to the other texts.
* :class:`WeightedEvaluator`: a weighted sum of others.

:func:`branch_search` runs N branches from one prompt, and at each chosen point ``f`` of the
schedule scores them, keeps the best m and forks each into N/m: the kept branch itself plus
re-noised children (a fraction ``f`` of its generated positions masked again, with fresh seeds, and
denoised). Scoring needs finished texts, so a point ``f`` means "return to noise level f" (as
SDEdit does) rather than "stop at f". Keeping the parent makes the best score never decrease (for an
evaluator that scores each text on its own, as the ELBO and AR ones do).

:func:`renoise` masks exactly ``round(p * eligible)`` positions of a text (optionally inside a span)
and denoises them: p = 0 returns the text, p = 1 a new text of the same length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from ..errors import ConfigError
from ..models.diffusion import diffusion_nll, mask_id
from ..rng import DIFFUSION, RowNoise, stream_id
from ..units import to_bits, to_nats
from .autoregressive import prepare_prompt
from .diffusion import DiffusionSample, generate, infill, validate

NGRAM = 4  # character n-gram size of the diversity bonus
_CHOOSE = 2  # sub-stream of the re-masking draws (0 and 1 are the samplers')


# ----------------------------------------------------------------------------- evaluators


class Evaluator(Protocol):
    """What :func:`branch_search` ranks branches with (and ``tasks.search.TaskEvaluator`` provides)."""

    def score(self, texts: Sequence[str], prompt: str) -> torch.Tensor:
        """(N,) one score per text, higher is better."""
        ...


class ElboEvaluator:
    """Negative ELBO bits per character of ``prompt + text`` under a diffusion model.

    Args:
        model, tokenizer: the diffusion model and its tokenizer.
        draws: K draws of t per window; seed: the draws' seed (the same for every text, so that
            texts are compared with common random numbers).
    """

    def __init__(self, model, tokenizer, *, draws: int = 8, seed: int = 0):
        self.model, self.tokenizer, self.draws, self.seed = model, tokenizer, draws, seed

    def score(self, texts: list[str], prompt: str) -> torch.Tensor:
        out = []
        for t in texts:
            ids = torch.tensor(self.tokenizer.encode(prompt + t, unknown="skip"), dtype=torch.long)
            total, n, _ = diffusion_nll(self.model, ids, draws=self.draws, seed=self.seed)
            out.append(-to_bits(total / n))
        return torch.tensor(out)


class ARLikelihoodEvaluator:
    """Mean log-likelihood (nats per character) of ``prompt + text`` under an autoregressive model."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def score(self, texts: list[str], prompt: str) -> torch.Tensor:
        from ..metrics.quality import text_bpc

        bpc = text_bpc(self.model, self.tokenizer, [prompt + t for t in texts])
        return -to_nats(torch.tensor(bpc))


def _grams(text: str, n: int = NGRAM) -> set[str]:
    return {text[i:i + n] for i in range(max(0, len(text) - n + 1))}


class DiversityEvaluator:
    """``1 - max_j Jaccard(G_i, G_j)`` over the other texts j, with G the set of character n-grams."""

    def __init__(self, n: int = NGRAM):
        self.n = n

    def score(self, texts: list[str], prompt: str) -> torch.Tensor:
        g = [_grams(t, self.n) for t in texts]
        out = []
        for i, gi in enumerate(g):
            sims = [len(gi & gj) / max(1, len(gi | gj)) for j, gj in enumerate(g) if j != i]
            out.append(1.0 - max(sims, default=0.0))
        return torch.tensor(out)


class WeightedEvaluator:
    """``sum_i w_i * evaluator_i.score(texts, prompt)``.

    Args:
        parts: ``[(weight, evaluator), ...]``.
    """

    def __init__(self, parts):
        if not parts:
            raise ConfigError("a weighted evaluator needs at least one (weight, evaluator) part")
        self.parts = list(parts)

    def score(self, texts: list[str], prompt: str) -> torch.Tensor:
        return sum(w * ev.score(texts, prompt) for w, ev in self.parts)


# ----------------------------------------------------------------------------- re-masking

def choose_positions(noise: RowNoise, eligible: torch.Tensor, count: int) -> torch.Tensor:
    """Exactly ``count`` eligible positions per row, uniformly at random from the row's own noise.

    Args:
        eligible: (N,) or (B, N) bool. count: positions to pick (at most the eligible count).
    Returns:
        (B, N) bool.
    """
    B, N = noise.batch_size, eligible.shape[-1]
    eligible = eligible.expand(B, N)
    u = noise.uniform(stream_id(DIFFUSION, 0, _CHOOSE), torch.arange(N)).to(eligible.device)  # (B, N)
    u = u.masked_fill(~eligible, 2.0)  # never chosen before an eligible position
    idx = u.argsort(-1)[:, :count]
    return torch.zeros(B, N, dtype=torch.bool, device=eligible.device).scatter(1, idx, True) & eligible


def _remask(model, x: torch.Tensor, noise: RowNoise, eligible: torch.Tensor, count: int,
           **sampler_kw) -> tuple[DiffusionSample, torch.Tensor]:
    """Mask ``count`` eligible positions of each row of ``x`` again (:func:`choose_positions`) and denoise.

    Args:
        x: (B, N) ids; noise: one row per row of ``x``, for the choice and the denoising.
        eligible: (N,) or (B, N) bool; sampler_kw: see :func:`generation.diffusion.infill`.
    Returns:
        ``(DiffusionSample, masked (B, N) bool)``.
    """
    masked = choose_positions(noise, eligible, count)
    x = torch.where(masked, torch.full_like(x, mask_id(model)), x)
    return infill(model, x, noise, known=~masked, **sampler_kw), masked


@dataclass
class Variant:
    """One re-noised variation: its text, seed, masked positions and characters that changed."""

    text: str
    seed: int
    masked: int
    changed: int


@dataclass
class RenoiseResult:
    text: str
    noise: float
    span: tuple[int, int] | None
    variants: list[Variant]
    trajectory: list[torch.Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("trajectory")
        return d


def renoise(model, tokenizer, text: str, *, noise: float, variants: int = 4, seed: int = 0,
            span: tuple[int, int] | None = None, unknown_chars: str = "error", trajectory: bool = False,
            **sampler_kw) -> RenoiseResult:
    """Variations of ``text``: mask ``round(noise * eligible)`` positions per variant and denoise.

    Args:
        model, tokenizer: a diffusion model and its tokenizer.
        text: the idea to vary (a person's text or an AR draft).
        noise: p in [0, 1]; 0 returns ``text`` unchanged.
        variants: how many; variant i uses seed ``seed + i`` for its mask and its denoising.
        span: ``(a, b)``: only characters ``a <= i < b`` may be masked.
        sampler_kw: see :func:`generation.diffusion.denoise` (sampler, steps, k, threshold, ...).
    Returns:
        :class:`RenoiseResult`.
    """
    if not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be in [0, 1] (the fraction of positions to mask), got {noise!r}")
    if not isinstance(variants, int) or variants < 1:
        raise ConfigError(f"variants must be a positive integer, got {variants!r}")
    validate(sampler_kw.get("sampler", "confidence"), sampler_kw.get("steps"), sampler_kw.get("k"),
             sampler_kw.get("threshold", 0.9), sampler_kw.get("temperature", 1.0))
    ids = tokenizer.encode(text, unknown=unknown_chars)
    N = len(ids)
    if N == 0:
        raise ConfigError("the text to re-noise is empty")
    if span is not None:
        a, b = span
        if not 0 <= a < b <= N:
            raise ConfigError(f"span {a}:{b} is outside the text: need 0 <= A < B <= {N} (its length)")
    dev = model.wte.weight.device
    eligible = torch.ones(N, dtype=torch.bool, device=dev)
    if span is not None:
        eligible = (torch.arange(N, device=dev) >= span[0]) & (torch.arange(N, device=dev) < span[1])
    count = round(noise * int(eligible.sum()))
    seeds = [seed + i for i in range(variants)]
    text = tokenizer.decode(ids)
    if count == 0:
        return RenoiseResult(text, noise, span, [Variant(text, s, 0, 0) for s in seeds])
    orig = torch.tensor(ids, device=dev)
    out, masked = _remask(model, orig.repeat(variants, 1), RowNoise(seeds, dev), eligible, count,
                         trajectory=trajectory, **sampler_kw)
    n_masked, changed = masked.sum(-1).tolist(), (out.tokens != orig).sum(-1).tolist()
    res = [Variant(tokenizer.decode(row), *v) for row, *v in zip(out.tokens, seeds, n_masked, changed, strict=True)]
    return RenoiseResult(text, noise, span, res, out.trajectory)


# ----------------------------------------------------------------------------- multi-branch search

@dataclass
class RankedBranch:
    text: str  # the generated continuation (without the prompt)
    seed: int  # the seed of the draw that made it last
    score: float
    parent_seed: int | None  # the branch it was forked from, None for a first-round branch
    round: int  # 0 = first draw; r = made at the r-th fork point


@dataclass
class BranchSearchResult:
    prompt: str
    branches: list[RankedBranch]  # best first
    best_per_round: list[float]
    trajectory: list[torch.Tensor] | None = field(default=None, repr=False)  # first round, (N, P+length)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("trajectory")
        return d


@dataclass
class _Pool:
    """The live branches: (n, length) tokens and, per row, its seed, parent seed and round."""

    tokens: torch.Tensor
    seeds: list[int]
    parents: list[int | None]
    rounds: list[int]

    def texts(self, tokenizer, prompt_len: int) -> list[str]:
        return [tokenizer.decode(row[prompt_len:]) for row in self.tokens]


def _check_search(branches, keep, points) -> list[float]:
    """The fork points as floats; a ``ConfigError`` for the first search setting out of range."""
    if not isinstance(branches, int) or branches < 1:
        raise ConfigError(f"branches must be a positive integer, got {branches!r}")
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ConfigError(f"keep must be a positive integer, got {keep!r}")
    points = [float(f) for f in points]
    if any(not 0.0 < f <= 1.0 for f in points):
        raise ConfigError(f"fork points must be noise levels in (0, 1], got {points}")
    return points


def _fork_plan(scores: torch.Tensor, keep: int) -> tuple[list[int], list[int]]:
    """Which rows to keep and which to fork so that the pool keeps its size n = ``len(scores)``.

    Returns:
        ``(top, src)``: ``top``, the ``keep`` best rows, best first; ``src``, the parent of each child
        to make (``n - keep`` of them). The n places are shared as evenly as possible, better rows
        first: top row j gets ``n // keep`` places (one more while ``j < n % keep``), itself included.
    """
    n = len(scores)
    top = scores.argsort(descending=True)[:keep].tolist()
    per = [n // keep + (1 if j < n % keep else 0) for j in range(keep)]
    src = [i for j, i in enumerate(top) for _ in range(per[j] - 1)]
    return top, src


def _fork(model, pool: _Pool, top: list[int], src: list[int], first_seed: int, generated: torch.Tensor,
          f: float, r: int, sampler_kw: dict) -> _Pool:
    """The next pool: the kept rows ``top``, then a child of each row of ``src`` made in round ``r``,
    with seeds from ``first_seed`` on and a fraction ``f`` of the ``generated`` positions re-noised."""
    child_seeds = list(range(first_seed, first_seed + len(src)))
    rows = RowNoise(child_seeds, model.wte.weight.device)
    kids, _ = _remask(model, pool.tokens[src], rows, generated, round(f * int(generated.sum())), **sampler_kw)
    return _Pool(torch.cat([pool.tokens[top], kids.tokens]),
                 [pool.seeds[i] for i in top] + child_seeds,
                 [pool.parents[i] for i in top] + [pool.seeds[i] for i in src],
                 [pool.rounds[i] for i in top] + [r] * len(src))


def branch_search(model, tokenizer, prompt: str, *, length: int, branches: int = 8, keep: int | None = None,
                  points=(0.5,), seed: int = 0, evaluator: Evaluator | None = None, unknown_chars: str = "error",
                  trajectory: bool = False, **sampler_kw) -> BranchSearchResult:
    """Multi-branch denoising with keep-best-and-fork at chosen noise levels.

    Args:
        model, tokenizer: a diffusion model and its tokenizer.
        prompt: never changed; an empty prompt starts from a newline.
        length: total length of each sequence (prompt included); longer than the block is semi-AR.
        branches: N; branch i of the first round uses seed ``seed + i``, the children of later
            rounds the next unused seeds, in order.
        keep: m, branches kept at each point (``None`` or ``>= branches``: no search, just rank).
        points: noise levels ``f`` in (0, 1] at which to score, keep and fork (in the given order).
        evaluator: anything with ``score(texts, prompt)``; default :class:`ElboEvaluator`.
        sampler_kw: see :func:`generation.diffusion.denoise`.
    Returns:
        :class:`BranchSearchResult`, branches ranked best first with their final scores.
    """
    points = _check_search(branches, keep, points)
    ids = prepare_prompt(tokenizer, prompt, None, unknown_chars)  # diffusion continues long prompts block by block
    P = len(ids)
    if length < P:
        raise ConfigError(f"length ({length}) must be at least the prompt length ({P} characters)")
    prompt = tokenizer.decode(ids)
    evaluator = evaluator or ElboEvaluator(model, tokenizer)
    dev = model.wte.weight.device
    seeds = [seed + i for i in range(branches)]
    out = generate(model, torch.tensor(ids, device=dev), length, RowNoise(seeds, dev), trajectory=trajectory,
                   **sampler_kw)
    pool = _Pool(out.tokens, seeds, [None] * branches, [0] * branches)
    generated = torch.arange(length, device=dev) >= P
    best_per_round, next_seed = [], seed + branches
    for r, f in enumerate(points if keep is not None and keep < branches else [], start=1):
        scores = evaluator.score(pool.texts(tokenizer, P), prompt)
        best_per_round.append(float(scores.max()))
        top, src = _fork_plan(scores, keep)
        pool = _fork(model, pool, top, src, next_seed, generated, f, r, sampler_kw)
        next_seed += len(src)
    texts = pool.texts(tokenizer, P)
    scores = evaluator.score(texts, prompt)
    best_per_round.append(float(scores.max()))
    ranked = [RankedBranch(texts[i], pool.seeds[i], float(scores[i]), pool.parents[i], pool.rounds[i])
              for i in scores.argsort(descending=True).tolist()]
    return BranchSearchResult(prompt, ranked, best_per_round, out.trajectory)


__all__ = ["ElboEvaluator", "ARLikelihoodEvaluator", "DiversityEvaluator", "WeightedEvaluator",
           "choose_positions", "renoise", "RenoiseResult", "Variant", "branch_search", "BranchSearchResult",
           "Evaluator", "RankedBranch"]
