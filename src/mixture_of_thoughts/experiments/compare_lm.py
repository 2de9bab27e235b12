"""``mot compare lm --model``: thought branches against sampling knobs on a real LM, by *semantic* diversity.

For every open-ended prompt of a prompt set (``tuning``: ``assets/prompts/open_ended.jsonl``, the
default; ``held-out``: ``assets/prompts/held_out.jsonl``; or any JSONL with a ``"prompt"`` field), each
setting writes ``branches`` continuations per prompt (chat template when the tokenizer has one) under
each of ``seeds`` seeds. Families, each swept over its own knob (:attr:`LMCompareConfig.contenders`):

* baselines (:data:`BASELINES`, :func:`dense_baselines`): ``temperature`` (0 = greedy), ``top-p`` and
  ``min-p`` (at T = 1, 1.5, 2), ``two-phase`` (a hot temperature for the first m tokens, then a cold
  one) and ``diverse-beam`` (diverse beam search, Vijayakumar et al. 2018, :mod:`..hf.coordinated`);
* contenders (:data:`CONTENDERS`): ``thoughts`` (the model grafted with thought layers, ``hf.graft``:
  creativity swept, greedy or low-T, per-token / persistent / orthogonal noise, all / lower / upper
  layers, optionally on the first m tokens only), ``repel`` (branches that see each other: each
  penalised for the tokens the branches before it chose, :mod:`..hf.coordinated`), ``vary`` (``mot
  vary``'s prompt operators on the greedy answer, with or without thought noise) and ``learned``
  (branches trained with a mixture objective, :mod:`..hf.learned`).

Quality is the mean per-token NLL (nats) of each continuation under the *plain* model given the
original prompt (the reference; one padded batch per prompt); an empty continuation is left out of the
mean. Diversity of a prompt's branches: :func:`metrics.semantic.set_report` (semantic distance, Vendi,
distinct-k, EAD, degenerate fraction, effective metrics) and lexical distinct-2/3. Per prompt, each
metric is averaged over seeds; intervals are 95% paired bootstrap intervals over prompts (the same
resamples for every setting).

The verdict (:func:`matched_quality`, :func:`verdict`): each contender against the **upper concave
hull of every baseline point pooled** at its own reference NLL, recomputed per bootstrap resample
(:func:`stats.hull_at`); the per-family lines of earlier reports stay as a secondary column, and the
report measures how many baseline points the hull needs before it stops moving.

Batching: the rows of several prompts (``batch_prompts`` prompts × ``branches``) are decoded in one
left-padded pass (``hf.vary.padded_hf_step``, ``RowPositionNoise``), so a row is what it would be
alone (``noise_tokens`` becomes one end position per row). The reference NLL of a setting decoded by
the plain model from the original prompt is read off the decoder's own log-probabilities
(temperature 1, the same numbers as a separate pass, tested); grafted, learned and vary settings get
a separate reference pass.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import stats
from .lm_grid import (  # noqa: F401  (the grid's names stay importable from here)
    BASELINES,
    CONFIRM,
    CONTENDERS,
    FAMILIES,
    GRIDS,
    HELDOUT_PRIMARY,
    LAYER_SETS,
    LEARNED,
    NOISE_MODES,
    PRIMARY,
    VARY_WAYS,
    Contender,
    confirm_contenders,
    coordinated_contenders,
    default_contenders,
    dense_baselines,
    heldout_contenders,
    quick_contenders,
    setting_key,
    wide_contenders,
)
from .report import digest_path, finite_json, format_ci, load_record, save_record

log = logging.getLogger(__name__)
# the thought setting the default report's verdict is about, declared before the run (the pilots' best)
EXAMPLE_PROMPTS, EXAMPLE_BRANCHES = 3, 4  # texts kept in metrics.json per setting
METRICS = ("ref_nll", "semantic_distance", "vendi_semantic", "distinct_k", "ead_2", "degenerate_frac",
           "effective_semantic_distance", "effective_vendi_semantic", "effective_distinct_k", "distinct_2",
           "distinct_3", "mean_tokens")


@dataclass
class LMCompareConfig:
    """Settings of one LM comparison (``quick()`` shrinks every count)."""

    model: str = "smollm2"
    prompts: str | None = None  # JSONL with a "prompt" field; None = the shipped open_ended.jsonl
    limit: int | None = None  # the first N prompts
    branches: int = 8
    max_new_tokens: int = 32
    seeds: int = 2
    primary: str = PRIMARY.label  # the setting the verdict is about, declared before the run
    first_seed: int = 0  # branch j of seed s has the seed first_seed + s * SEED_STRIDE + j (another = fresh draws)
    out: str = "reports/smollm2"
    contenders: tuple[Contender, ...] = field(default_factory=default_contenders)
    batch_prompts: int = 8  # prompts decoded together (rows: batch_prompts x branches)
    n_branches: int = 4  # graft: thought branches per layer
    k: int = 2  # graft: branches chosen per token
    bootstrap: int = 1000
    seed: int = 1337
    device: str | None = None
    command: str = ""
    report_only: bool = False  # summarise the settings already run (in out/settings), generate nothing

    def __post_init__(self):
        for name in ("branches", "max_new_tokens", "seeds", "batch_prompts", "bootstrap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ConfigError(f"--limit must be an integer >= 1, got {self.limit!r}")
        self.contenders = tuple(self.contenders)
        if not self.contenders:
            raise ConfigError("no contender to run")
        for c in self.contenders:
            c.validate()

    @classmethod
    def quick(cls, **kw) -> LMCompareConfig:
        base = dict(limit=2, branches=3, max_new_tokens=8, seeds=1, contenders=quick_contenders(), bootstrap=200)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


# ------------------------------------------------------------------------------------ prompts

def load_prompts(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """The rows of a prompt set: ``tuning`` (the default: the shipped ``open_ended.jsonl``), ``held-out``,
    or any JSONL file with a non-empty ``"prompt"`` string per row (other fields are kept)."""
    from ..data.prompts import read_prompts, resolve_prompt_set

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    rows = read_prompts(resolve_prompt_set(path))
    return rows[:limit] if limit is not None else rows


# ------------------------------------------------------------------------------------ generation

def _layer_indices(model, which: str) -> str | list[int]:
    n = int(model.config.num_hidden_layers)
    if which == "all" or n < 2:
        return "all"
    half = n // 2
    return list(range(half)) if which == "lower" else list(range(half, n))


def _graft_copy(base, c: Contender, cfg: LMCompareConfig):
    from ..hf.graft import graft

    model = copy.deepcopy(base)
    kw = {"noise_mode": c.noise_mode} if c.noise_mode != "token" else {}
    return graft(model, _layer_indices(base, c.layers), n_branches=cfg.n_branches, k=cfg.k,
                 creativity=float(c.creativity), seed=cfg.seed, **kw)


def _graft_key(c: Contender) -> tuple:
    """Which grafted copy of the model ``c`` decodes with (``()``: the model itself)."""
    return (c.layers, c.noise_mode) if c.family == "thoughts" or (c.family == "vary" and c.creativity) else ()


@torch.no_grad()
def _generate(model, tok, c: Contender, ids_list: list[list[int]], seeds: list[int], max_new_tokens: int,
              dev, texts: list[str] | None = None, learned=None) -> list[tuple[list[int], str, float]]:
    """Per prompt (in order) and per seed: ``(continuation ids, text, mean NLL under the decoding model)``;
    all rows in one left-padded pass.

    Greedy decoding without noise writes the same text for every seed: one row per prompt is decoded
    and repeated. Noise on the first m tokens only gives each row its own end position (prompt length
    + m), so prompts of different lengths still share the pass. ``diverse-beam`` and ``repel`` decode
    the seeds of a prompt as branches that see each other (:mod:`..hf.coordinated`); ``vary`` develops
    the greedy answer to each prompt (``texts``) with its prompt operators, one operator per share of
    the seeds; ``learned`` decodes branch ``j`` with the ``j mod B``-th of the trained branches ``learned``.
    """
    if c.family in ("diverse-beam", "repel"):
        from ..hf.coordinated import coordinated_generate

        return coordinated_generate(model, tok, ids_list, seeds, max_new_tokens=max_new_tokens,
                                    temperature=c.temperature, diversity=float(c.diversity),
                                    diverse_tokens=c.diverse_tokens, group_width=c.group_width, window=c.window)
    if c.family == "learned":
        from ..hf.learned import generate_learned

        return generate_learned(model, tok, learned, ids_list, seeds, max_new_tokens=max_new_tokens,
                                temperature=c.temperature)
    if c.family == "vary":
        if texts is None:
            raise ConfigError("vary needs the prompts' texts")
        rows, row_seeds = _vary_rows(model, tok, c, ids_list, texts, seeds, max_new_tokens, dev)
        return decode_rows(model, tok, c, rows, row_seeds, max_new_tokens, dev)
    if c.family == "temperature" and c.temperature == 0 and len(seeds) > 1:
        one = _generate(model, tok, c, ids_list, seeds[:1], max_new_tokens, dev)
        return [r for r in one for _ in seeds]
    rows = [ids for ids in ids_list for _ in seeds]
    row_seeds = [s for _ in ids_list for s in seeds]
    # a prompt's rows read it alike unless thought noise tells them apart: then it is read once
    return decode_rows(model, tok, c, rows, row_seeds, max_new_tokens, dev,
                       shared=1 if _graft_key(c) else len(seeds))


def _vary_rows(model, tok, c: Contender, ids_list, texts, seeds, max_new_tokens, dev):
    """The rows of ``vary``: per prompt, its greedy answer (the draft, decoded by the model without noise,
    the same for every seed) rewritten by each way of ``c.ways``; branch ``j`` of ``B`` uses way
    ``j * len(ways) // B`` and seed ``seeds[j]`` (so 8 branches and 4 ways: 2 variants per way)."""
    from ..hf.generate import prompt_ids, uses_chat
    from ..hf.vary import load_ways, resolve_ways

    ways = resolve_ways(list(c.ways), load_ways())
    chat = uses_chat(tok, None)
    greedy = Contender("temperature", "temperature", temperature=0.0)
    drafts = _generate(model, tok, greedy, ids_list, seeds[:1], max_new_tokens, dev)
    B = len(seeds)
    rows, row_seeds = [], []
    for text, (_, draft, _) in zip(texts, drafts, strict=True):
        for j in range(B):
            rows.append(prompt_ids(tok, ways[j * len(ways) // B].apply(draft.strip() or text), chat))
            row_seeds.append(seeds[j])
    return rows, row_seeds


@torch.no_grad()
def decode_rows(model, tok, c: Contender, rows: list[list[int]], row_seeds: list[int], max_new_tokens: int,
                 dev, shared: int = 1) -> list[tuple[list[int], str, float]]:
    """Each row (prompt ids) decoded with its own seed under ``c``'s sampling and thought noise, in one
    left-padded pass: ``(continuation ids, text, mean NLL under the decoding model)`` per row. ``shared``:
    the rows come in runs of that many equal prompts, each read once (``hf.vary.padded_hf_step``)."""
    from ..generation.autoregressive import LOOKAHEAD
    from ..generation.decoder import Sampling, decode
    from ..hf.generate import stop_token_ids
    from ..hf.graft import thought_noise
    from ..hf.vary import RowPositionNoise, left_pad, pad_token_id, padded_hf_step
    from ..rng import RowNoise

    ids, mask = left_pad(rows, pad_token_id(tok), dev)
    look = min(LOOKAHEAD, max_new_tokens)
    noise = RowPositionNoise(RowNoise(row_seeds, dev), ids.shape[1] - mask.sum(-1), lookahead=look)
    first = (c.hot_temperature, c.hot_tokens) if c.family == "two-phase" else None
    sampling = Sampling(c.temperature, None, c.top_p, c.min_p, first=first)

    if _graft_key(c):
        kw = {}
        if c.noise_tokens is not None:
            kw["noise_until"] = torch.tensor([len(r) + c.noise_tokens for r in rows], device=dev)
        ctx = thought_noise(model, RowNoise(row_seeds, dev, lookahead=look),
                            torch.full((len(rows),), float(c.creativity), device=dev), **kw)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        gen = decode(padded_hf_step(model, mask, shared=shared), ids, max_new_tokens, noise, sampling,
                     stop_ids=stop_token_ids(tok, model))
    T0 = ids.shape[1]
    toks = gen.tokens[:, T0:].tolist()
    lp = gen.logprobs.cpu()
    out = []
    for b, L in enumerate(gen.lengths.tolist()):
        cont = toks[b][:L]
        nll = -float(lp[b, :L].mean()) if L else float("nan")
        out.append((cont, tok.decode(cont, skip_special_tokens=True), nll))
    return out


@torch.no_grad()
def reference_nll(ref, prompt: list[int], conts: list[list[int]], dev) -> np.ndarray:
    """Mean per-token NLL (nats) of each continuation after ``prompt`` under ``ref``; NaN for an empty
    continuation. The prompt is read once and its KV cache repeated for the continuations, which go
    in one right-padded batch (only their positions reach the head)."""
    from ..hf.generate import cache_kwarg, cache_of

    P, B = len(prompt), len(conts)
    L = max(1, max(len(x) for x in conts))
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, P + L, dtype=torch.long)
    mask[:, :P] = 1
    for b, x in enumerate(conts):  # building the batch from Python lists is per row by nature
        ids[b, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[b, P:P + len(x)] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    head = ref(input_ids=torch.tensor([prompt], device=dev), use_cache=True, logits_to_keep=1)
    past = cache_of(head)
    past.batch_repeat_interleave(B)
    out = ref(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_kwarg(ref): past})
    # position P - 1 (the prompt's last) predicts continuation token 0, position P + j token j + 1
    logits = torch.cat([head.logits[:, -1:].float().expand(B, 1, -1), out.logits[:, :-1].float()], 1)
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, :, None])[..., 0]
    lens = torch.tensor([len(x) for x in conts], device=dev)
    sel = torch.arange(L, device=dev)[None, :] < lens[:, None]
    nll = -(lp * sel).sum(-1) / lens.clamp_min(1)
    nll = torch.where(lens > 0, nll, torch.full_like(nll, float("nan")))
    return nll.cpu().numpy()


