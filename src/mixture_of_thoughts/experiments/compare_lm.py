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
alone; contenders with ``noise_tokens`` are decoded one prompt at a time (``noise_until`` is one
absolute position per call).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.jsonl import parse_jsonl
from ..errors import ConfigError, DataError
from . import stats
from .report import finite_json, format_ci

log = logging.getLogger(__name__)
PROMPTS_FILE = Path(__file__).parent.parent / "assets" / "prompts" / "open_ended.jsonl"
SEED_STRIDE = 10_000_019  # keeps the row seeds of different sweep seeds apart
LAYER_SETS = ("all", "lower", "upper")
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
    noise_mode: str = "token"  # thoughts: token | persistent
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
        if self.family == "two-phase" and (self.hot_temperature is None or self.hot_tokens < 1):
            raise ConfigError(f"{self.label}: two-phase needs hot_temperature and hot_tokens >= 1")


def _sweep(family, knob, values, **fixed) -> list[Contender]:
    return [Contender(family, knob, **{**fixed, knob: v}) for v in values]


def default_contenders() -> tuple[Contender, ...]:
    """The full grid (about 100 settings; trim it in the config to size a run)."""
    c = _sweep("temperature", "temperature", (0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5))
    c += _sweep("top-p", "top_p", (0.8, 0.9, 0.95, 0.99), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.02, 0.05, 0.1, 0.2), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.05, 0.1, 0.2, 0.3), temperature=1.5)
    c += _sweep("two-phase", "hot_tokens", (1, 2, 4, 8), hot_temperature=1.5, temperature=0.3)
    for temp in (0.0, 0.5):
        for mode in ("token", "persistent"):
            for layers in LAYER_SETS:
                c += _sweep("thoughts", "creativity", (0.25, 0.5, 1.0, 2.0), temperature=temp, noise_mode=mode,
                            layers=layers)
    c += _sweep("thoughts", "creativity", (0.5, 1.0, 2.0, 4.0), temperature=0.0, noise_mode="token", layers="all",
                noise_tokens=8)
    return tuple(c)


def quick_contenders() -> tuple[Contender, ...]:
    """A tiny grid touching every family (the tests and ``--quick``). Sized for a tiny *random* model,
    whose logits barely feel MLP noise: its strong creativity (40) would break a real model's text."""
    c = _sweep("temperature", "temperature", (0.0, 1.5))
    c += _sweep("top-p", "top_p", (0.9,), temperature=1.0)
    c += _sweep("min-p", "min_p", (0.1,), temperature=1.5)
    c += _sweep("two-phase", "hot_tokens", (2,), hot_temperature=1.5, temperature=0.3)
    c += _sweep("thoughts", "creativity", (1.0, 40.0), temperature=0.0, noise_mode="token", layers="all")
    c += _sweep("thoughts", "creativity", (40.0,), temperature=0.0, noise_mode="persistent", layers="upper")
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
    max_new_tokens: int = 64
    seeds: int = 2
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
              dev) -> list[tuple[list[int], str]]:
    """Per prompt (in order) and per seed: ``(continuation ids, text)``; all rows in one padded pass."""
    from ..generation.autoregressive import LOOKAHEAD
    from ..generation.decoder import Sampling, decode
    from ..hf.generate import stop_token_ids
    from ..hf.graft import thought_noise
    from ..hf.vary import RowPositionNoise, _pad_id, left_pad, padded_hf_step
    from ..rng import RowNoise

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
        until = None
        if c.noise_tokens is not None:
            assert len(ids_list) == 1, "noise_tokens contenders decode one prompt at a time"
            until = len(ids_list[0]) + c.noise_tokens
        kw = {"noise_until": until} if until is not None else {}
        ctx = thought_noise(model, RowNoise(row_seeds, dev, lookahead=look),
                            torch.full((len(rows),), float(c.creativity), device=dev), **kw)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        gen = decode(padded_hf_step(model, mask), ids, max_new_tokens, noise, sampling,
                     stop_ids=stop_token_ids(tok, model), on_token=on_token if hot else None)
    T0 = ids.shape[1]
    toks = gen.tokens[:, T0:].tolist()
    out = []
    for b, L in enumerate(gen.lengths.tolist()):
        cont = toks[b][:L]
        out.append((cont, tok.decode(cont, skip_special_tokens=True)))
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
    """Per-prompt arrays of every metric (averaged over seeds) and a few example texts."""
    from ..metrics.diversity import distinct_n
    from ..metrics.semantic import set_report

    P = len(prompts)
    acc = {k: np.zeros((cfg.seeds, P)) for k in METRICS}
    examples = []
    chunk = 1 if c.noise_tokens is not None else cfg.batch_prompts
    for si in range(cfg.seeds):
        seeds = [si * SEED_STRIDE + j for j in range(cfg.branches)]
        for start in range(0, P, chunk):
            sub = ids_list[start:start + chunk]
            res = _generate(model, tok, c, sub, seeds, cfg.max_new_tokens, dev)
            for q, ids in enumerate(sub):
                p = start + q
                rows = res[q * cfg.branches:(q + 1) * cfg.branches]
                conts, texts = [r[0] for r in rows], [r[1] for r in rows]
                nll = reference_nll(ref, ids, conts, dev)
                rep = set_report(texts, prompts[p]["prompt"], embedder=embedder)
                acc["ref_nll"][si, p] = np.nanmean(nll) if np.isfinite(nll).any() else np.nan
                for k in METRICS:
                    if k in rep:
                        acc[k][si, p] = rep[k]
                acc["distinct_2"][si, p] = distinct_n(texts, 2)
                acc["distinct_3"][si, p] = distinct_n(texts, 3)
                acc["mean_tokens"][si, p] = float(np.mean([len(x) for x in conts]))
                if si == 0 and p == 0:
                    examples = texts[:3]
    with np.errstate(all="ignore"):
        per_prompt = {k: np.nanmean(v, 0) if np.isfinite(v).any() else np.full(P, np.nan) for k, v in acc.items()}
    return {"per_prompt": per_prompt, "example": examples}


