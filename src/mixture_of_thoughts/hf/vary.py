"""Noising an idea with a real model: develop one draft in several directions in one batched pass.

Two kinds of noise, alone or together:

* **prompt operators** ("ways"): instruction templates applied to the draft (rewrite it in another
  style, from another angle, under a constraint, with a concrete example, ...). They live in a JSON
  file users can edit (``assets/vary_ways.json``: ``name -> {"instruction": "... {text} ...",
  "description": "..."}``); ``none`` is a plain "rewrite this";
* **thought noise**: with ``creativity > 0`` every variant also gets the branch noise of a grafted
  model (:mod:`mixture_of_thoughts.hf.graft`), as in :func:`~mixture_of_thoughts.hf.generate.think_hf`.

Every ``(way, variant)`` pair is one row of a single batch. The ways have different prompts, hence
different lengths: prompts are left-padded, and :func:`padded_hf_step` gives the HF model the
attention mask of the padding and each row's own positions (``cumsum(mask) - 1``) at every step, with
the KV cache. Token ``i`` of a row is drawn with its own ``RowNoise(seed)`` at the row's own position
(:class:`RowPositionNoise`), and the thought noise is keyed by the same per-row positions, so a row is
the same generated in the batch or alone (``sample_branches`` / ``think_hf`` on its prompt).
Variant ``j`` of every way has seed ``seed + j``: adding or dropping a way changes no other row.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.jsonl import read_json_file
from ..errors import ConfigError, DataError
from ..generation.autoregressive import LOOKAHEAD
from ..generation.decoder import Sampling, Step, StepFn, collect_branches, decode, left_pad  # noqa: F401
from ..rng import RowNoise, lookahead_span
from . import fast
from .generate import cache_kwarg, cache_of, check_context, prompt_ids, stop_token_ids, uses_chat

WAYS_FILE = Path(__file__).parent.parent / "assets" / "vary_ways.json"
DEFAULT_WAYS = ("style", "angle", "constraint", "example")
PLAIN = "none"  # the way without an operator; built in when a ways file does not define it
PLAIN_INSTRUCTION = "Rewrite the following text.\n\nText: {text}"


# ----------------------------------------------------------------------------------- ways


@dataclass(frozen=True)
class Way:
    """A prompt operator: ``instruction`` is a template in which ``{text}`` stands for the draft."""

    name: str
    instruction: str
    description: str = ""

    def apply(self, text: str) -> str:
        """The prompt for ``text`` (plain substitution: braces elsewhere in either are kept as they are)."""
        return self.instruction.replace("{text}", text)


def load_ways(path: str | Path | None = None) -> dict[str, Way]:
    """The ways of a JSON file (default: the shipped ``vary_ways.json``), in file order.

    Raises:
        DataError: a missing or unreadable file, not JSON, not an object of ``name -> {"instruction":
            "... {text} ...", "description": "..."}``.
    """
    p = Path(path) if path is not None else WAYS_FILE
    where = f"ways file {p}"
    raw = read_json_file(p, where)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f'{where} must hold a JSON object of name -> {{"instruction": "... {{text}} ...", '
                        f'"description": "..."}}')
    ways = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("instruction"), str):
            raise DataError(f'{where}: way {name!r} must be an object with an "instruction" string')
        if "{text}" not in entry["instruction"]:
            raise DataError(f"{where}: the instruction of way {name!r} has no {{text}} where the draft goes")
        desc = entry.get("description", "")
        if not isinstance(desc, str):
            raise DataError(f'{where}: the "description" of way {name!r} must be a string')
        if not name.strip() or "," in name:
            raise DataError(f"{where}: way names must be non-empty and hold no comma, got {name!r}")
        ways[name] = Way(name, entry["instruction"], desc)
    return ways


def resolve_ways(names: str | Sequence[str], table: dict[str, Way]) -> list[Way]:
    """The ways named (a list or a comma-separated string), checked against ``table``; ``none`` is
    the plain rewrite when the table does not define it."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise ConfigError(f"no way given: name at least one of {', '.join(_known(table))}")
    out, seen = [], set()
    for n in names:
        if n in seen:
            raise ConfigError(f"way {n!r} is given twice (its variants would be the same)")
        seen.add(n)
        if n in table:
            out.append(table[n])
        elif n == PLAIN:
            out.append(Way(PLAIN, PLAIN_INSTRUCTION, "no operator, a plain rewrite"))
        else:
            raise ConfigError(f"unknown way {n!r}: known ways are {', '.join(_known(table))}")
    return out