def _run_contender(c: Contender, model, ref, tok, prompts: list[dict], ids_list: list[list[int]],
                   cfg: LMCompareConfig, embedder, dev) -> dict:
    """Per-prompt arrays of every metric (averaged over seeds) and the texts of the first seed, per prompt."""
    from ..metrics.diversity import distinct_n
    from ..metrics.semantic import set_report

    P = len(prompts)
    acc = {k: np.zeros((cfg.seeds, P)) for k in METRICS}
    examples = []
    chunk = cfg.batch_prompts
    learned = None
    if c.family == "learned":
        from ..hf.learned import load_branches

        learned = load_branches(c.learned, model)
    # the ungrafted model decoded the prompt itself: its own log-probabilities are the reference
    own_nll = model is ref and c.family not in ("vary", "learned")
    for si in range(cfg.seeds):
        if si > 0 and (c.family == "diverse-beam" or (c.family == "learned" and c.temperature == 0)):
            # deterministic: every seed gives the same branches
            for k in METRICS:
                acc[k][si] = acc[k][0]
            continue
        seeds = [cfg.first_seed + si * stats.SEED_STRIDE + j for j in range(cfg.branches)]
        for start in range(0, P, chunk):
            sub = ids_list[start:start + chunk]
            res = _generate(model, tok, c, sub, seeds, cfg.max_new_tokens, dev,
                            texts=[p["prompt"] for p in prompts[start:start + chunk]], learned=learned)
            for q, ids in enumerate(sub):
                p = start + q
                rows = res[q * cfg.branches:(q + 1) * cfg.branches]
                conts, texts = [r[0] for r in rows], [r[1] for r in rows]
                nll = np.array([r[2] for r in rows]) if own_nll else reference_nll(ref, ids, conts, dev)
                rep = set_report(texts, prompts[p]["prompt"], embedder=embedder)
                acc["ref_nll"][si, p] = np.nanmean(nll) if np.isfinite(nll).any() else np.nan
                for k in METRICS:
                    if k in rep:
                        acc[k][si, p] = rep[k]
                acc["distinct_2"][si, p] = distinct_n(texts, 2)
                acc["distinct_3"][si, p] = distinct_n(texts, 3)
                acc["mean_tokens"][si, p] = float(np.mean([len(x) for x in conts]))
                if si == 0:
                    examples.append(texts)
    with np.errstate(all="ignore"):
        per_prompt = {k: np.nanmean(v, 0) if np.isfinite(v).any() else np.full(P, np.nan) for k, v in acc.items()}
    return {"per_prompt": per_prompt, "example": examples}


