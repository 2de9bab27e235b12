"""``mot compare --model``: thought branches against sampling knobs on a real LM, by *semantic* diversity.

For every open-ended prompt (``assets/prompts/open_ended.jsonl``, or any JSONL with a ``"prompt"``
field, e.g. NoveltyBench's ``curated.jsonl``), each contender setting writes ``branches``
continuations per prompt (chat template when the tokenizer has one) under each of ``seeds`` seeds.
Contenders, each swept over its own knob (the grid is :attr:`LMCompareConfig.contenders`):

* ``temperature``: plain temperature (0 = greedy);
* ``top-p``: nucleus sampling at T = 1;
* ``min-p``: min-p sampling at T = 1 and at T = 1.5;
* ``two-phase``: a hot temperature for the first m tokens, then a cold one (the temperature of the
  decoder's ``Sampling`` is switched from its ``on_token`` callback after token m);
* ``thoughts``: the model grafted with thought layers (``hf.graft``; branches tied to the MLP, so
  the grafted model equals the original without noise), creativity swept, with greedy or low-T
  decoding, per-token or persistent noise (``noise_mode``), in all / the lower half / the upper half
  of the layers, optionally noise on the first m generated tokens only (``noise_until``).

Quality is the mean per-token NLL (nats) of each continuation under the *ungrafted* model (the
reference; one padded batch per prompt); a continuation that stopped at once has no tokens and is
left out of the mean. Diversity of a prompt's branches: :func:`metrics.semantic.set_report`
(semantic distance, Vendi, distinct-k, EAD, degenerate fraction, effective metrics) and lexical
distinct-2/3. Per prompt, each metric is averaged over seeds; intervals are 95% paired bootstrap
intervals over prompts (the same resamples for every contender). Each setting is also compared with
the temperature frontier at its own reference NLL (semantic distance, contender minus frontier).

Batching: the rows of several prompts (``batch_prompts`` prompts × ``branches``) are decoded in one
left-padded pass (``hf.vary.padded_hf_step``, ``RowPositionNoise``), so a row is what it would be
alone (``noise_tokens`` becomes one end position per row). The reference NLL of a setting decoded
by the ungrafted model is read off the decoder's own log-probabilities (temperature 1, the same
numbers as a separate pass, tested); grafted settings get a separate reference pass.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.jsonl import parse_jsonl
from ..errors import ConfigError, DataError
from . import stats
from .report import finite_json, format_ci, write_json_atomic

log = logging.getLogger(__name__)
PROMPTS_FILE = Path(__file__).parent.parent / "assets" / "prompts" / "open_ended.jsonl"
SEED_STRIDE = 10_000_019  # keeps the row seeds of different sweep seeds apart
LAYER_SETS = ("all", "lower", "upper")
NOISE_MODES = ("token", "persistent", "orthogonal")
# the thought setting the default report's verdict is about, declared before the run (the pilots' best)
PRIMARY_LABEL = "thoughts (greedy, persistent, all layers) creativity=2"
EXAMPLE_PROMPTS, EXAMPLE_BRANCHES = 3, 4  # texts kept in metrics.json per setting
METRICS = ("ref_nll", "semantic_distance", "vendi_semantic", "distinct_k", "ead_2", "degenerate_frac",
           "effective_semantic_distance", "effective_vendi_semantic", "effective_distinct_k", "distinct_2",
           "distinct_3", "mean_tokens")


@dataclass(frozen=True)
class Contender:
    """One setting. ``family`` + ``group`` name its frontier line; ``knob`` names the swept field."""

    family: str  # temperature | top-p | min-p | two-phase | thoughts
    knob: str
    temperature: float = 1.0
    top_p: float | None = None
    min_p: float | None = None
    hot_temperature: float | None = None  # two-phase: temperature of the first hot_tokens tokens
    hot_tokens: int = 0
    creativity: float | None = None  # thoughts: None = no graft
    layers: str = "all"  # thoughts: all | lower | upper
    noise_mode: str = "token"  # thoughts: token | persistent | orthogonal
    noise_tokens: int | None = None  # thoughts: noise on the first m generated tokens only

    @property
    def group(self) -> str:
        """The frontier line: every field but the knob."""
        if self.family == "temperature":
            return "temperature"
        if self.family == "top-p":
            return f"top-p (T={self.temperature:g})"
        if self.family == "min-p":
            return f"min-p (T={self.temperature:g})"
        if self.family == "two-phase":
            return f"two-phase (T={self.hot_temperature:g} then {self.temperature:g})"
        dec = "greedy" if self.temperature == 0 else f"T={self.temperature:g}"
        until = f", first {self.noise_tokens} tokens" if self.noise_tokens is not None else ""
        return f"thoughts ({dec}, {self.noise_mode}, {self.layers} layers{until})"

    @property
    def label(self) -> str:
        return f"{self.group} {self.knob}={getattr(self, self.knob):g}"

    def validate(self) -> None:
        if self.family not in ("temperature", "top-p", "min-p", "two-phase", "thoughts"):
            raise ConfigError(f"unknown contender family {self.family!r}")
        if self.family == "thoughts":
            if self.creativity is None or self.creativity < 0:
                raise ConfigError(f"{self.label}: thoughts need a creativity >= 0")
            if self.layers not in LAYER_SETS:
                raise ConfigError(f"{self.label}: layers must be one of {LAYER_SETS}")
            if self.noise_mode not in NOISE_MODES:
                raise ConfigError(f"{self.label}: noise_mode must be one of {NOISE_MODES}")
        if self.family == "two-phase" and (self.hot_temperature is None or self.hot_tokens < 1):
            raise ConfigError(f"{self.label}: two-phase needs hot_temperature and hot_tokens >= 1")


def _sweep(family, knob, values, **fixed) -> list[Contender]:
    return [Contender(family, knob, **{**fixed, knob: v}) for v in values]


def default_contenders() -> tuple[Contender, ...]:
    """The report's grid, sized to run within two hours on a 2-core CPU (46 prompts x 8 branches x 2
    seeds x 32 tokens). Every baseline keeps the setting range where the thought settings' quality
    lies (reference NLL ~1-2 nats); the thought settings were picked from pilots (small prompt sets):
    per-token noise saturates below c = 2, persistent noise collapses into loops from c = 4 on."""
    c = _sweep("temperature", "temperature", (0.0, 0.3, 0.5, 0.7, 1.0))
    c += _sweep("top-p", "top_p", (0.7, 0.9), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.1, 0.3), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.3,), temperature=1.5)
    c += _sweep("two-phase", "hot_tokens", (4,), hot_temperature=1.5, temperature=0.3)
    c += _sweep("thoughts", "creativity", (1.5,), temperature=0.0, noise_mode="token", layers="all")
    c += _sweep("thoughts", "creativity", (2.0, 3.0), temperature=0.0, noise_mode="token", layers="all",
                noise_tokens=8)
    c += _sweep("thoughts", "creativity", (2.0,), temperature=0.0, noise_mode="persistent", layers="all")
    c += _sweep("thoughts", "creativity", (2.0,), temperature=0.0, noise_mode="orthogonal", layers="all")
    for layers in ("lower", "upper"):
        c += _sweep("thoughts", "creativity", (2.0,), temperature=0.0, noise_mode="persistent", layers=layers)
    # low-temperature decoding with thought noise (the setting closest to the frontier, sampled at T = 0.3)
    c += _sweep("thoughts", "creativity", (2.0,), temperature=0.3, noise_mode="persistent", layers="upper")
    return tuple(c)


def wide_contenders() -> tuple[Contender, ...]:
    """A wider grid (about 80 settings, ~10x the default's time): a coarse sweep to pick settings from."""
    c = _sweep("temperature", "temperature", (0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5))
    c += _sweep("top-p", "top_p", (0.5, 0.7, 0.8, 0.9, 0.95), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.02, 0.05, 0.1, 0.2, 0.3), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.1, 0.2, 0.3, 0.4), temperature=1.5)
    c += _sweep("two-phase", "hot_tokens", (1, 2, 4, 8), hot_temperature=1.5, temperature=0.3)
    for temp in (0.0, 0.5):
        for mode in NOISE_MODES:
            for layers in LAYER_SETS:
                c += _sweep("thoughts", "creativity", (0.5, 1.0, 2.0, 3.0), temperature=temp, noise_mode=mode,
                            layers=layers)
    c += _sweep("thoughts", "creativity", (1.0, 2.0, 4.0), temperature=0.0, noise_mode="token", layers="all",
                noise_tokens=8)
    return tuple(c)


