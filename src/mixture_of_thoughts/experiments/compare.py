"""``mot compare char``: do thought branches beat temperature?  (DESIGN §5)

Three models are trained on the same corpus with the same data order and steps: the dense
baseline, the MoT model with the same *active* parameters per token, and a reference dense model
with another seed that judges quality. On prompts drawn from the validation split, each contender
writes N branches per prompt under several seeds:

* baseline: temperature sweep, and a top-p sweep at temperature 1;
* MoT: creativity sweep at temperature 1 and at the baseline's *calibrated* temperature (the one
  whose text the reference model finds as surprising as real validation text), with token and
  sequence routing.

Quality is the reference model's bits per character on each continuation (lower is better);
diversity within the N branches of a prompt is self-BLEU (lower is more diverse), distinct-n and
the Vendi score. Intervals are 95% paired bootstrap intervals over prompts. The verdict compares
MoT's diversity with the baseline's *at the same quality* by interpolating the baseline's
temperature frontier, for one pre-declared MoT setting (temperature 1, creativity 1, token
routing: the setting it was trained with) and, for information, for every setting.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig, preset
from ..data.batches import CharDataset
from ..data.corpus import load_corpus
from ..errors import ConfigError
from ..generation.autoregressive import generate
from ..generation.diffusion import generate as diffusion_generate
from ..metrics.diversity import distinct_n, self_bleu, vendi_score
from ..metrics.quality import ar_nll, continuation_nll
from ..models.diffusion import diffusion_nll
from ..rng import GeneratorNoise, RowNoise
from ..training.checkpoint import is_checkpoint, load_checkpoint
from ..training.trainer import TrainProgress, train
from ..units import LN2
from . import stats

log = logging.getLogger(__name__)
CHAR_CLASSES = ("lower", "upper", "digit", "punct", "space", "newline")
PRIMARY = {"temperature": 1.0, "creativity": 1.0, "route": "token"}


@dataclass
class CompareConfig:
    """Settings of one comparison (``--quick`` shrinks every count)."""

    data: str = "shakespeare"
    preset: str = "cpu-small"
    steps: int = 2000
    out: str = "reports/shakespeare"
    reuse: bool = False
    prompts: int = 100
    branches: int = 8
    seeds: int = 3
    prompt_len: int = 32
    new_tokens: int = 128
    temperatures: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    top_ps: tuple[float, ...] = (0.8, 0.9, 0.95)
    creativities: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    routes: tuple[str, ...] = ("token", "sequence")
    diffusion: bool = True  # the masked-diffusion model as a third contender
    diffusion_temperatures: tuple[float, ...] = (0.8, 1.0)
    diffusion_steps: int = 16  # denoising steps per block window (ancestral sampler)
    bootstrap: int = 1000
    eval_batches: int = 20  # validation batches per training evaluation
    val_chars: int | None = None  # score validation bpc on this many characters (None: the whole split)
    seed: int = 1337
    device: str | None = None
    command: str = ""

    def __post_init__(self):
        for name in ("steps", "prompts", "branches", "seeds", "prompt_len", "new_tokens", "bootstrap"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.branches < 2:
            raise ConfigError("branches must be >= 2: diversity is measured within the branches of a prompt")
        if self.preset.endswith("-mot"):
            raise ConfigError(f"preset must be a dense preset (the MoT twin is derived from it), got {self.preset!r}")
        preset(self.preset)  # validates the name

    @classmethod
    def quick(cls, **kw) -> CompareConfig:
        base = dict(steps=60, prompts=6, branches=4, seeds=1, prompt_len=16, new_tokens=24, bootstrap=200,
                    eval_batches=2, val_chars=20_000,
                    temperatures=(0.7, 1.0, 1.3), top_ps=(0.9,), creativities=(0.0, 1.0, 2.0),
                    diffusion_temperatures=(1.0,), diffusion_steps=8)
        return cls(**{**base, **kw})


@dataclass
class Setting:
    contender: str  # baseline | mot | diffusion
    temperature: float
    top_p: float | None = None
    creativity: float | None = None
    route: str | None = None
    per_prompt: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (seeds * prompts,)

    @property
    def label(self) -> str:
        if self.contender == "baseline":
            return f"baseline T={self.temperature:g}" + (f" top-p={self.top_p:g}" if self.top_p else "")
        if self.contender == "diffusion":
            return f"diffusion T={self.temperature:g}"
        return f"MoT T={self.temperature:g} c={self.creativity:g} {self.route}"


def _train_all(cfg: CompareConfig, out: Path, train_progress: Callable[[], TrainProgress] | None) -> dict[str, object]:
    """Train (or reuse) baseline, MoT, reference (and diffusion) models; returns loaded checkpoints.

    ``train_progress()`` makes a fresh progress display for each model trained (None: silent)."""
    runs = {}
    p = preset(cfg.preset)
    plan = [("baseline", cfg.preset, cfg.seed, "ar"), ("mot", cfg.preset + "-mot", cfg.seed, "ar"),
            ("reference", cfg.preset, cfg.seed + 1, "ar")]
    if cfg.diffusion:
        plan.append(("diffusion", cfg.preset, cfg.seed, "diffusion"))
    for name, model_preset, seed, objective in plan:
        run = out / "runs" / name
        if not (cfg.reuse and is_checkpoint(run / "latest")):
            mc = ModelConfig.from_dict(preset(model_preset)["model"])
            tc = TrainConfig.from_dict({**p["train"], "max_steps": cfg.steps, "seed": seed, "objective": objective,
                                        "eval_interval": max(1, cfg.steps // 10), "eval_batches": cfg.eval_batches})
            train(cfg.data, run, mc, tc, force=True, device=cfg.device,
                  progress=train_progress() if train_progress is not None else None)
        runs[name] = load_checkpoint(run, which="latest", device=_device(cfg))
    return runs


def _device(cfg):
    from ..device import resolve_device

    return resolve_device(cfg.device)


def _prompts(ds: CharDataset, cfg: CompareConfig) -> torch.Tensor:
    """(P, prompt_len) windows of the validation split at seeded random offsets, starting after a newline."""
    g = torch.Generator().manual_seed(cfg.seed + 3)
    val = ds.val
    nl = ds.tokenizer.stoi.get("\n")
    starts = torch.randint(0, len(val) - cfg.prompt_len - 1, (cfg.prompts * 20,), generator=g)
    if nl is not None:  # prefer prompts that begin a line, like "ROMEO:" does
        good = starts[(starts > 0) & (val[(starts - 1).clamp(min=0)] == nl)]
        starts = torch.cat([good, starts])
    starts = starts[:cfg.prompts]
    return val[starts[:, None] + torch.arange(cfg.prompt_len)[None, :]]


def _run_setting(s: Setting, model, ref, tok, prompts: torch.Tensor, cfg: CompareConfig, dev) -> None:
    P, N, T0 = prompts.shape[0], cfg.branches, prompts.shape[1]
    rows = prompts.repeat_interleave(N, 0).to(dev)  # (P*N, T0): prompt p's branches are rows p*N .. p*N+N-1
    metrics: dict[str, list[np.ndarray]] = {k: [] for k in ("ref_bpc", "self_bleu", "distinct_2", "distinct_3",
                                                           "vendi", "best_of_n_bpc")}
    if s.contender != "diffusion":
        metrics["own_loglik"] = []
    for seed in range(cfg.seeds):
        noise = RowNoise([seed * stats.SEED_STRIDE + r for r in range(P * N)], dev)
        if s.contender == "diffusion":
            tokens = diffusion_generate(model, rows, T0 + cfg.new_tokens, noise, sampler="ancestral",
                                        steps=cfg.diffusion_steps, temperature=s.temperature).tokens
        else:
            gen = generate(model, rows, cfg.new_tokens, noise, temperature=s.temperature, top_p=s.top_p,
                           creativity=s.creativity, route=s.route)
            tokens = gen.tokens
            metrics["own_loglik"].append(gen.logprobs.mean(1).view(P, N).mean(1).cpu().numpy())
        nll, count = continuation_nll(ref, tokens, T0)
        bpc = (nll / count / LN2).view(P, N).cpu().numpy()
        texts = [tok.decode(r) for r in tokens[:, T0:].cpu()]
        groups = [texts[p * N:(p + 1) * N] for p in range(P)]
        metrics["ref_bpc"].append(bpc.mean(1))
        # best-of-N: the branch the evaluator (the reference model's likelihood) prefers, scored by it
        metrics["best_of_n_bpc"].append(bpc.min(1))
        metrics["self_bleu"].append(np.array([self_bleu(g) for g in groups]))
        metrics["distinct_2"].append(np.array([distinct_n(g, 2) for g in groups]))
        metrics["distinct_3"].append(np.array([distinct_n(g, 3) for g in groups]))
        metrics["vendi"].append(np.array([vendi_score(g, n=(2, 3)) for g in groups]))
        if seed == 0:
            s.per_prompt["example"] = np.array(groups[0], dtype=object)
    s.per_prompt.update({k: np.concatenate(v) for k, v in metrics.items()})


def _mechanism(mot, ds: CharDataset, cfg: CompareConfig, dev) -> dict:
    """Router entropy, branch load, branch diversity per layer, and specialisation by character class."""
    model, tok = mot.model, mot.tokenizer
    T = model.config.block_size
    n_win = min(200, (len(ds.val) - 1) // T)
    x = ds.val[: n_win * T].view(n_win, T).to(dev)
    captured: dict[int, torch.Tensor] = {}
    hooks = [b.ffn.router.register_forward_hook(lambda m, i, o, L=b.layer_idx: captured.__setitem__(L, o.detach()))
             for b in model.blocks if b.is_thought]
    try:
        with torch.no_grad():
            g = torch.Generator(device=dev).manual_seed(cfg.seed + 5)
            out = model(x, noise=GeneratorNoise(g, n_win), costly_stats=True)
    finally:
        for h in hooks:
            h.remove()
    chars = [tok.chars[i] for i in x.reshape(-1).tolist()]
    cls_id = torch.tensor([_char_class(c) for c in chars], device=dev)  # (n_win*T,)
    res = {"layers": {}}
    for layer, s in out.stats.items():
        E, k = model.blocks[layer].ffn.cfg.n_branches, model.blocks[layer].ffn.cfg.k
        top = captured[layer].reshape(-1, E).topk(k, dim=-1).indices  # deterministic (c = 0) selection
        onehot = torch.zeros(top.shape[0], E, device=dev).scatter_(1, top, 1.0)  # (tokens, E)
        counts = torch.zeros(len(CHAR_CLASSES), E, device=dev).index_add_(0, cls_id, onehot)  # (classes, E)
        # P(branch selected | class): each token selects k branches, so a row of counts sums to k * tokens
        per_class = counts / (counts.sum(1, keepdim=True) / k).clamp_min(1)  # rows sum to k
        lift = per_class / (k / E)  # 1 = no preference (a uniform router selects each branch with k / E)
        res["layers"][str(layer)] = {
            "router_entropy": float(s["router_entropy"]), "branch_diversity": float(s["branch_diversity"]),
            "load": [float(v) for v in s["load"]], "class_branch_lift": lift.cpu().tolist(),
            "max_lift": float(lift[counts.sum(1) > 0].max()),
        }
    res["classes"] = list(CHAR_CLASSES)
    return res


def _char_class(c: str) -> int:
    if c == "\n":
        return 5
    if c.isspace():
        return 4
    if c.isdigit():
        return 2
    if c.isalpha():
        return 1 if c.isupper() else 0
    return 3


def run_compare(cfg: CompareConfig, *, track: Callable[[list, str], Iterable] | None = None,
                train_progress: Callable[[], TrainProgress] | None = None) -> dict:
    """Run the whole comparison and write ``report.md``, ``metrics.json`` and plots into ``cfg.out``.

    Args:
        cfg: the experiment.
        track: ``track(items, desc)`` wraps each sweep's list of settings (e.g. a progress bar); None: silent.
        train_progress: makes the progress display of each model trained; None: silent.
    """
    from .report import write_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = _device(cfg)
    runs = _train_all(cfg, out, train_progress)
    tok = runs["baseline"].tokenizer
    ds = CharDataset(load_corpus(cfg.data), runs["baseline"].model.config.block_size, tok)
    prompts = _prompts(ds, cfg)
    ref = runs["reference"].model
    val_bpc = {}
    val = ds.val if cfg.val_chars is None else ds.val[:cfg.val_chars]
    for name, ck in runs.items():
        if ck.objective == "diffusion":  # an upper bound, not exact: labelled as such in the report
            total, count, _ = diffusion_nll(ck.model, val, seed=cfg.seed)
        else:
            total, count = ar_nll(ck.model, val)
        val_bpc[name] = total / count / LN2

    settings = [Setting("baseline", t) for t in cfg.temperatures] + [Setting("baseline", 1.0, top_p=p)
                                                                    for p in cfg.top_ps]
    def sweep(items: list[Setting], model, desc: str) -> None:
        for s in (track(items, desc) if track is not None else items):
            _run_setting(s, model, ref, tok, prompts, cfg, dev)

    sweep(settings, runs["baseline"].model, "baseline sweep")
    human = _human_bpc(ref, ds, prompts, cfg, dev)
    temp_pts = [s for s in settings if s.top_p is None]
    calibrated = min(temp_pts, key=lambda s: abs(float(s.per_prompt["ref_bpc"].mean()) - human)).temperature
    mot_temps = sorted({1.0, calibrated})
    mot_settings = [Setting("mot", t, creativity=c, route=r) for r in cfg.routes for t in mot_temps
                    for c in cfg.creativities]
    sweep(mot_settings, runs["mot"].model, "MoT sweep")
    diff_settings = [Setting("diffusion", t) for t in cfg.diffusion_temperatures] if cfg.diffusion else []
    sweep(diff_settings, runs["diffusion"].model if cfg.diffusion else None, "diffusion sweep")
    mechanism = _mechanism(runs["mot"], ds, cfg, dev)
    results = summarise(cfg, settings, mot_settings, val_bpc, human, calibrated, mechanism, out, diff_settings)
    write_report(results, out)
    return results


@torch.no_grad()
def _human_bpc(ref, ds, prompts, cfg, dev) -> float:
    """Reference bpc of real validation continuations of the same length (the quality of real text)."""
    g = torch.Generator().manual_seed(cfg.seed + 9)
    L = cfg.prompt_len + cfg.new_tokens
    starts = torch.randint(0, len(ds.val) - L, (len(prompts),), generator=g)
    windows = ds.val[starts[:, None] + torch.arange(L)[None, :]]
    nll, count = continuation_nll(ref, windows.to(dev), cfg.prompt_len)
    return float((nll / count / LN2).mean())


def summarise(cfg, base_settings, mot_settings, val_bpc, human, calibrated, mechanism, out: Path,
              diff_settings=()) -> dict:
    """Means, intervals, frontier comparisons and verdicts, as a JSON-ready dict."""
    n_units = cfg.prompts * cfg.seeds
    idx = stats.bootstrap_indices(n_units, cfg.bootstrap, cfg.seed)
    keys = ("ref_bpc", "self_bleu", "distinct_2", "distinct_3", "vendi", "best_of_n_bpc", "own_loglik")

    def row(s: Setting) -> dict:
        d = {"label": s.label, "contender": s.contender, "temperature": s.temperature, "top_p": s.top_p,
             "creativity": s.creativity, "route": s.route, "example": list(s.per_prompt["example"][:3])}
        for k in (k for k in keys if k in s.per_prompt):
            m, lo, hi = stats.mean_ci(s.per_prompt[k], idx)
            d[k] = {"mean": m, "ci": [lo, hi]}
        return d

    temp_pts = [s for s in base_settings if s.top_p is None]

    def matched(s: Setting, metric: str) -> dict:
        """MoT minus baseline ``metric`` at the MoT setting's quality, on the baseline temperature line."""
        def means(setting, key):
            return stats.resampled_means(setting.per_prompt[key], idx)

        m = stats.matched(means(s, "ref_bpc"), means(s, metric), np.stack([means(b, "ref_bpc") for b in temp_pts], 1),
                          np.stack([means(b, metric) for b in temp_pts], 1), frontier="line")
        return {"delta": float("nan"), "ci": [float("nan")] * 2} if m is None else {"delta": m["delta"], "ci": m["ci"]}

    def compared(items):
        rows = []
        for s in items:
            r = row(s)
            r["vs_baseline_at_matched_quality"] = {m: matched(s, m) for m in ("self_bleu", "distinct_3", "vendi")}
            rows.append(r)
        return rows

    mot_rows, diff_rows = compared(mot_settings), compared(diff_settings)
    # creativity <-> diversity correlation at the primary temperature and route
    corr = {}
    for route in cfg.routes:
        pts = [s for s in mot_settings if s.route == route and s.temperature == PRIMARY["temperature"]]
        cx = np.concatenate([np.full(n_units, s.creativity) for s in pts])
        for m in ("self_bleu", "distinct_3"):
            cy = np.concatenate([s.per_prompt[m] for s in pts])
            corr[f"{route}/{m}"] = {"pearson": stats.pearson(cx, cy), "spearman": stats.spearman(cx, cy)}
    curves = {}
    for name in ("baseline", "mot", "reference", "diffusion"):
        f = out / "runs" / name / "metrics.jsonl"
        curves[name] = [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []
    primary = next((r for r in mot_rows if all(r[k] == v for k, v in PRIMARY.items())), None)
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "val_bpc": val_bpc, "human_ref_bpc": human, "calibrated_temperature": calibrated,
        "baseline": [row(s) for s in base_settings], "mot": mot_rows, "diffusion": diff_rows, "primary": primary,
        "creativity_correlation": corr, "mechanism": mechanism, "training_curves": curves,
        "verdicts": verdicts(primary, mot_rows, diff_rows),
    }