# ------------------------------------------------------------------------------------ summary

def _mean_ci(x: np.ndarray, idx: np.ndarray) -> dict:
    if not np.isfinite(x).all():
        x = np.where(np.isfinite(x), x, np.nanmean(x) if np.isfinite(x).any() else 0.0)
    m, lo, hi = stats.mean_ci(x, idx)
    return {"mean": m, "ci": [lo, hi]}


def _vs_temperature(per: dict, temp_pts: list[dict], idx: np.ndarray, metric: str = "semantic_distance") -> dict:
    """Contender minus the temperature frontier's ``metric`` at the contender's reference NLL (paired bootstrap)."""
    def delta(sel):
        bx = np.array([np.nanmean(t["ref_nll"][sel]) for t in temp_pts])
        by = np.array([np.nanmean(t[metric][sel]) for t in temp_pts])
        ok = np.isfinite(bx) & np.isfinite(by)
        if ok.sum() < 2:
            return float("nan")
        return float(np.nanmean(per[metric][sel]) - stats.interpolate_frontier(bx[ok], by[ok],
                                                                                 np.nanmean(per["ref_nll"][sel])))

    point = delta(np.arange(idx.shape[1]))
    if not math.isfinite(point):
        return {"delta": float("nan"), "ci": [float("nan"), float("nan")]}
    boots = np.array([delta(i) for i in idx])
    lo, hi = stats.interval(boots)
    return {"delta": point, "ci": [lo, hi]}


def summarise(cfg: LMCompareConfig, prompts: list[dict], results: dict[Contender, dict], skipped: list[dict],
              source: str, seconds: float) -> dict:
    idx = stats.bootstrap_indices(len(prompts), cfg.bootstrap, cfg.seed)
    temp_pts = [results[c]["per_prompt"] for c in cfg.contenders if c.family == "temperature" and c in results]
    rows = []
    for c in cfg.contenders:
        if c not in results:
            continue
        per = results[c]["per_prompt"]
        r = {"label": c.label, "family": c.family, "group": c.group, "setting": dataclasses.asdict(c),
             "example": results[c]["example"]}
        for k in METRICS:
            r[k] = _mean_ci(per[k], idx)
        r["vs_temperature_at_matched_nll"] = _vs_temperature(per, temp_pts, idx) if c.family != "temperature" else None
        rows.append(r)
    conf = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "contenders"}
    conf["contenders"] = [c.label for c in cfg.contenders]
    return {"config": conf, "model_source": source, "n_prompts": len(prompts),
            "categories": sorted({str(p.get("category", "")) for p in prompts}), "rows": rows, "skipped": skipped,
            "seconds": seconds}