CONFIRM = Contender("thoughts", "creativity", temperature=0.3, creativity=2.0, noise_mode="persistent",
                    layers="upper")


def confirm_contenders() -> tuple[Contender, ...]:
    """The best thought setting of the committed report against the baselines around its NLL (run it with
    another ``--first-seed``: a confirmation on fresh draws)."""
    c = _sweep("temperature", "temperature", (0.0, 0.5, 0.7))
    c += _sweep("min-p", "min_p", (0.1, 0.3), temperature=1.0)
    return (*c, CONFIRM)


GRIDS = {"default": default_contenders, "wide": wide_contenders, "confirm": confirm_contenders}


def quick_contenders() -> tuple[Contender, ...]:
    """A tiny grid touching every family (the tests and ``--quick``). Sized for a tiny *random* model,
    whose logits barely feel MLP noise: its strong creativity (40) would break a real model's text."""
    c = _sweep("temperature", "temperature", (0.0, 1.5))
    c += _sweep("top-p", "top_p", (0.9,), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.1,), temperature=1.5)
    c += _sweep("two-phase", "hot_tokens", (2,), hot_temperature=1.5, temperature=0.3)
    c += _sweep("thoughts", "creativity", (1.0, 40.0), temperature=0.0, noise_mode="token", layers="all")
    c += _sweep("thoughts", "creativity", (40.0,), temperature=0.0, noise_mode="persistent", layers="upper")
    c += _sweep("thoughts", "creativity", (40.0,), temperature=0.0, noise_mode="orthogonal", layers="all")
    c += _sweep("thoughts", "creativity", (40.0,), temperature=0.0, noise_mode="token", layers="lower",
                noise_tokens=2)
    return tuple(c)