# ------------------------------------------------------------------------------------ summary

def _mean_ci(x: np.ndarray, idx: np.ndarray) -> dict:
    if not np.isfinite(x).all():
        x = np.where(np.isfinite(x), x, np.nanmean(x) if np.isfinite(x).any() else 0.0)
    m, lo, hi = stats.mean_ci(x, idx)
    return {"mean": m, "ci": [lo, hi]}


def _vs_temperature(means: dict[Contender, dict], temps: list[Contender], c: Contender) -> dict:
    """``c``'s semantic distance minus the temperature line's at ``c``'s reference NLL (paired bootstrap):
    :func:`matched_quality_lines` with the temperature line as the only line."""
    if len(temps) < 2:
        return {"delta": float("nan"), "ci": [float("nan")] * 2}
    m = matched_quality_lines(means, {"temperature": temps}, c)
    return {"delta": m["delta"], "ci": m["ci"]}


LOWER_IS_BETTER = ("degenerate_frac",)
VERDICT_METRICS = ("semantic_distance", "distinct_k", "effective_semantic_distance", "vendi_semantic",
                   "degenerate_frac")


def baseline_lines(contenders: Iterable[Contender]) -> dict[str, list[Contender]]:
    """Each baseline's frontier line: its own settings plus the measured settings its knob tends to.

    Top-p as p -> 0 and min-p as min_p -> 1 are greedy decoding, so both lines also reach the
    greedy point (temperature 0); two-phase with m = 0 is plain sampling at its cold temperature.
    """
    cs = list(contenders)
    temps = {c.temperature: c for c in cs if c.family == "temperature"}
    lines: dict[str, list[Contender]] = {}
    for c in cs:
        if c.family in BASELINES:
            lines.setdefault(c.group, []).append(c)
    for members in lines.values():
        fam = members[0].family
        anchor = (temps.get(0.0) if fam in ("top-p", "min-p")
                  else temps.get(members[0].temperature) if fam == "two-phase" else None)
        if anchor is not None and anchor not in members:
            members.append(anchor)
    return lines