def verdicts(primary: dict | None, mot_rows: list[dict], diff_rows: list[dict] = ()) -> list[str]:
    """Sentences computed from the numbers; nothing in them is written by hand."""
    out = []
    if primary is None:
        return ["The pre-declared MoT setting was not part of the sweep; no verdict."]
    for metric, better, name in (("self_bleu", "lower", "self-BLEU"), ("distinct_3", "higher", "distinct-3"),
                                 ("vendi", "higher", "Vendi score")):
        d = primary["vs_baseline_at_matched_quality"][metric]
        lo, hi = d["ci"]
        if not math.isfinite(d["delta"]):
            out.append(f"{name}: the MoT setting's quality lies outside the baseline's temperature frontier, "
                       "so no matched-quality comparison is possible.")
            continue
        sign_good = (d["delta"] < 0) if better == "lower" else (d["delta"] > 0)
        if lo > 0 or hi < 0:
            outcome = "more diverse than" if sign_good else "less diverse than"
            sig = "significant at 95%"
        else:
            outcome, sig = "not distinguishable from", "the 95% interval contains 0"
        out.append(f"At matched reference bpc, MoT ({primary['label']}) has {name} {abs(d['delta']):.3g} "
                   f"{'lower' if d['delta'] < 0 else 'higher'} than the temperature-swept baseline "
                   f"(95% CI {lo:.3g} to {hi:.3g}; {sig}): MoT is {outcome} the baseline on this measure.")
    finite = [r for r in mot_rows if math.isfinite(r["vs_baseline_at_matched_quality"]["self_bleu"]["delta"])]
    wins = [r for r in finite if r["vs_baseline_at_matched_quality"]["self_bleu"]["ci"][1] < 0]
    out.append(f"Across all {len(mot_rows)} MoT settings, {len(finite)} fall inside the baseline's quality range and "
               f"{len(wins)} of those have a self-BLEU interval entirely below the baseline frontier "
               "(not corrected for multiple comparisons).")
    for r in diff_rows:
        d = r["vs_baseline_at_matched_quality"]["self_bleu"]
        if not math.isfinite(d["delta"]):
            out.append(f"{r['label']}: reference bpc {r['ref_bpc']['mean']:.3f} lies outside the baseline's "
                       "temperature frontier, so no matched-quality comparison is possible.")
        else:
            lo, hi = d["ci"]
            sig = "significant at 95%" if lo > 0 or hi < 0 else "the 95% interval contains 0"
            out.append(f"{r['label']}: self-BLEU {d['delta']:+.3g} against the baseline at matched reference bpc "
                       f"(95% CI {lo:.3g} to {hi:.3g}; {sig}).")
    return out