@dataclass
class LMCompareConfig:
    """Settings of one LM comparison (``quick()`` shrinks every count)."""

    model: str = "smollm2"
    prompts: str | None = None  # JSONL with a "prompt" field; None = the shipped open_ended.jsonl
    limit: int | None = None  # the first N prompts
    branches: int = 8
    max_new_tokens: int = 32
    seeds: int = 2
    primary: str = PRIMARY_LABEL  # the setting the verdict is about, declared before the run
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
    """The rows of a JSONL prompt file (each needs a non-empty ``"prompt"`` string; other fields are kept)."""
    p = Path(path) if path is not None else PROMPTS_FILE
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"prompts file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"prompts file {p} is not readable UTF-8 text: {e}") from None
    rows = []
    for i, row in parse_jsonl(text, f"prompts file {p}"):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f'prompts file {p}, line {i}: needs a non-empty "prompt" string')
        rows.append(row)
    if not rows:
        raise DataError(f"prompts file {p} holds no prompt")
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


@torch.no_grad()
def _generate(model, tok, c: Contender, ids_list: list[list[int]], seeds: list[int], max_new_tokens: int,
              dev) -> list[tuple[list[int], str, float]]:
    """Per prompt (in order) and per seed: ``(continuation ids, text, mean NLL under the decoding model)``;
    all rows in one left-padded pass.

    Greedy decoding without noise writes the same text for every seed: one row per prompt is decoded
    and repeated. Noise on the first m tokens only gives each row its own end position (prompt length
    + m), so prompts of different lengths still share the pass.
    """
    from ..generation.autoregressive import LOOKAHEAD
    from ..generation.decoder import Sampling, decode
    from ..hf.generate import stop_token_ids
    from ..hf.graft import thought_noise
    from ..hf.vary import RowPositionNoise, _pad_id, left_pad, padded_hf_step
    from ..rng import RowNoise

    if c.family == "temperature" and c.temperature == 0 and len(seeds) > 1:
        one = _generate(model, tok, c, ids_list, seeds[:1], max_new_tokens, dev)
        return [r for r in one for _ in seeds]
    rows = [ids for ids in ids_list for _ in seeds]
    row_seeds = [s for _ in ids_list for s in seeds]
    ids, mask = left_pad(rows, _pad_id(tok), dev)
    look = min(LOOKAHEAD, max_new_tokens)
    noise = RowPositionNoise(RowNoise(row_seeds, dev), ids.shape[1] - mask.sum(-1), lookahead=look)
    hot = c.family == "two-phase"
    sampling = Sampling(c.hot_temperature if hot else c.temperature, None, c.top_p, c.min_p)

    def on_token(i, nxt, done):
        if hot and i == c.hot_tokens - 1:
            sampling.temperature = c.temperature  # read by the decoder at every step

    if c.family == "thoughts":
        kw = {}
        if c.noise_tokens is not None:
            kw["noise_until"] = torch.tensor([len(r) + c.noise_tokens for r in rows], device=dev)
        ctx = thought_noise(model, RowNoise(row_seeds, dev, lookahead=look),
                            torch.full((len(rows),), float(c.creativity), device=dev), **kw)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        gen = decode(padded_hf_step(model, mask), ids, max_new_tokens, noise, sampling,
                     stop_ids=stop_token_ids(tok, model), on_token=on_token if hot else None)
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
    """Mean per-token NLL (nats) of each continuation after ``prompt`` under ``ref``, one right-padded
    batch; NaN for an empty continuation."""
    T = len(prompt) + max(1, max(len(x) for x in conts))
    ids = torch.zeros(len(conts), T, dtype=torch.long)
    mask = torch.zeros(len(conts), T, dtype=torch.long)
    for b, x in enumerate(conts):  # building the batch from Python lists is per row by nature
        row = prompt + x
        ids[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    logits = ref(input_ids=ids, attention_mask=mask).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    lens = torch.tensor([len(x) for x in conts], device=dev)
    pos = torch.arange(1, T, device=dev)[None, :]
    sel = (pos >= len(prompt)) & (pos < len(prompt) + lens[:, None])
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
    for si in range(cfg.seeds):
        seeds = [cfg.first_seed + si * SEED_STRIDE + j for j in range(cfg.branches)]
        for start in range(0, P, chunk):
            sub = ids_list[start:start + chunk]
            res = _generate(model, tok, c, sub, seeds, cfg.max_new_tokens, dev)
            for q, ids in enumerate(sub):
                p = start + q
                rows = res[q * cfg.branches:(q + 1) * cfg.branches]
                conts, texts = [r[0] for r in rows], [r[1] for r in rows]
                # the ungrafted model decoded these itself: its own log-probabilities are the reference
                nll = np.array([r[2] for r in rows]) if model is ref else reference_nll(ref, ids, conts, dev)
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
    """``c``'s semantic distance minus the temperature frontier's at ``c``'s reference NLL (paired
    bootstrap): :func:`matched_quality` with the temperature line as the only baseline."""
    m = matched_quality(means, {"temperature": temps}, c).get("semantic_distance") if len(temps) >= 2 else None
    return {"delta": m["delta"], "ci": m["ci"]} if m else {"delta": float("nan"), "ci": [float("nan")] * 2}


# the thought setting declared before the full run as the one the verdict is about (the pilots' best)
PRIMARY = Contender("thoughts", "creativity", temperature=0.0, creativity=2.0, noise_mode="persistent", layers="all")
BASELINES = ("temperature", "top-p", "min-p", "two-phase")
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
    with warnings.catch_warnings():  # a prompt whose every continuation was empty has NaN NLL
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: np.concatenate([[np.nanmean(v)], np.nanmean(v[idx], 1)]) for k, v in per.items()}