def _resampled(per: dict, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric's mean over all prompts (entry 0) and over each bootstrap resample (entries 1..R)."""
    return {k: stats.resampled_means(v, idx) for k, v in per.items()}  # an all-empty prompt's NaN NLL is left out


def matched_quality_lines(res_means: dict[Contender, dict], lines: dict[str, list[Contender]], c: Contender) -> dict:
    """``c``'s semantic distance against the best *family line* at its own reference NLL (the secondary
    yardstick): per resample, each baseline line is the piecewise-linear curve through its own settings,
    and the best line is the largest that reaches ``c``'s NLL. Straight lines between a family's few
    points lie under a concave frontier, so this flatters ``c``; the verdict uses :func:`matched_quality`.
    Returns ``{"delta", "ci", "best_line"}`` (NaN where no line reaches ``c``'s NLL).
    """
    me = res_means[c]
    envs = np.stack([stats.frontier_at(np.stack([res_means[m]["ref_nll"] for m in ms], 1),
                                       np.stack([res_means[m]["semantic_distance"] for m in ms], 1),
                                       me["ref_nll"], frontier="line") for ms in lines.values()], 1)  # (R, lines)
    reached = np.isfinite(envs).any(1)
    env = np.where(reached, np.max(np.where(np.isfinite(envs), envs, -np.inf), 1), np.nan)
    d = me["semantic_distance"] - env
    if not math.isfinite(d[0]):
        return {"delta": float("nan"), "ci": [float("nan")] * 2, "best_line": None}
    best_line = list(lines)[int(np.nanargmax(envs[0]))]
    return {"delta": float(d[0]), "ci": list(stats.interval(d[1:])), "best_line": best_line}


def matched_quality(res_means: dict[Contender, dict], baselines: list[Contender], c: Contender) -> dict:
    """``c`` against the **hull of all baseline points pooled** at its own reference NLL, per metric,
    paired over bootstrap resamples.

    For each resample, every baseline setting of every family is one point (mean reference NLL, mean
    metric); the frontier is the upper concave hull of all of them (:func:`stats.hull_at`), the best any
    mixture of baseline settings reaches at that NLL; for the degenerate fraction, where lower is
    better, the lower convex hull. Returns per metric the point delta (``c`` minus the hull) with its
    95% interval, ``c``'s and the hull's own intervals and whether they are disjoint; ``hull_edge``:
    the baseline settings whose mixture makes the semantic-distance hull at ``c``'s NLL; ``covered``:
    the fraction of resamples where ``c``'s NLL lies inside the baselines' range.
    """
    me = res_means[c]
    xs = np.stack([res_means[b]["ref_nll"] for b in baselines], 1)  # (R, N)
    edge = stats.hull_vertices(xs[0], np.array([res_means[b]["semantic_distance"][0] for b in baselines]),
                               float(me["ref_nll"][0])) if math.isfinite(me["ref_nll"][0]) else None
    out = {"hull_edge": [baselines[i].label for i in dict.fromkeys(edge)] if edge else None}
    for metric in VERDICT_METRICS:
        ys = np.stack([res_means[b][metric] for b in baselines], 1)
        upper = metric not in LOWER_IS_BETTER
        m = stats.matched(me["ref_nll"], me[metric], xs, ys, frontier="hull", upper=upper)
        if metric == "semantic_distance":
            out["covered"] = m["covered"] if m else float(np.isfinite(
                stats.frontier_at(xs, ys, me["ref_nll"], upper=upper)[1:]).mean())
        if m is None:
            out[metric] = None
            continue
        c_ci, e_ci = stats.interval(me[metric][1:]), m["baseline_ci"]
        out[metric] = {"delta": m["delta"], "ci": m["ci"], "setting": float(me[metric][0]),
                       "setting_ci": list(c_ci), "baseline": m["baseline"], "baseline_ci": e_ci,
                       "disjoint_above": bool(c_ci[0] > e_ci[1]), "disjoint_below": bool(c_ci[1] < e_ci[0])}
    return out


GOAL = {"semantic_distance": 0.05, "distinct_k": 0.5}  # the issue's margins above the hull


def verdict(name: str, m: dict) -> tuple[bool, str]:
    """Whether ``m`` (a :func:`matched_quality` result) meets the goal, and a sentence that says why.

    The goal: at matched reference NLL, semantic distance at least +0.05 and distinct-k at least +0.5
    above the hull of all baselines, each paired 95% interval above 0, and no more degenerate branches
    (the interval of the difference in degenerate fraction reaches 0 or below)."""
    sem, dk, deg = m.get("semantic_distance"), m.get("distinct_k"), m.get("degenerate_frac")
    if sem is None or dk is None:
        return False, f"{name}: its reference NLL lies outside the baselines' range, so no matched comparison"
    wins = all(x["delta"] >= GOAL[k] and x["ci"][0] > 0 for k, x in (("semantic_distance", sem), ("distinct_k", dk)))
    fewer = deg is None or deg["ci"][0] <= 0  # not more degenerate branches (the interval reaches 0 or below)
    word = "meets the goal" if wins and fewer else "does not meet the goal"

    def iv(x, f=".3f"):
        return f"[{x[0]:{f}}, {x[1]:{f}}]"

    edge = " + ".join(m.get("hull_edge") or ())
    why = (f"semantic distance {sem['setting']:.3f} {iv(sem['setting_ci'])} vs the baselines' hull ({edge}) "
           f"{sem['baseline']:.3f} {iv(sem['baseline_ci'])}, delta {sem['delta']:+.3f} {iv(sem['ci'], '+.3f')}; "
           f"distinct-k {dk['setting']:.2f} {iv(dk['setting_ci'], '.2f')} vs {dk['baseline']:.2f} "
           f"{iv(dk['baseline_ci'], '.2f')}, delta {dk['delta']:+.2f} {iv(dk['ci'], '+.2f')}")
    if deg is not None:
        why += (f"; degenerate fraction {deg['setting']:.3f} vs {deg['baseline']:.3f}, delta {deg['delta']:+.3f} "
                f"{iv(deg['ci'], '+.3f')}")
    return wins and fewer, f"{name} {word}: {why}"


def _example_prompts(prompts: list[dict]) -> list[int]:
    """The prompts shown side by side: the first of each of the first categories (or the first prompts)."""
    seen, out = set(), []
    for i, p in enumerate(prompts):
        cat = p.get("category", i)
        if cat not in seen:
            seen.add(cat)
            out.append(i)
    return out[:EXAMPLE_PROMPTS]


HULL_SETTLED = 0.005  # a mean gap below this (semantic distance) counts as a hull that has stopped moving
HULL_GRID = np.round(np.arange(1.0, 1.8001, 0.05), 2)  # where the contenders land: the hull's saturation is read here


def _hull_summary(means: dict[Contender, dict], baselines: list[Contender]) -> dict:
    """The point-estimate hull of the pooled baselines on a fine grid (for the plots) and how many points
    it needs before it stops moving (:func:`stats.hull_saturation` at :data:`HULL_GRID` inside their range)."""
    xs = np.array([means[b]["ref_nll"][0] for b in baselines])
    out = {"points": len(baselines)}
    ok = np.isfinite(xs)
    if ok.sum() < 2:
        return out
    grid = np.linspace(xs[ok].min(), xs[ok].max(), 200)
    out["curve"] = {"ref_nll": grid.tolist()}
    for metric in ("semantic_distance", "distinct_k"):
        ys = np.array([means[b][metric][0] for b in baselines])
        out["curve"][metric] = stats.hull_at(np.broadcast_to(xs, (len(grid), len(xs))),
                                             np.broadcast_to(ys, (len(grid), len(xs))), grid).tolist()
    q = HULL_GRID[(HULL_GRID >= xs[ok].min()) & (HULL_GRID <= xs[ok].max())]
    if len(q):
        ys = np.array([means[b]["semantic_distance"][0] for b in baselines])
        out["saturation"] = stats.hull_saturation(xs[ok], ys[ok], q, reps=200, seed=0)
        out["saturation_grid"] = q.tolist()
    return out


def summarise(cfg: LMCompareConfig, prompts: list[dict], results: dict[Contender, dict], skipped: list[dict],
              source: str, seconds: float) -> dict:
    idx = stats.bootstrap_indices(len(prompts), cfg.bootstrap, cfg.seed)
    temps = [c for c in cfg.contenders if c.family == "temperature" and c in results]
    means = {c: _resampled(r["per_prompt"], idx) for c, r in results.items()}
    lines = baseline_lines(c for c in cfg.contenders if c in results)
    baselines = [c for c in cfg.contenders if c in results and c.family in BASELINES]
    shown = _example_prompts(prompts)
    rows = []
    for c in cfg.contenders:
        if c not in results:
            continue
        per = results[c]["per_prompt"]
        r = {"label": c.label, "family": c.family, "group": c.group, "setting": dataclasses.asdict(c),
             "examples": [results[c]["example"][i][:EXAMPLE_BRANCHES] for i in shown]}
        for k in METRICS:
            r[k] = _mean_ci(per[k], idx)
        r["vs_temperature_at_matched_nll"] = _vs_temperature(means, temps, c) if c.family != "temperature" else None
        if c.family in CONTENDERS and baselines:
            r["vs_hull"] = matched_quality(means, baselines, c)
            r["vs_best_line"] = matched_quality_lines(means, lines, c)
        rows.append(r)
    conf = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "contenders"}
    conf["contenders"] = [c.label for c in cfg.contenders]
    return {"config": conf, "model_source": source, "n_prompts": len(prompts),
            "categories": sorted({str(p.get("category", "")) for p in prompts}), "rows": rows, "skipped": skipped,
            "seconds": seconds, "verdicts": _verdicts(rows, cfg.primary), "primary": cfg.primary,
            "baseline_lines": {g: [c.label for c in cs] for g, cs in lines.items()},
            "hull": _hull_summary(means, baselines) if baselines else {"points": 0},
            "example_prompts": [prompts[i]["prompt"] for i in shown],
            "setting_seconds": {c.label: results[c].get("seconds") for c in cfg.contenders if c in results}}


