"""The branch decoder: one sampling loop behind every ``think`` of the package.

A model enters through a *step function* ``step(tokens, length) -> Step``: given the ``(B, L)`` token
buffer whose first ``length`` columns are filled, it returns the logits for position ``length``
(and, for thought models, each row's routing load of the forward call it just made). The package's
own :class:`~mixture_of_thoughts.models.transformer.Transformer` and Hugging Face causal LMs differ
only in that function; everything else lives here once:

* tokens drawn by Gumbel-max from each row's own counter-based noise (``generation.sampling``), so a
  row computed alone equals the same row in a batch;
* per-row stopping: on any of several stop token ids (EOS, end-of-turn; excluded from the text), on
  stop id sequences and on stop strings matched on text (both kept in the text), each row keeping
  its own length;
* the per-row log-likelihood of the generated tokens and the routing trace;
* :func:`branch_plan` (seeds and creativity of the branches) and :func:`collect_branches` (strings,
  mean log-likelihood, routing and the diversity of the set).

This is nanochat's single ``sample_next_token`` idea: the two model families cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from ..errors import ConfigError
from ..rng import RowNoise
from .sampling import sample_tokens, validate_sampling


class Step(NamedTuple):
    """What a step function returns.

    Attributes:
        logits: ``(B, V)`` logits for the next position.
        routing: ``{layer: (B, E)}`` fraction of each row's tokens sent to each branch in the forward
            call just made (empty for models without thought layers).
    """

    logits: torch.Tensor
    routing: dict[int, torch.Tensor]


StepFn = Callable[[torch.Tensor, int], Step]


@dataclass
class Generation:
    """Raw result of :func:`decode`.

    Attributes:
        tokens: ``(B, T_prompt + n)`` ids (``n`` may be less than asked when every row stopped early).
        logprobs: ``(B, n)`` log-probability of each generated token under the model (temperature 1,
            no filter).
        lengths: ``(B,)`` generated tokens kept per row: up to and including a stop sequence, up to and
            excluding a stop id.
        routing: ``{layer: (B, E)}`` fraction of each row's kept generated tokens sent to each branch.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    routing: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class Sampling:
    """Token-sampling settings shared by every decoder call (see ``generation.sampling``)."""

    temperature: float | torch.Tensor = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    first: tuple[float, int] | None = None  # (hot temperature, m): the first m new tokens at that temperature

    def validate(self) -> None:
        validate_sampling(float(torch.as_tensor(self.temperature).min()), self.top_k, self.top_p, self.min_p)
        if self.first is not None:
            validate_sampling(float(self.first[0]), self.top_k, self.top_p, self.min_p)

    def temperature_at(self, i: int):
        """The temperature of new token ``i`` (0-based): two-phase sampling reads ``first`` before ``m``."""
        return self.first[0] if self.first is not None and i < self.first[1] else self.temperature


class _Stopper:
    """Per-row stopping on stop ids, stop id sequences and stop strings."""

    def __init__(self, stop_ids: Sequence[int], stop_sequences: Sequence[Sequence[int]],
                 stop_strings: Sequence[str], detokenize: Callable[[list[int]], str] | None, device):
        self.ids = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device) if stop_ids else None
        self.seqs = [torch.tensor(list(s), dtype=torch.long, device=device) for s in stop_sequences if len(s)]
        self.strings = [s for s in stop_strings if s]
        if self.strings and detokenize is None:
            raise ValueError("stop_strings need a detokenize function")
        self.detokenize = detokenize
        # a token decodes to at least one character, except special tokens: a few spare tokens cover them
        self.tail = max((len(s) for s in self.strings), default=0) + 2

    def check(self, tokens: torch.Tensor, pos: int, T0: int, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hit_id, hit_seq)``: rows whose token at ``pos`` is a stop id / ends a stop sequence or string."""
        nxt = tokens[:, pos]
        hit_id = torch.isin(nxt, self.ids) if self.ids is not None else torch.zeros_like(nxt, dtype=torch.bool)
        hit_seq = torch.zeros_like(hit_id)
        for s in self.seqs:  # a handful of stop sequences, not a loop over rows or tokens
            n = len(s)
            if pos + 1 - T0 >= n:
                hit_seq |= (tokens[:, pos + 1 - n:pos + 1] == s).all(-1)
        if self.strings:
            # A string can come out as other tokens than its own encoding (a merge split in two), so
            # stop strings are matched on text: the tail of each live row, decoded (per row by nature).
            live = (~done & ~hit_id & ~hit_seq).nonzero().squeeze(1).tolist()
            tails = tokens[:, max(T0, pos + 1 - self.tail):pos + 1].tolist()
            for b in live:
                text = self.detokenize(tails[b])
                hit_seq[b] = any(text.endswith(s) for s in self.strings)
        return hit_id, hit_seq


@torch.no_grad()
def decode(step: StepFn, prompt_ids: torch.Tensor, max_new_tokens: int, noise: RowNoise, sampling: Sampling, *,
           stop_ids: Sequence[int] = (), stop_sequences: Sequence[Sequence[int]] = (),
           stop_strings: Sequence[str] = (), detokenize: Callable[[list[int]], str] | None = None,
           on_token: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> Generation:
    """Sample up to ``max_new_tokens`` per row with ``step``, stopping each row on its own.

    Args:
        step: the model's step function (see the module docstring).
        prompt_ids: ``(B, T0)`` prompt ids, the same length for every row.
        noise: per-row noise (``RowNoise(seeds)``) for token sampling.
        sampling: temperature (a float or a ``(B,)`` tensor; 0 = greedy) and filters.
        stop_ids: token ids that end a row (not part of its text), e.g. EOS and end-of-turn ids.
        stop_sequences: id sequences that end a row once its generated ids end with one (kept). Exact
            and vectorised where a string has one encoding (character tokenizers).
        stop_strings: strings that end a row once its generated text ends with one (kept), matched on
            text decoded by ``detokenize`` (subword tokenizers, where a string has many encodings).
        on_token: called after each step with ``(i, new tokens (B,), done (B,))`` (e.g. live display).
    Returns:
        :class:`Generation`.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    sampling.validate()
    B, T0 = prompt_ids.shape
    dev = prompt_ids.device
    tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=dev)
    tokens[:, :T0] = prompt_ids
    logprobs = torch.zeros(B, max_new_tokens, device=dev)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    routing: torch.Tensor | None = None  # (layers, B, E) running sums over the kept tokens
    layers: list[int] = []
    stopper = _Stopper(stop_ids, stop_sequences, stop_strings, detokenize, dev)
    s = sampling
    out = step(tokens, T0)
    n = max_new_tokens
    for i in range(max_new_tokens):
        pos = T0 + i
        logits = out.logits
        nxt = sample_tokens(logits, noise, pos, s.temperature_at(i), s.top_k, s.top_p, s.min_p)
        tokens[:, pos] = nxt
        logprobs[:, i] = torch.log_softmax(logits.float(), -1).gather(-1, nxt[:, None])[:, 0]
        if i > 0 and out.routing:  # routing of the step that read the previous generated token, every layer at once
            layers = layers or list(out.routing)  # the first step's order, kept
            load = torch.stack([out.routing[k].to(dev, torch.float32) for k in layers]) * (~done)[:, None]
            routing = load if routing is None else routing + load
        hit_id, hit_seq = stopper.check(tokens, pos, T0, done)
        lengths = torch.where(hit_id & ~done, i, torch.where(hit_seq & ~done, i + 1, lengths))
        done |= hit_id | hit_seq
        if on_token is not None:
            on_token(i, nxt, done)
        if bool(done.all()) or i == max_new_tokens - 1:
            n = i + 1
            break
        out = step(tokens, pos + 1)
    fractions = {} if routing is None else dict(zip(layers, routing / routing.sum(-1, keepdim=True).clamp_min(1e-9),
                                                     strict=True))
    return Generation(tokens[:, :T0 + n], logprobs[:, :n], lengths, fractions)