def matched_quality(res_means: dict[Contender, dict], lines: dict[str, list[Contender]], c: Contender) -> dict:
    """``c`` against the best baseline at its own reference NLL, per metric, paired over bootstrap resamples.

    For each resample, every baseline line is the piecewise-linear curve through its settings'
    (mean reference NLL, mean metric); the *best baseline* is the largest of the lines that reach
    ``c``'s NLL (the envelope; the line chosen is the one that is best for semantic distance).
    Returns per metric the point delta (``c`` minus the envelope) with its 95% interval, ``c``'s and the
    envelope's own intervals and whether they are disjoint, and which line the envelope came from.
    """
    me = res_means[c]
    R = me["ref_nll"].shape[0]
    line_xy = {g: (np.stack([res_means[m]["ref_nll"] for m in ms], 1), ms) for g, ms in lines.items()}
    best_line = [None] * R
    env_sem = np.full(R, np.nan)
    for r in range(R):  # which line is best at c's NLL, resample by resample
        x = me["ref_nll"][r]
        for g, (xs, ms) in line_xy.items():
            ys = np.array([res_means[m]["semantic_distance"][r] for m in ms])
            ok = np.isfinite(xs[r]) & np.isfinite(ys)
            if ok.sum() < 2 or not math.isfinite(x):
                continue
            y = stats.interpolate_frontier(xs[r][ok], ys[ok], x)
            if math.isfinite(y) and not y <= env_sem[r]:
                env_sem[r], best_line[r] = y, g
    out = {"best_line": best_line[0], "covered": float(np.mean([b is not None for b in best_line[1:]]))}
    for metric in VERDICT_METRICS:
        env = np.full(R, np.nan)
        for r in range(R):
            if best_line[r] is None:
                continue
            xs, ms = line_xy[best_line[r]]
            ys = np.array([res_means[m][metric][r] for m in ms])
            ok = np.isfinite(xs[r]) & np.isfinite(ys)
            if ok.sum() >= 2:
                env[r] = stats.interpolate_frontier(xs[r][ok], ys[ok], me["ref_nll"][r])
        d = me[metric] - env
        if not math.isfinite(d[0]):
            out[metric] = None
            continue
        c_ci, e_ci = stats.interval(me[metric][1:]), stats.interval(env[1:])
        out[metric] = {"delta": float(d[0]), "ci": list(stats.interval(d[1:])), "setting": float(me[metric][0]),
                       "setting_ci": list(c_ci), "baseline": float(env[0]), "baseline_ci": list(e_ci),
                       "disjoint_above": bool(c_ci[0] > e_ci[1]), "disjoint_below": bool(c_ci[1] < e_ci[0])}
    return out