def plot_frontier(res: dict, path: Path) -> None:
    from .report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    groups: dict[str, list[dict]] = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], []).append(r)
    for g, rows in groups.items():
        xs = np.array([r["ref_nll"]["mean"] for r in rows])
        ys = np.array([r["semantic_distance"]["mean"] for r in rows])
        order = np.argsort(xs)
        fmt = {"temperature": "o-", "top-p": "s--", "min-p": "v--", "two-phase": "D:"}.get(rows[0]["family"], "^-")
        ax.plot(xs[order], ys[order], fmt, label=g, alpha=0.85, lw=2.2 if rows[0]["family"] == "temperature" else 1)
    ax.set_xlabel("reference NLL per token, nats (lower = better quality)")
    ax.set_ylabel("mean pairwise semantic distance (higher = more diverse)")
    ax.set_title("Quality–semantic diversity frontier")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(res: dict, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_frontier(res, out / "frontier.png")
    (out / "metrics.json").write_text(json.dumps(finite_json(res), indent=1, default=str), encoding="utf-8")
    c = res["config"]
    L = ["# Do thought branches beat sampling knobs on semantic diversity?", ""]
    if c.get("command"):
        L += ["Command:", "", f"    {c['command']}", ""]
    L += [f"Model `{c['model']}` ({res['model_source']}); {res['n_prompts']} prompts "
          f"({', '.join(x for x in res['categories'] if x) or 'no categories'}), {c['branches']} branches of at most "
          f"{c['max_new_tokens']} tokens per prompt, {c['seeds']} seeds; 95% paired bootstrap intervals over prompts "
          f"({c['bootstrap']} resamples); {res['seconds']:.0f} s.", "",
          "Quality: mean per-token NLL of the continuations under the ungrafted model (lower is better). Semantic "
          "distance, Vendi and distinct-k from MiniLM embeddings; *effective* = over non-degenerate branches only. "
          "Δ sem. vs T: the setting's semantic distance minus the temperature frontier's at the same reference NLL "
          "(empty: outside the frontier's range).", "",
          "![quality-diversity frontier](frontier.png)", ""]
    groups: dict[str, list[dict]] = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], []).append(r)
    L += ["## Summary", "", "Per line, its setting with the largest semantic distance over the temperature frontier "
          "at the same reference NLL (paired bootstrap interval; *beats* / *loses* when it excludes 0).", "",
          "| line | best setting | Δ semantic distance vs temperature | |", "|---|---|---|---|"]
    for g, rows in groups.items():
        ok = [r for r in rows if r["vs_temperature_at_matched_nll"]
              and math.isfinite(r["vs_temperature_at_matched_nll"]["delta"])]
        if not ok:
            continue
        b = max(ok, key=lambda r: r["vs_temperature_at_matched_nll"]["delta"])
        v = b["vs_temperature_at_matched_nll"]
        word = "beats" if v["ci"][0] > 0 else "loses" if v["ci"][1] < 0 else "tie"
        s = b["setting"]
        L.append(f"| {g} | {s['knob']}={s[s['knob']]:g} | {v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] "
                 f"| {word} |")
    L.append("")
    for g, rows in groups.items():
        L += [f"## {g}", "",
              "| setting | ref NLL | semantic distance | Vendi | distinct-k | degenerate | effective distance | "
              "distinct-2 | tokens | Δ sem. vs T |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            v = r["vs_temperature_at_matched_nll"]
            d = (f"{v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"
                 if v and math.isfinite(v["delta"]) else "")
            s = r["setting"]
            L.append(f"| {s['knob']}={s[s['knob']]:g} | {format_ci(r['ref_nll'])} | "
                     f"{format_ci(r['semantic_distance'])} | {format_ci(r['vendi_semantic'], '.2f')} | "
                     f"{format_ci(r['distinct_k'], '.2f')} | "
                     f"{format_ci(r['degenerate_frac'], '.2f')} | {format_ci(r['effective_semantic_distance'])} | "
                     f"{format_ci(r['distinct_2'])} | {r['mean_tokens']['mean']:.1f} | {d} |")
        L.append("")
    if res["skipped"]:
        L += ["## Skipped", ""] + [f"- {s['label']}: {s['why']}" for s in res["skipped"]] + [""]
    L += ["## Examples", ""]
    for r in res["rows"]:
        L += [f"{r['label']}, first prompt, three branches (separated by `---`):", "", "```"]
        for text in r["example"]:
            L += [*text.splitlines(), "---"]
        L += ["```", ""]
    (out / "report.md").write_text("\n".join(L) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------ run

def _unsupported(c: Contender) -> str | None:
    """Why this build cannot run ``c`` (a graft without noise modes or ``noise_until``), or None."""
    if c.family != "thoughts":
        return None
    from ..hf.graft import graft, thought_noise

    if c.noise_mode != "token" and "noise_mode" not in inspect.signature(graft).parameters:
        return "this graft has no noise_mode"
    if c.noise_tokens is not None and "noise_until" not in inspect.signature(thought_noise).parameters:
        return "thought_noise has no noise_until"
    return None


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
    results: dict[Contender, dict] = {}
    skipped: list[dict] = []
    # one grafted copy at a time: contenders are run grouped by graft, reported in config order
    by_graft: dict[tuple, list[Contender]] = {}
    for c in cfg.contenders:
        key = (c.layers, c.noise_mode) if c.family == "thoughts" else ()
        by_graft.setdefault(key, []).append(c)
    todo = []
    for c in (c for cs in by_graft.values() for c in cs):
        why = _unsupported(c)
        if why:
            skipped.append({"label": c.label, "why": why})
        else:
            todo.append(c)
    it = track(todo, "contenders") if track is not None else todo
    current_key, model = None, None
    for c in it:
        key = (c.layers, c.noise_mode) if c.family == "thoughts" else ()
        if key != current_key:
            model = ref if not key else _graft_copy(ref, c, cfg).eval()
            current_key = key
        log.info("running %s", c.label)
        results[c] = _run_contender(c, model, ref, tok, prompts, ids_list, cfg, embedder, dev)
    res = summarise(cfg, prompts, results, skipped, f"{src.kind} {src.path}", time.time() - t0)
    write_report(res, Path(cfg.out))
    return res