# ------------------------------------------------------------------------------------ branches

@dataclass
class Branch:
    """One thought branch: its text and how it was made."""

    text: str
    seed: int
    creativity: float | None
    mean_loglik: float  # mean log-probability per generated token (character for char models), nats
    routing: dict[int, list[float]]  # per thought layer: fraction of tokens sent to each branch


@dataclass
class ThinkResult:
    prompt: str
    branches: list[Branch]

    @functools.cached_property
    def diversity(self) -> dict[str, float]:
        """The set's lexical diversity (:func:`set_diversity`), computed on first use: self-BLEU over 8
        branches of 200 characters costs ~20 ms, a few percent of generating them, which callers that
        only want the texts (search, benchmarks) need not pay."""
        return set_diversity([br.text for br in self.branches])

    def to_dict(self) -> dict:
        return {**asdict(self), "diversity": self.diversity}


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


def branch_plan(branches: int, seed: int, branch_seeds: Sequence[int] | None,
                creativity) -> tuple[list[int], list[float] | None]:
    """Seeds and creativity of the branches: branch ``i`` gets ``seed + i`` unless ``branch_seeds``."""
    seeds = list(branch_seeds) if branch_seeds is not None else [seed + i for i in range(branches)]
    if not seeds:
        raise ConfigError("branches must be >= 1")
    return seeds, creativity_spread(creativity, len(seeds))


def set_diversity(texts: list[str]) -> dict[str, float]:
    """Lexical diversity of a set of branches: distinct-2, distinct-3, self-BLEU (NaN for one text)."""
    from ..metrics.diversity import distinct_n, self_bleu

    return {"distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3),
            "self_bleu": self_bleu(texts) if len(texts) > 1 else float("nan")}


def collect_branches(gen: Generation, prompt_len: int, decode_text: Callable[[list[int]], str], seeds: list[int],
                     creativity: Sequence[float | None] | None, prompt: str) -> ThinkResult:
    """Turn a :class:`Generation` into a :class:`ThinkResult` (strings, mean log-likelihood, routing)."""
    lengths = gen.lengths.tolist()
    rows = gen.tokens[:, prompt_len:].tolist()
    logprobs = gen.logprobs.cpu()
    routing = {layer: load.cpu() for layer, load in gen.routing.items()}
    out = []
    for b, L in enumerate(lengths):  # decoding to Python strings is per row by nature (not a hot path)
        ll = float(logprobs[b, :L].mean()) if L else 0.0
        route = {layer: [round(float(v), 4) for v in load[b]] for layer, load in routing.items()}
        crea = None if creativity is None else creativity[b]
        out.append(Branch(decode_text(rows[b][:L]), seeds[b], crea, ll, route))
    return ThinkResult(prompt, out)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both ``(B, max len)``: each row right-aligned after ``pad_id``; mask 1 on tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):  # building the batch from Python lists is per row by nature
        if r:
            ids[b, T - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[b, T - len(r):] = 1
    return ids.to(device), mask.to(device)