def verdict(name: str, m: dict) -> tuple[bool, str]:
    """Whether ``m`` (a :func:`matched_quality` result) meets the goal, and a sentence that says why."""
    sem, dk, deg = m.get("semantic_distance"), m.get("distinct_k"), m.get("degenerate_frac")
    if sem is None or dk is None:
        return False, f"{name}: its reference NLL lies outside every baseline line's range, so no matched comparison"
    wins = sem["disjoint_above"] and dk["disjoint_above"]
    fewer = deg is None or deg["ci"][0] <= 0  # not more degenerate branches (the interval reaches 0 or below)
    word = "meets the goal" if wins and fewer else "does not meet the goal"
    def iv(x, f=".3f"):
        return f"[{x[0]:{f}}, {x[1]:{f}}]"

    why = (f"semantic distance {sem['setting']:.3f} {iv(sem['setting_ci'])} vs the best baseline ({m['best_line']}) "
           f"{sem['baseline']:.3f} {iv(sem['baseline_ci'])}, delta {sem['delta']:+.3f} {iv(sem['ci'], '+.3f')}; "
           f"distinct-k {dk['setting']:.2f} {iv(dk['setting_ci'], '.2f')} vs {dk['baseline']:.2f} "
           f"{iv(dk['baseline_ci'], '.2f')}, delta {dk['delta']:+.2f} {iv(dk['ci'], '+.2f')}")
    if deg is not None:
        why += f"; degenerate fraction {deg['setting']:.3f} vs {deg['baseline']:.3f}"
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