def _verdicts(rows: list[dict], primary_label: str) -> list[dict]:
    """The goal checked for the pre-declared primary setting and for the best other contender setting."""
    out = []
    matched = [r for r in rows if r.get("vs_hull")]
    primary = next((r for r in matched if r["label"] == primary_label), None)
    if primary is not None:
        ok, text = verdict(f"Primary setting ({primary_label})", primary["vs_hull"])
        out.append({"which": "primary", "label": primary_label, "meets_goal": ok, "text": text})
    scored = [r for r in matched if r["vs_hull"].get("semantic_distance") and r["label"] != primary_label]
    if scored:
        best = max(scored, key=lambda r: r["vs_hull"]["semantic_distance"]["delta"])
        ok, text = verdict(f"Best other setting, chosen on the same data ({best['label']})", best["vs_hull"])
        out.append({"which": "best", "label": best["label"], "meets_goal": ok, "text": text})
    return out


def plot_lm_frontier(res: dict, path: Path, metric: str = "semantic_distance",
                  ylabel: str = "mean pairwise semantic distance (higher = more diverse)") -> None:
    """``metric`` against reference NLL with 95% intervals on both axes: the hull of all baseline points
    pooled (thick grey), each baseline family's points (thin lines), each contender group's points."""
    from .report import agg_pyplot, errorbar_series

    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    curve = res.get("hull", {}).get("curve", {})
    if metric in curve:
        ax.plot(curve["ref_nll"], curve[metric], "-", color="0.55", lw=6, alpha=0.45, zorder=0,
                label=f"hull of all {res['hull']['points']} baseline points (the frontier the verdict uses)")
    groups: dict[str, list[dict]] = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], []).append(r)
    for g, rows in groups.items():
        fam = rows[0]["family"]
        fmt = {"temperature": "o-", "top-p": "s--", "min-p": "v--", "two-phase": "D:", "diverse-beam": "P:",
               "repel": "X-", "vary": "*-", "learned": "h-"}.get(fam, "^-")
        primary = [r for r in rows if r["label"] == res.get("primary")]
        errorbar_series(ax, rows, "ref_nll", metric, fmt=fmt, label=g, alpha=0.85, capsize=2,
                        ms=4 if fam in BASELINES else 7, lw=0.8 if fam in BASELINES else 1.3, elinewidth=0.6)
        for r in primary:
            ax.scatter([r["ref_nll"]["mean"]], [r[metric]["mean"]], s=200, facecolors="none", edgecolors="k",
                       zorder=5, label="primary setting (declared before the run)")
    ax.set_xlabel("reference NLL per token under the ungrafted model, nats (lower = better quality)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Quality vs {metric.replace('_', ' ')} (95% intervals over prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(text: str, width: int = 160) -> str:
    """A text as one markdown table cell: newlines shown as ⏎, pipes escaped, cut at ``width`` characters."""
    t = " ⏎ ".join(x.strip() for x in text.strip().splitlines() if x.strip()) or "(empty)"
    t = t.replace("|", "\\|")
    return t if len(t) <= width else t[:width - 1] + "…"


def _examples_section(res: dict) -> list[str]:
    """Side by side, per example prompt: the closest temperature to the primary's NLL, the best
    min-p, the primary and the best thought setting (their first branches)."""
    rows = {r["label"]: r for r in res["rows"]}
    primary = rows.get(res.get("primary"))
    best = next((v["label"] for v in res.get("verdicts", []) if v["which"] == "best"), None)
    temps = [r for r in res["rows"] if r["family"] == "temperature" and r["setting"]["temperature"] > 0]
    ref = primary or (rows[best] if best else None)
    picks = []
    if temps and ref is not None:
        picks.append(min(temps, key=lambda r: abs(r["ref_nll"]["mean"] - ref["ref_nll"]["mean"]))["label"])
    minp = [r for r in res["rows"] if r["family"] == "min-p"]
    if minp:
        picks.append(max(minp, key=lambda r: r["semantic_distance"]["mean"])["label"])
    picks += [x for x in (res.get("primary") if primary else None, best) if x and x not in picks]
    if not picks:
        return []
    L = ["## Examples side by side", "",
         "The first branches of the first seed for three prompts: the temperature closest in reference NLL to the "
         "primary setting, the most diverse min-p setting, the primary setting and the best thought setting. "
         "Every text of every setting is in `settings/*.json`.", ""]
    for i, prompt in enumerate(res.get("example_prompts", [])):
        L += [f"**{prompt}**", "", "| # | " + " | ".join(picks) + " |", "|---" * (len(picks) + 1) + "|"]
        n = max(len(rows[p]["examples"][i]) for p in picks)
        for j in range(n):
            cells = [_cell(rows[p]["examples"][i][j]) if j < len(rows[p]["examples"][i]) else "" for p in picks]
            L.append(f"| {j + 1} | " + " | ".join(cells) + " |")
        L.append("")
    return L


def _hull_section(res: dict) -> list[str]:
    """How many baseline points the hull needs before it stops moving (:func:`stats.hull_saturation`)."""
    h = res.get("hull", {})
    sat = h.get("saturation")
    if not sat:
        return []
    grid = h["saturation_grid"]
    settled = next((e["points"] for e in sat if e["coverage"] >= 0.95 and e["mean_gap"] < HULL_SETTLED), None)
    L = ["## How many baseline points the hull needs", "",
         f"The hull of random subsets of the {h['points']} baseline points against the hull of all of them, in "
         f"semantic distance at reference NLL {grid[0]:g} ... {grid[-1]:g} (steps of 0.05, where the contenders "
         "land); 200 subsets per size. *gap*: the full hull minus the subset's (how much a sparser grid "
         "understates the frontier); *coverage*: the share of (subset, NLL) pairs the subset spans at all.", "",
         "| points | mean gap | largest gap | coverage |", "|---|---|---|---|"]
    L += [f"| {e['points']} | {e['mean_gap']:.4f} | {e['max_gap']:.4f} | {e['coverage']:.2f} |" for e in sat]
    if settled is not None and settled < h["points"]:
        L += ["", f"From {settled} of the {h['points']} points on, a random subset spans the range (coverage >= 0.95) "
                  f"and its hull lies on average within {HULL_SETTLED} of the full hull, a fraction of a contender's "
                  "interval: the hull has stopped moving before the last points.", ""]
    else:
        L += ["", f"Only all {h['points']} points together bring the subsets' mean gap under {HULL_SETTLED}: the hull "
                  "is still moving, and a denser baseline grid could raise it further.", ""]
    return L


def _learned_section(res: dict, out: Path) -> list[str]:
    """For each learned setting's branches: the training data's counts, the loss curves and branch usage
    (``history.json`` and ``data.stats.json`` beside the branches), plotted to ``learned-<name>.png``."""
    from ..hf.learned import branches_dir
    from .report import agg_pyplot

    L = []
    for name in dict.fromkeys(r["setting"]["learned"] for r in res["rows"] if r["family"] == "learned"):
        d = branches_dir(name)
        try:
            h = json.loads((d / "history.json").read_text(encoding="utf-8"))
            cfg = json.loads((d / "branches.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data = {}
        if (d / "data.stats.json").is_file():
            data = json.loads((d / "data.stats.json").read_text(encoding="utf-8"))
        plt = agg_pyplot()
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        steps = h["steps"]
        a.plot([s["step"] for s in steps], [s["mixture_nll"] for s in steps], lw=0.8, label="train mixture NLL (step)")
        per_epoch = len(steps) / max(1, len(h["epochs"]) - 1)
        a.plot([e["epoch"] * per_epoch for e in h["epochs"]], [e["val_mixture_nll"] for e in h["epochs"]], "o-",
               label="validation mixture NLL (epoch 0 = at init)")
        a.axhline(h["plain_val_nll"], color="k", ls="--", lw=1, label="plain model, validation")
        a.set_xlabel("step")
        a.set_ylabel("nats / token (first tokens of each response)")
        a.legend(fontsize=7)
        usage = h["epochs"][-1]["val_usage"]
        b.bar(range(len(usage)), usage)
        b.axhline(1 / len(usage), color="k", ls="--", lw=1)
        b.set_xlabel("branch")
        b.set_ylabel("share of validation responses it wins")
        fig.suptitle(f"learned branches {name}: {cfg['training']['objective']}, B = {cfg['branches']}, layers "
                     f"{cfg['layers'][0]}-{cfg['layers'][-1]}")
        fig.tight_layout()
        fig.savefig(out / f"learned-{name}.png", dpi=110)
        plt.close(fig)
        t = cfg["training"]
        L += [f"## Learned branches `{name}`", "",
              f"Trained with `mot train-branches --branches {cfg['branches']} --layers {t['layers']} --tokens "
              f"{t['tokens']} --objective {t['objective']} --epochs {t['epochs']}{' --bf16' if t['bf16'] else ''}` "
              f"in {h['seconds'] / 60:.0f} min on this CPU, on {h['train_prompts']} training prompts "
              f"({h['val_prompts']} held back for validation)."]
        if data:
            dr = data["drop_rates"]
            L += ["", f"Data (`mot branch-data`, {data['seconds'] / 60:.0f} min): {data['responses_sampled']} "
                      f"responses sampled for {data['prompts']} prompts at T = {data['settings']['temperature']:g}, "
                      f"{data['responses_kept']} kept ({data['kept_rate']:.0%}): dropped for NLL above "
                      f"{data['settings']['max_nll']:g} nats {dr['nll']:.1%}, off-topic {dr['off-topic']:.1%}, "
                      f"loops {dr['loop']:.1%}, empty {dr['empty']:.1%}, with a prompt left with fewer than 2 "
                      f"{dr['with_prompt']:.1%}; {data['prompts_kept']} prompts kept."]
        ep = h["epochs"]
        L += ["", f"Validation mixture NLL {ep[0]['val_mixture_nll']:.3f} at init, "
                  + ", ".join(f"{e['val_mixture_nll']:.3f} after epoch {e['epoch']}" for e in ep[1:])
                  + f"; the plain model {h['plain_val_nll']:.3f}.", "", f"![training](learned-{name}.png)", ""]
    return L


def _fmt_seconds(x) -> str:
    return "" if x is None else f"{x:.0f}"


def _total_seconds(res: dict) -> str:
    secs = [v for v in res.get("setting_seconds", {}).values() if v is not None]
    missing = len(res.get("setting_seconds", {})) - len(secs)
    text = f"{sum(secs):.0f} s = {sum(secs) / 60:.0f} min"
    return text + (f", {missing} settings without a recorded time" if missing else "")


def _fmt_match(m: dict | None, metric: str, f: str = "+.3f") -> str:
    v = (m or {}).get(metric)
    if not v:
        return ""
    mark = " ▲" if v["disjoint_above"] else " ▼" if v["disjoint_below"] else ""
    return f"{v['delta']:{f}} [{v['ci'][0]:{f}}, {v['ci'][1]:{f}}]{mark}"


def write_report(res: dict, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_lm_frontier(res, out / "frontier.png")
    plot_lm_frontier(res, out / "frontier_distinct_k.png", "distinct_k",
                  "distinct-k: equivalence classes among the branches")
    (out / "metrics.json").write_text(json.dumps(finite_json(res), indent=1, default=str), encoding="utf-8")
    c = res["config"]
    L = ["# Do thought branches beat sampling knobs on semantic diversity?", ""]
    if c.get("command"):
        L += ["Command:", "", f"    {c['command']}", ""]
    L += [f"Model `{c['model']}` ({res['model_source']}); {res['n_prompts']} prompts "
          f"({', '.join(x for x in res['categories'] if x) or 'no categories'}), {c['branches']} branches of at most "
          f"{c['max_new_tokens']} tokens per prompt, {c['seeds']} seeds"
          f"{' (first seed ' + str(c['first_seed']) + ')' if c.get('first_seed') else ''}; "
          "95% paired bootstrap intervals over prompts "
          f"({c['bootstrap']} resamples). Generation and scoring took {_total_seconds(res)} "
          f"(the sum of the settings' times; this invocation {res['seconds']:.0f} s, settings already run are read "
          "back from `settings/`).", "",
          "Quality: mean per-token NLL of the continuations under the ungrafted model (lower is better). Semantic "
          "distance, Vendi and distinct-k from MiniLM embeddings; *effective* = over non-degenerate branches only. ",
          "", "![quality-diversity frontier](frontier.png)", ""]
    if res.get("verdicts"):
        L += ["## Verdict", "",
              "The goal: at matched reference NLL, a contender's semantic distance at least +0.05 *and* distinct-k at "
              "least +0.5 above the **hull of all baseline points pooled** (every setting of every baseline family: "
              "the best that any mixture of baseline settings reaches at that NLL, recomputed in every bootstrap "
              "resample), both paired 95% intervals above 0, with no more degenerate branches (the paired interval of "
              "the difference in degenerate fraction, against the baselines' lower hull, reaches 0 or below). The "
              f"primary setting was declared before the run (`{res.get('primary')}`); the best setting is chosen on "
              "the same data, so its margin is optimistic.", ""]
        L += [f"- **{'meets' if v['meets_goal'] else 'misses'}**: {v['text']}" for v in res["verdicts"]] + [""]
    L += _hull_section(res)
    groups: dict[str, list[dict]] = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], []).append(r)
    matched = [r for r in res["rows"] if r.get("vs_hull")]
    if matched:
        L += ["## Contenders against the baselines' hull at matched quality", "",
              "Each Δ column: the setting minus the hull of all baseline points at the setting's own reference NLL, "
              "with the paired 95% interval; ▲/▼: the setting's and the hull's own intervals are disjoint. *hull "
              "edge*: the baseline settings whose mixture makes the semantic-distance hull there. *Δ vs best line* "
              "(secondary): semantic distance minus the best single family's piecewise-linear line, the yardstick of "
              "earlier reports, which lies under the hull and so flatters the contender.", "",
              "| setting | ref NLL | hull edge | Δ semantic distance | Δ distinct-k | Δ effective distance | "
              "Δ Vendi | Δ degenerate | Δ vs best line |", "|---|---|---|---|---|---|---|---|---|"]
        for r in matched:
            m, line = r["vs_hull"], r.get("vs_best_line") or {}
            sec = (f"{line['delta']:+.3f} [{line['ci'][0]:+.3f}, {line['ci'][1]:+.3f}] ({line['best_line']})"
                   if line.get("best_line") else "")
            L.append(f"| {r['label']} | {format_ci(r['ref_nll'])} | {' + '.join(m.get('hull_edge') or ['outside'])} | "
                     f"{_fmt_match(m, 'semantic_distance')} | {_fmt_match(m, 'distinct_k', '+.2f')} | "
                     f"{_fmt_match(m, 'effective_semantic_distance')} | {_fmt_match(m, 'vendi_semantic', '+.2f')} | "
                     f"{_fmt_match(m, 'degenerate_frac')} | {sec} |")
        L += ["", "![distinct-k frontier](frontier_distinct_k.png)", ""]
    L += ["## Every setting", "",
          "Δ sem. vs T: semantic distance minus the temperature frontier's at the same reference NLL "
          "(empty: outside the frontier's range).", ""]
    for g, rows in groups.items():
        L += [f"### {g}", "",
              "| setting | ref NLL | semantic distance | Vendi | distinct-k | degenerate | effective distance | "
              "distinct-2 | tokens | Δ sem. vs T | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            v = r["vs_temperature_at_matched_nll"]
            d = (f"{v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"
                 if v and math.isfinite(v["delta"]) else "")
            s = r["setting"]
            L.append(f"| {s['knob']}={s[s['knob']]:g} | {format_ci(r['ref_nll'])} | "
                     f"{format_ci(r['semantic_distance'])} | {format_ci(r['vendi_semantic'], '.2f')} | "
                     f"{format_ci(r['distinct_k'], '.2f')} | "
                     f"{format_ci(r['degenerate_frac'], '.2f')} | {format_ci(r['effective_semantic_distance'])} | "
                     f"{format_ci(r['distinct_2'])} | {r['mean_tokens']['mean']:.1f} | {d} | "
                     f"{_fmt_seconds(res.get('setting_seconds', {}).get(r['label']))} |")
        L.append("")
    if res["skipped"]:
        L += ["## Skipped", ""] + [f"- {s['label']}: {s['why']}" for s in res["skipped"]] + [""]
    L += _learned_section(res, out)
    L += _examples_section(res)
    (out / "report.md").write_text("\n".join(L) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------ run

def _setting_file(cfg: LMCompareConfig, prompts: list[dict], c: Contender, source: str) -> Path:
    """Where one setting's results are kept: named by the digest of everything that decides them."""
    key = {"setting": setting_key(c), "model": source, "prompts": [p["prompt"] for p in prompts],
           **{k: getattr(cfg, k) for k in ("branches", "max_new_tokens", "seeds", "n_branches", "k", "seed")}}
    if cfg.first_seed:
        key["first_seed"] = cfg.first_seed
    return digest_path(Path(cfg.out) / "settings", key)


def _load_setting(path: Path) -> dict | None:
    raw = load_record(path)
    if raw is None:
        return None  # missing or cut short: run the setting again
    try:
        return {"per_prompt": {k: np.array(v, dtype=float) for k, v in raw["per_prompt"].items()},
                "example": raw["texts"], "seconds": raw.get("seconds")}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # not a setting record: run the setting again


def _save_setting(path: Path, c: Contender, r: dict) -> None:
    """Atomic: an interrupted run leaves no half-written setting."""
    save_record(path, {"label": c.label, "setting": dataclasses.asdict(c),
                       "per_prompt": {k: [float(x) for x in v] for k, v in r["per_prompt"].items()},
                       "texts": r["example"], "seconds": r.get("seconds")})


def run_compare_lm(cfg: LMCompareConfig, track: Callable[[list, str], Iterable] | None = None) -> dict:
    """Run every contender of ``cfg`` and write ``metrics.json``, ``report.md`` and ``frontier.png`` to ``cfg.out``."""
    from ..hf.generate import check_context, prompt_ids, uses_chat
    from ..hf.registry import load_pretrained
    from ..metrics.semantic import get_embedder

    t0 = time.time()
    prompts = load_prompts(cfg.prompts, cfg.limit)
    dev = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ref, tok, src = load_pretrained(cfg.model, device=dev)
    ref.eval()
    chat = uses_chat(tok, None)
    ids_list = [prompt_ids(tok, p["prompt"], chat) for p in prompts]
    for ids in ids_list:
        check_context(ref, len(ids), cfg.max_new_tokens)
    embedder = None if cfg.report_only else get_embedder()
    source = f"{src.kind} {src.path}"
    model_key = src.name if src.kind == "registry" else source  # a registry name is the same model anywhere
    # a setting already run with the same model, prompts and counts is read back (resume after an
    # interruption; a new report from the same generations)
    results: dict[Contender, dict] = {}
    for c in cfg.contenders:
        kept = _load_setting(_setting_file(cfg, prompts, c, model_key))
        if kept is not None:
            results[c] = kept
    # one grafted copy at a time: contenders are run grouped by graft, reported in config order
    by_graft: dict[tuple, list[Contender]] = {}
    for c in cfg.contenders:
        if c not in results:
            key = _graft_key(c)
            by_graft.setdefault(key, []).append(c)
    todo = [c for cs in by_graft.values() for c in cs]
    skipped = []
    if cfg.report_only:
        skipped = [{"label": c.label, "why": "not run yet (--report-only)"} for c in todo]
        todo = []
    it = track(todo, "contenders") if track is not None and todo else todo
    current_key, model = None, None
    for c in it:
        key = _graft_key(c)
        if key != current_key:
            model = None
            model = ref if not key else _graft_copy(ref, c, cfg).eval()
            current_key = key
        log.info("running %s", c.label)
        t = time.time()
        results[c] = _run_contender(c, model, ref, tok, prompts, ids_list, cfg, embedder, dev)
        results[c]["seconds"] = time.time() - t
        _save_setting(_setting_file(cfg, prompts, c, model_key), c, results[c])
    res = summarise(cfg, prompts, results, skipped, source, time.time() - t0)
    write_report(res, Path(cfg.out))
    return res