def _known(table: dict[str, Way]) -> list[str]:
    return list(table) + ([PLAIN] if PLAIN not in table else [])


# ----------------------------------------------------------------------------------- batching


class PaddedLM:
    """A Hugging Face causal LM over left-padded rows with its KV cache, whose rows can be reordered.

    Each call passes the mask of the whole sequence so far (padding, then ones) and each row's own
    positions ``cumsum(mask) - 1`` (padding gets position 1, as in ``transformers``), so a row sees
    exactly what it would see unpadded. It owns the cache, so beam search can reorder its rows
    (:mod:`.coordinated`: only among the beams of one prompt, whose mask and positions are the same).
    ``shared``: the rows come in runs of that many equal prompts that nothing else (such as thought
    noise) tells apart while reading them; the first call reads each run's prompt once and repeats its
    KV cache and logits (``shared`` times less prefill).
    """

    def __init__(self, model: nn.Module, mask: torch.Tensor, shared: int = 1):
        self.model = model
        self.cache_kw = cache_kwarg(model)
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self.full = mask.long()
        self.shared = int(shared)
        self.past = None
        self.seen = 0

    def logits(self, tokens: torch.Tensor, length: int, as_float: bool = True) -> torch.Tensor:
        """``(R, V)`` logits for column ``length`` of the ``(R, L)`` token buffer (float32 with ``as_float``,
        else in the model's dtype)."""
        self.full, pos = fast.padded_positions(self.full, length)
        full = self.full
        kw = {self.cache_kw: self.past} if self.past is not None else {}
        rows = slice(None, None, self.shared if self.past is None else 1)  # a first call reads each run once
        out = self.model(input_ids=tokens[rows, self.seen:length], attention_mask=full[rows, :length],
                         position_ids=pos[rows, self.seen:length], use_cache=True, **self.keep, **kw)
        self.past, last = cache_of(out), out.logits[:, -1, :]
        if self.seen == 0 and self.shared > 1:
            self.past.batch_repeat_interleave(self.shared)
            last = last.repeat_interleave(self.shared, 0)
        self.seen = length
        return last.float() if as_float else last

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``r`` of the cache becomes old row ``rows[r]``."""
        if hasattr(self.past, "reorder_cache"):
            self.past.reorder_cache(rows)
        else:  # legacy tuple caches: ((k, v), ...) per layer
            self.past = tuple(tuple(t.index_select(0, rows.to(t.device)) for t in layer) for layer in self.past)



def padded_lm(model: nn.Module, mask: torch.Tensor, shared: int = 1, lean: bool | None = None):
    """The left-padded decoder of ``model``: :class:`.fast.PaddedLean` (the lean step: static cache,
    prepacked weights) where :func:`.fast.fast_blocker` allows it and ``lean`` is not ``False``, else
    :class:`PaddedLM` (the model's own forward, the reference). Both take ``logits(tokens, length)``
    and ``reorder(rows)``."""
    if lean is not False and fast.fast_blocker(model) is None:
        return fast.PaddedLean(fast.lean_model(model), mask, shared)
    return PaddedLM(model, mask, shared)


def padded_hf_step(model: nn.Module, mask: torch.Tensor,
                   routing: Callable[[], dict[int, torch.Tensor]] | None = None, shared: int = 1,
                   lean: bool | None = None) -> StepFn:
    """The decoder's step function for a Hugging Face causal LM over left-padded prompts, with its KV cache.

    ``mask`` is the ``(B, T0)`` attention mask of the padded prompts (0 on padding). The first call
    reads the prompts, each later call the new tokens, through :func:`padded_lm` (each row's own mask
    and positions); ``shared`` and ``lean`` as there.
    """
    lm = padded_lm(model, mask, shared, lean)

    def step(tokens: torch.Tensor, length: int) -> Step:
        return Step(lm.logits(tokens, length, as_float=False), routing() if routing is not None else {})

    return step


class RowPositionNoise:
    """A :class:`RowNoise` read at each row's own positions: column ``p`` of the left-padded buffer is
    position ``p - pad[b]`` of row ``b`` (the position it has alone), so the token a row samples does
    not depend on how much padding the batch gave it.

    Single-position draws (one per decoding step) are served from blocks of ``lookahead`` positions.
    """

    per_row = True

    def __init__(self, noise: RowNoise, pad: torch.Tensor, lookahead: int = LOOKAHEAD):
        self.noise = noise
        self.pad = pad.to(noise.device, torch.long)
        self.lookahead = max(1, int(lookahead))
        self._blocks: dict[tuple, tuple[int, torch.Tensor]] = {}

    @property
    def batch_size(self) -> int:
        return self.noise.batch_size

    @property
    def device(self) -> torch.device:
        return self.noise.device

    def for_batch(self, batch_size: int, device=None) -> RowPositionNoise:
        self.noise.for_batch(batch_size, device)
        return self

    def _draw(self, kind: str, stream: int, positions: torch.Tensor | None, tail, dtype) -> torch.Tensor:
        fn = getattr(self.noise, kind)
        if positions is None:
            return fn(stream, None, tail, dtype)
        positions = positions.to(self.device, torch.long)
        if positions.dim() != 1 or positions.numel() != 1:
            pos = positions.view(1, -1) if positions.dim() == 1 else positions
            return fn(stream, pos - self.pad[:, None], tail, dtype)
        p = int(positions.item())
        key = (kind, stream, tuple(tail), dtype)
        block = self._blocks.get(key)
        if block is None or not block[0] <= p < block[0] + block[1].shape[1]:
            span = lookahead_span(self.lookahead, self.batch_size, tuple(tail))
            cols = torch.arange(p, p + span, device=self.device)
            block = self._blocks[key] = (p, fn(stream, cols[None, :] - self.pad[:, None], tail, dtype))
        i = p - block[0]
        return block[1][:, i:i + 1]

    def uniform(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        return self._draw("uniform", stream, positions, tail, dtype)

    def gumbel(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        return self._draw("gumbel", stream, positions, tail, dtype)

    def normal(self, stream, positions, tail=(), dtype=torch.float32) -> torch.Tensor:
        return self._draw("normal", stream, positions, tail, dtype)


# ----------------------------------------------------------------------------------- vary


@dataclass
class Variant:
    """One variant of the draft and how it was made."""

    way: str  # the operator's name (``none``: a plain rewrite)
    instruction: str  # its template, ``{text}`` standing for the draft
    seed: int  # seeds its token sampling and its thought noise
    creativity: float  # thought noise (0 = prompt operator only)
    text: str
    mean_loglik: float  # mean log-probability per generated token, nats


@dataclass
class VaryResult:
    """The draft, its variants (way-major: every variant of the first way, then the next way) and the
    lexical diversity of the set."""

    draft: str
    variants: list[Variant]
    diversity: dict[str, float]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        # valid JSON: self-BLEU of a single variant is undefined (NaN), written as null
        d["diversity"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in d["diversity"].items()}
        return d

    def format(self) -> str:
        s = self.settings
        lines = [f"draft: {self.draft}",
                 f"{len(self.variants)} variants: ways {', '.join(s.get('ways', []))} x {s.get('variants')} "
                 f"(creativity {s.get('creativity')}, temperature {s.get('temperature')}, seeds from "
                 f"{s.get('seed')})"]
        for v in self.variants:
            lines += ["", f"=== {v.way}  seed={v.seed}  creativity={v.creativity:g}  "
                          f"mean loglik={v.mean_loglik:.3f}", v.text.strip()]
        d = self.diversity
        if len(self.variants) > 1:
            lines += ["", f"diversity: distinct-2 {d['distinct_2']:.3f}, distinct-3 {d['distinct_3']:.3f}, "
                          f"self-BLEU {d['self_bleu']:.1f} of 100 (lower = more diverse)"]
        return "\n".join(lines)


def pad_token_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return 0  # masked out: any id will do


@torch.no_grad()
def vary(model: nn.Module, tokenizer, text: str, ways: str | Sequence[str] = DEFAULT_WAYS, *, variants: int = 2,
         creativity: float = 0.0, seed: int = 0, max_new_tokens: int = 64, temperature: float = 0.7,
         top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
         ways_file: str | Path | None = None, chat: bool | None = None) -> VaryResult:
    """Develop ``text`` in several directions: ``variants`` variants per way, all in one batched pass.

    Args:
        model, tokenizer: a Hugging Face causal LM (grafted when ``creativity > 0``).
        text: the draft.
        ways: way names (a list or ``"style,angle"``) from ``ways_file`` (default: the shipped
            ``vary_ways.json``); ``none`` = a plain rewrite (pure thought noise with ``creativity``).
        variants: variants per way; variant ``j`` of every way has seed ``seed + j``.
        creativity: thought noise of the grafted layers for every variant (0 = none).
        max_new_tokens, temperature, top_k, top_p, min_p: sampling, as in ``think_hf``.
        chat: wrap each prompt in the tokenizer's chat template (``None``: when it has one).

    Returns:
        :class:`VaryResult`; a variant is the same generated alone (``sample_branches`` on its prompt
        with its seed, or ``think_hf`` with its seed and creativity on a grafted model).
    """
    draft = (text or "").strip()
    if not draft:
        raise ConfigError("the draft is empty: give the text to vary (--text)")
    if isinstance(variants, bool) or not isinstance(variants, int) or variants < 1:
        raise ConfigError(f"variants must be an integer >= 1, got {variants!r}")
    creativity = float(creativity)
    if not creativity >= 0:
        raise ConfigError(f"creativity must be >= 0, got {creativity}")
    grafted = hasattr(model, "mot_graft")
    if creativity > 0 and not grafted:
        raise ConfigError("creativity > 0 needs a grafted model: graft(model, 'all') first "
                          "(mot vary grafts on the fly)")
    chosen = resolve_ways(ways, load_ways(ways_file))
    chat = uses_chat(tokenizer, chat)

    dev = next(model.parameters()).device
    rows, seeds, labels = [], [], []
    for way in chosen:
        ids = prompt_ids(tokenizer, way.apply(draft), chat)
        for j in range(variants):
            rows.append(ids)
            seeds.append(seed + j)
            labels.append(way)
    ids, mask = left_pad(rows, pad_token_id(tokenizer), dev)
    check_context(model, ids.shape[1], max_new_tokens)
    model.eval()

    def detokenize(t: list[int]) -> str:
        return tokenizer.decode(t, skip_special_tokens=True)

    look = min(LOOKAHEAD, max_new_tokens)
    noise = RowPositionNoise(RowNoise(seeds, dev), ids.shape[1] - mask.sum(-1), lookahead=look)
    if grafted:  # always set per-row noise: the graft's default is the training generator
        from .graft import thought_noise

        ctx = thought_noise(model, RowNoise(seeds, dev, lookahead=look),
                            torch.full((len(seeds),), creativity, device=dev))
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        gen = decode(padded_hf_step(model, mask), ids, max_new_tokens, noise,
                     Sampling(temperature, top_k, top_p, min_p), stop_ids=stop_token_ids(tokenizer, model),
                     detokenize=detokenize)
    res = collect_branches(gen, ids.shape[1], detokenize, seeds, [creativity] * len(seeds), draft)
    out = [Variant(w.name, w.instruction, b.seed, creativity, b.text, b.mean_loglik)
           for w, b in zip(labels, res.branches, strict=True)]
    settings = {"ways": [w.name for w in chosen], "variants": variants, "creativity": creativity, "seed": seed,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                "min_p": min_p, "chat": chat, "ways_file": str(ways_file) if ways_file is not None else None}
    return VaryResult(draft, out, res.diversity, settings)