def summarise(cfg: LMCompareConfig, prompts: list[dict], results: dict[Contender, dict], skipped: list[dict],
              source: str, seconds: float) -> dict:
    idx = stats.bootstrap_indices(len(prompts), cfg.bootstrap, cfg.seed)
    temps = [c for c in cfg.contenders if c.family == "temperature" and c in results]
    means = {c: _resampled(r["per_prompt"], idx) for c, r in results.items()}
    lines = baseline_lines(c for c in cfg.contenders if c in results)
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
        if c.family == "thoughts" and lines:
            r["vs_best_baseline"] = matched_quality(means, lines, c)
        rows.append(r)
    conf = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "contenders"}
    conf["contenders"] = [c.label for c in cfg.contenders]
    return {"config": conf, "model_source": source, "n_prompts": len(prompts),
            "categories": sorted({str(p.get("category", "")) for p in prompts}), "rows": rows, "skipped": skipped,
            "seconds": seconds, "verdicts": _verdicts(rows, cfg.primary), "primary": cfg.primary,
            "baseline_lines": {g: [c.label for c in cs] for g, cs in lines.items()},
            "example_prompts": [prompts[i]["prompt"] for i in shown],
            "setting_seconds": {c.label: results[c].get("seconds") for c in cfg.contenders if c in results}}


def _verdicts(rows: list[dict], primary_label: str) -> list[dict]:
    """The goal checked for the pre-declared primary setting and for the best other thought setting."""
    out = []
    matched = [r for r in rows if r.get("vs_best_baseline")]
    primary = next((r for r in matched if r["label"] == primary_label), None)
    if primary is not None:
        ok, text = verdict(f"Primary setting ({primary_label})", primary["vs_best_baseline"])
        out.append({"which": "primary", "label": primary_label, "meets_goal": ok, "text": text})
    scored = [r for r in matched if r["vs_best_baseline"].get("semantic_distance") and r["label"] != primary_label]
    if scored:
        best = max(scored, key=lambda r: r["vs_best_baseline"]["semantic_distance"]["delta"])
        ok, text = verdict(f"Best thought setting, chosen on the same data ({best['label']})", best["vs_best_baseline"])
        out.append({"which": "best", "label": best["label"], "meets_goal": ok, "text": text})
    return out


def plot_frontier(res: dict, path: Path, metric: str = "semantic_distance",
                  ylabel: str = "mean pairwise semantic distance (higher = more diverse)") -> None:
    """``metric`` against reference NLL, one line per frontier group, with 95% intervals on both axes."""
    from .report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6))
    groups: dict[str, list[dict]] = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], []).append(r)
    for g, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["ref_nll"]["mean"])
        xs = np.array([r["ref_nll"]["mean"] for r in rows])
        ys = np.array([r[metric]["mean"] for r in rows])
        xe = np.abs(np.array([r["ref_nll"]["ci"] for r in rows]).T - xs)
        ye = np.abs(np.array([r[metric]["ci"] for r in rows]).T - ys)
        fam = rows[0]["family"]
        fmt = {"temperature": "o-", "top-p": "s--", "min-p": "v--", "two-phase": "D:"}.get(fam, "^-")
        primary = [r for r in rows if r["label"] == res.get("primary")]
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt=fmt, label=g, alpha=0.85, capsize=2, ms=5 if fam in BASELINES else 7,
                    lw=2.2 if fam == "temperature" else 1, elinewidth=0.7)
        for r in primary:
            ax.scatter([r["ref_nll"]["mean"]], [r[metric]["mean"]], s=200, facecolors="none", edgecolors="k",
                       zorder=5, label="primary setting (declared before the run)")
    ax.set_xlabel("reference NLL per token under the ungrafted model, nats (lower = better quality)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Quality vs {metric.replace('_', ' ')} (95% intervals over prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="best")
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
    plot_frontier(res, out / "frontier.png")
    plot_frontier(res, out / "frontier_distinct_k.png", "distinct_k",
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
              "The goal: at matched reference NLL, a thought setting's semantic distance *and* distinct-k above the "
              "best baseline's (temperature, top-p, min-p, two-phase: the largest of the baseline lines at that NLL), "
              "their 95% intervals disjoint, with no more degenerate branches (the paired interval of the difference "
              "in degenerate fraction reaches 0 or below). The primary setting was declared before the run "
              f"(`{res.get('primary')}`); the best setting is chosen on the same data, so its margin is optimistic.",
              ""]
        L += [f"- **{'meets' if v['meets_goal'] else 'misses'}**: {v['text']}" for v in res["verdicts"]] + [""]
    groups: dict[str, list[dict]] = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], []).append(r)
    matched = [r for r in res["rows"] if r.get("vs_best_baseline")]
    if matched:
        L += ["## Thought settings against the best baseline at matched quality", "",
              "Each column: the setting minus the best baseline line at the setting's own reference NLL, with the "
              "paired 95% interval; ▲/▼: the two settings' own intervals are disjoint. *best line*: the baseline "
              "line that is highest in semantic distance there (top-p and min-p lines end at greedy decoding, the "
              "two-phase line at its cold temperature: the settings their knobs tend to).", "",
              "| setting | ref NLL | best line | Δ semantic distance | Δ distinct-k | Δ effective distance | "
              "Δ Vendi | Δ degenerate |", "|---|---|---|---|---|---|---|---|"]
        for r in matched:
            m = r["vs_best_baseline"]
            L.append(f"| {r['label']} | {format_ci(r['ref_nll'])} | {m.get('best_line') or 'outside'} | "
                     f"{_fmt_match(m, 'semantic_distance')} | {_fmt_match(m, 'distinct_k', '+.2f')} | "
                     f"{_fmt_match(m, 'effective_semantic_distance')} | {_fmt_match(m, 'vendi_semantic', '+.2f')} | "
                     f"{_fmt_match(m, 'degenerate_frac')} |")
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
    L += _examples_section(res)
    (out / "report.md").write_text("\n".join(L) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------ run

def _setting_file(cfg: LMCompareConfig, prompts: list[dict], c: Contender, source: str) -> Path:
    """Where one setting's results are kept: named by a hash of everything that decides them."""
    key = {"setting": dataclasses.asdict(c), "model": source, "prompts": [p["prompt"] for p in prompts],
           **{k: getattr(cfg, k) for k in ("branches", "max_new_tokens", "seeds", "n_branches", "k", "seed")}}
    if cfg.first_seed:
        key["first_seed"] = cfg.first_seed
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.out) / "settings" / f"{digest}.json"


def _load_setting(path: Path) -> dict | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {"per_prompt": {k: np.array(v, dtype=float) for k, v in raw["per_prompt"].items()},
                "example": raw["texts"], "seconds": raw.get("seconds")}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or cut short: run the setting again


def _save_setting(path: Path, c: Contender, r: dict) -> None:
    """Written to a temporary file and renamed: an interrupted run leaves no half-written setting."""
    write_json_atomic(path, {"label": c.label, "setting": dataclasses.asdict(c),
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
    embedder = get_embedder()
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
            key = (c.layers, c.noise_mode) if c.family == "thoughts" else ()
            by_graft.setdefault(key, []).append(c)
    todo = [c for cs in by_graft.values() for c in cs]
    it = track(todo, "contenders") if track is not None and todo else todo
    current_key, model = None, None
    for c in it:
        key = (c.layers, c.noise_mode) if c.family == "thoughts" else ()
        if key != current_key:
            model = None
            model = ref if not key else _graft_copy(ref, c, cfg).eval()
            current_key = key
        log.info("running %s", c.label)
        t = time.time()
        results[c] = _run_contender(c, model, ref, tok, prompts, ids_list, cfg, embedder, dev)
        results[c]["seconds"] = time.time() - t
        _save_setting(_setting_file(cfg, prompts, c, model_key), c, results[c])
    res = summarise(cfg, prompts, results, [], source, time.time() - t0)
    write_report(res, Path(cfg.out))
    return res
