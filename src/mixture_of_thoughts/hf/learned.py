"""Learned thought branches: B small sets of parameters in a frozen pretrained model, trained with a
mixture objective so that each branch owns a different part of the response distribution.

Thought noise (``hf.graft``) and temperature perturb every branch the same way; here each branch is a
set of *learned* directions instead. Branch ``b`` owns one "thought vector" per chosen decoder layer
(default: the top 4), added to the residual stream at the input of that layer at every position (prompt
and response) of the rows it decodes: ``vectors`` of shape ``(B, L, d)``, a few thousand parameters.

* **Data** (:func:`build_branch_data`): ``responses`` samples per prompt from the plain model, filtered
  (degenerate texts, and texts the model itself finds unlikely: mean NLL above ``max_nll``).
* **Training** (:func:`train_branches`): the base model is frozen; the objective over the first K
  response tokens is a mixture over branches, so that the branches divide the responses among them:

  - ``soft-em``: ``-log (1/B) sum_b exp(ll_b)`` (the mixture likelihood; its gradient weighs branch b
    by the EM responsibility ``r_b = softmax_b(ll_b)``);
  - ``wta``: multiple-choice learning (Guzman-Rivera et al., NeurIPS 2012; stochastic MCL, Lee et al.,
    NeurIPS 2016): the best branch takes the response, relaxed as in Rupprecht et al. (ICCV 2017):
    weight ``1 - eps`` on the winner, ``eps / (B - 1)`` on each other branch;
  - plus ``balance * KL(mean_batch r || uniform)`` so every branch stays in use (cf. the Switch
    Transformer's load balancing).

  Related: hash-conditioning (Nagarajan et al., 2025, "Roll the dice & look before you leap"), where
  training with a random seed prefix beat temperature for diversity; here the "seed" is a branch index
  that owns learned parameters. Speed: the frozen lower layers run once per prompt group without grad
  (their output is cached); each step runs only the upper layers, for the B branch copies, and the LM
  head on the K response positions.
* **Use** (:func:`think_learned`, :func:`generate_learned`): row ``i`` decodes with branch ``i mod B``
  and seed ``seed + i``; a row decoded alone (its branch and seed) is the same text.

Saved as ``branches.safetensors`` (the vectors), ``branches.json`` (:class:`BranchesConfig`: the model,
layers, scales, training settings, data hash) and ``history.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.jsonl import parse_jsonl
from ..errors import CheckpointError, ConfigError, DataError
from ..generation.autoregressive import LOOKAHEAD
from ..generation.decoder import Sampling, Step, StepFn, ThinkResult, decode, left_pad
from ..rng import RowNoise
from .generate import _cache_of, check_context, prompt_ids, sample_branches, stop_token_ids, uses_chat
from .graft import SUPPORTED, _get
from .vary import RowPositionNoise, _pad_id, padded_hf_step

log = logging.getLogger(__name__)
CONFIG_FILE = "branches.json"
WEIGHTS_FILE = "branches.safetensors"
HISTORY_FILE = "history.json"
FORMAT = 1
OBJECTIVES = ("soft-em", "wta")
# Response j of prompt i is sampled with seed ``seed + i * RESPONSE_SEED_STRIDE + j``: every response
# has its own seed, reproducible alone, and adding prompts changes no earlier response.
RESPONSE_SEED_STRIDE = 1000
# Mean per-token NLL (nats, the sampling model's own log-probabilities at T = 1) above which a response
# is dropped. SmolLM2-135M-Instruct on the open-ended prompts (docs/report-smollm2): greedy 0.9, T = 0.7
# 1.5, top-p 0.9 2.2, T = 1 2.9 (per-prompt quartiles 2.5 / 2.8 / 3.2). 3.0 keeps roughly the better
# half of T = 1 samples, whose spread of ideas we want, and drops the tail that has drifted into noise.
DEFAULT_MAX_NLL = 3.0
FINGERPRINT_VALUES = 4096  # embedding values hashed to tell two models of the same shapes apart
RMS_PROMPTS = 8  # prompt groups on which the hidden-state RMS is measured
AUTO = "auto"  # ``embedder=AUTO``: load the MiniLM embedder

Progress = Callable[[str, int, int, dict], None]


# ------------------------------------------------------------------------------------ data


def build_branch_data(model: nn.Module, tokenizer, prompts: Sequence[dict], *, responses: int = 8,
                      max_new_tokens: int = 32, temperature: float = 1.0, seed: int = 0,
                      max_nll: float = DEFAULT_MAX_NLL, batch_prompts: int = 8, embedder=AUTO,
                      chat: bool | None = None, progress: Progress | None = None) -> tuple[list[dict], dict]:
    """Sample ``responses`` responses per prompt from the plain model and keep the usable ones.

    Rows of ``batch_prompts`` prompts x ``responses`` are decoded in one left-padded pass (like
    ``experiments.compare_lm``); response ``j`` of prompt ``i`` has seed ``seed + i *
    RESPONSE_SEED_STRIDE + j`` (Gumbel-max from its own counter-based noise, so it is the same decoded
    alone). Prompts go through the chat template when the tokenizer has one (``chat=None``).
    A response is dropped when it is empty, when :func:`metrics.semantic.degenerate` flags it (a loop;
    off-topic against the prompt by MiniLM embeddings) or when its mean NLL exceeds ``max_nll``
    (see :data:`DEFAULT_MAX_NLL`). A prompt left with fewer than 2 responses is dropped.

    Args:
        prompts: rows ``{"prompt": str, "category": str, ...}``.
        embedder: a ``metrics.semantic`` embedder; ``AUTO`` loads MiniLM; ``None`` skips the off-topic
            rule (the loop and empty rules still apply) -- for tests only; recorded in the stats.
        progress: ``progress("sample", prompts done, prompts, {})`` after each batch.
    Returns:
        ``(rows, stats)``: rows ``{"prompt", "category", "prompt_ids", "responses": [{"ids", "text",
        "nll", "seed"}, ...]}``; stats: counts and rates of each filter, seconds.
    """
    from ..metrics.semantic import degenerate

    t0 = time.perf_counter()
    _check_int("responses", responses, 2, RESPONSE_SEED_STRIDE)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_prompts", batch_prompts, 1)
    if not max_nll > 0:
        raise ConfigError(f"max_nll must be > 0 nats, got {max_nll}")
    if not prompts:
        raise ConfigError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, dict) or not isinstance(p.get("prompt"), str) or not p["prompt"].strip():
            raise DataError(f'prompt {i} needs a non-empty "prompt" string, got {p!r}')
    if isinstance(embedder, str) and embedder == AUTO:
        from ..metrics.semantic import get_embedder

        embedder = get_embedder()
    chat = uses_chat(tokenizer, chat)
    ids_list = [prompt_ids(tokenizer, p["prompt"], chat) for p in prompts]
    P, R = len(prompts), responses
    out, dropped, n_kept, kept_nll = [], Counter(), 0, []
    for start in range(0, P, batch_prompts):
        chunk = list(range(start, min(P, start + batch_prompts)))
        seeds = [seed + i * RESPONSE_SEED_STRIDE + j for i in chunk for j in range(R)]
        res = _decode_rows(model, tokenizer, [ids_list[i] for i in chunk for _ in range(R)], seeds,
                           max_new_tokens=max_new_tokens, temperature=temperature, shared=R)
        texts = [r[1] for r in res]
        if embedder is not None:
            t_emb = embedder.embed(texts)
            p_emb = embedder.embed([prompts[i]["prompt"] for i in chunk])
        for q, i in enumerate(chunk):
            sl = slice(q * R, (q + 1) * R)
            reasons = degenerate(texts[sl], prompt_emb=p_emb[q] if embedder is not None else None,
                                 texts_emb=t_emb[sl] if embedder is not None else None)
            kept = []
            for (cont, text, nll), s, why in zip(res[sl], seeds[sl], reasons, strict=True):
                why = "empty" if not cont else why  # no token before the end of turn
                if why is None and not nll <= max_nll:
                    why = "nll"
                if why is not None:
                    dropped[why] += 1
                    continue
                kept.append({"ids": cont, "text": text, "nll": round(nll, 4), "seed": s})
            if len(kept) < 2:
                dropped["with_prompt"] += len(kept)
                dropped["prompts"] += 1
                continue
            n_kept += len(kept)
            kept_nll += [k["nll"] for k in kept]
            out.append({"prompt": prompts[i]["prompt"], "category": prompts[i].get("category"),
                        "prompt_ids": ids_list[i], "responses": kept})
        if progress is not None:
            progress("sample", chunk[-1] + 1, P, {})
    n = P * R
    stats = {"prompts": P, "prompts_kept": len(out), "prompts_dropped": dropped["prompts"],
             "responses_sampled": n, "responses_kept": n_kept, "kept_rate": n_kept / n,
             "dropped": {k: dropped[k] for k in ("empty", "loop", "off-topic", "nll", "with_prompt")},
             "drop_rates": {k: dropped[k] / n for k in ("empty", "loop", "off-topic", "nll", "with_prompt")},
             "mean_kept_nll": sum(kept_nll) / len(kept_nll) if kept_nll else None,
             "offtopic_check": embedder is not None, "chat": chat,
             "settings": {"responses": R, "max_new_tokens": max_new_tokens, "temperature": temperature,
                          "seed": seed, "max_nll": max_nll, "seed_rule": "seed + prompt_index * "
                          f"{RESPONSE_SEED_STRIDE} + response_index"},
             "seconds": time.perf_counter() - t0}
    return out, stats


def write_branch_data(rows: list[dict], stats: dict, path: str | Path, *, force: bool = False) -> Path:
    """``rows`` as JSONL at ``path`` (one prompt per line) and ``stats`` as ``<stem>.stats.json`` beside it,
    each written under a temporary name and renamed (never half-written). Returns the stats path."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: pass --force to overwrite it")
    side = stats_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(side, json.dumps(stats, indent=1, ensure_ascii=False))
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return side


def stats_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".stats.json")


def load_branch_data(path: str | Path) -> list[dict]:
    """The rows of a file written by :func:`write_branch_data`, checked.

    Raises:
        DataError: a missing or unreadable file, a line that is not JSON or lacks ``prompt_ids`` (a list
            of ids) or ``responses`` (a list of ``{"ids": [...]}``), or no row at all.
    """
    p = Path(path)
    where = f"branch data {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{where} does not exist (write it with mot branch-data)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{where} is not readable UTF-8 text: {e}") from None
    rows = []
    for i, row in parse_jsonl(text, where):
        ok = isinstance(row, dict) and _is_ids(row.get("prompt_ids")) and row["prompt_ids"] \
            and isinstance(row.get("responses"), list) and row["responses"] \
            and all(isinstance(r, dict) and _is_ids(r.get("ids")) and r["ids"] for r in row["responses"])
        if not ok:
            raise DataError(f'{where}, line {i}: needs "prompt_ids" (a non-empty list of token ids) and '
                            f'"responses" (a non-empty list of {{"ids": [...]}}): is it a mot branch-data file?')
        rows.append(row)
    if not rows:
        raise DataError(f"{where} holds no row")
    return rows


def _is_ids(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_int(name: str, v, lo: int, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be an integer {rng}, got {v!r}")


# ------------------------------------------------------------------------------------ the branches


@dataclass
class BranchesConfig:
    """What a set of learned branches is and how it was made: saved as ``branches.json``.

    ``hidden_rms[j]`` is the median per-token RMS of the hidden states at the input of ``layers[j]``,
    measured on the training data; ``init_scale`` is relative to it (vector std ``init_scale * rms``).
    """

    model: str  # the name or path the model was given by
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    fingerprint: str  # a hash of the first embedding values: the same weights, not only the same shapes
    layers: list[int]
    branches: int
    init_scale: float = 0.0
    hidden_rms: list[float] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    data_sha256: str = ""
    format: int = FORMAT

    def __post_init__(self):
        if self.branches < 1:
            raise ConfigError(f"branches must be >= 1, got {self.branches}")
        if not self.layers or sorted(set(self.layers)) != list(self.layers) \
                or not all(0 <= i < self.num_layers for i in self.layers):
            raise ConfigError(f"layers must be increasing indices in [0, {self.num_layers - 1}], got {self.layers}")
        if self.hidden_rms and len(self.hidden_rms) != len(self.layers):
            raise ConfigError(f"hidden_rms has {len(self.hidden_rms)} values for {len(self.layers)} layers")

    def describe(self) -> str:
        return (f"{self.model} ({self.model_type}, hidden size {self.hidden_size}, {self.num_layers} layers, "
                f"vocabulary {self.vocab_size})")


class LearnedBranches(nn.Module):
    """``vectors``: ``(B, L, d)``, branch ``b``'s vector for decoder layer ``config.layers[j]`` at ``[b, j]``."""

    def __init__(self, config: BranchesConfig):
        super().__init__()
        self.config = config
        self.vectors = nn.Parameter(torch.zeros(config.branches, len(config.layers), config.hidden_size))

    @property
    def n_branches(self) -> int:
        return self.config.branches

    @property
    def layers(self) -> list[int]:
        return list(self.config.layers)

    @torch.no_grad()
    def reset(self, generator: torch.Generator) -> LearnedBranches:
        """Draw the vectors from N(0, (init_scale * hidden_rms[j])^2): distinct branches get distinct
        gradients (identical ones would stay identical forever)."""
        rms = torch.tensor(self.config.hidden_rms or [1.0] * len(self.layers))
        z = torch.randn(self.vectors.shape, generator=generator)
        self.vectors.copy_(z * (self.config.init_scale * rms)[None, :, None])
        return self


def model_fingerprint(model: nn.Module) -> str:
    w = model.get_input_embeddings().weight.detach()
    return hashlib.sha256(w.float().flatten()[:FINGERPRINT_VALUES].cpu().numpy().tobytes()).hexdigest()[:16]


def resolve_layers(spec: str | Sequence[int], n_layers: int) -> list[int]:
    """``topN`` (the last N decoder layers), ``all``, or indices (``"26,27"`` or a list), checked."""
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(n_layers))
        if s.startswith("top"):
            try:
                n = int(s[3:])
            except ValueError:
                n = 0
            if not 1 <= n <= n_layers:
                raise ConfigError(f"layers {spec!r}: topN needs N in [1, {n_layers}]")
            return list(range(n_layers - n, n_layers))
        try:
            spec = [int(v) for v in s.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"layers must be topN, all or comma-separated indices, got {spec!r}") from None
    idx = sorted({int(i) for i in spec})
    if not idx or not all(0 <= i < n_layers for i in idx):
        raise ConfigError(f"layers must be indices in [0, {n_layers - 1}], got {list(spec)!r}")
    return idx


def new_branches(model: nn.Module, branches: int, layers: str | Sequence[int] = "top4", *, model_name: str = "",
                 init_scale: float = 0.0, hidden_rms: Sequence[float] | None = None,
                 generator: torch.Generator | None = None) -> LearnedBranches:
    """Branches for ``model`` (zero vectors unless ``init_scale > 0`` and a ``generator`` are given)."""
    cfg = model.config
    idx = resolve_layers(layers, cfg.num_hidden_layers)
    bc = BranchesConfig(model_name, cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size,
                        model_fingerprint(model), idx, branches, float(init_scale),
                        [float(r) for r in hidden_rms] if hidden_rms is not None else [])
    module = LearnedBranches(bc).to(next(model.parameters()).device)
    if init_scale > 0:
        if generator is None:
            raise ConfigError("init_scale > 0 needs a seeded torch.Generator")
        module.reset(generator)
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a supported Hugging Face causal LM (as ``hf.graft`` finds it)."""
    mtype = getattr(model.config, "model_type", None)
    if mtype not in SUPPORTED:
        raise ConfigError(f"learned branches need one of {', '.join(sorted(SUPPORTED))}, got {mtype!r}")
    return _get(model, SUPPORTED[mtype][0])


@contextlib.contextmanager
def apply_branches(model: nn.Module, branches: LearnedBranches, row_branch: torch.Tensor):
    """Add ``branches.vectors[row_branch[r], j]`` to the hidden states of row ``r`` at the input of
    decoder layer ``branches.layers[j]`` (forward pre-hooks, every position), removed on exit.

    Args:
        row_branch: ``(rows,)`` branch index of each batch row; a forward call must have that many rows.
    """
    row_branch = torch.as_tensor(row_branch, dtype=torch.long)
    if row_branch.dim() != 1 or (row_branch.numel() and not 0 <= int(row_branch.min()) <= int(row_branch.max())
                                 < branches.n_branches):
        raise ConfigError(f"row_branch must be a 1-D tensor of indices in [0, {branches.n_branches - 1}]")
    blocks = decoder_layers(model)
    handles = []

    def hook_for(j: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if h.shape[0] != row_branch.numel():
                raise ConfigError(f"apply_branches got {row_branch.numel()} row branches for a batch of "
                                  f"{h.shape[0]} rows")
            v = branches.vectors[row_branch.to(h.device), j]  # (rows, d)
            h = h + v[:, None, :].to(h.dtype)
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
        return hook

    try:
        for j, i in enumerate(branches.layers):
            handles.append(blocks[i].register_forward_pre_hook(hook_for(j), with_kwargs=True))
        yield branches
    finally:
        for hd in handles:
            hd.remove()


def save_branches(branches: LearnedBranches, out: str | Path, *, history: dict | None = None,
                  force: bool = False) -> Path:
    """Write ``branches.safetensors``, ``branches.json`` (and ``history.json``) into directory ``out``,
    built in a temporary directory and renamed: an interrupted save leaves nothing half-written."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists: pass --force to overwrite it")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file({"vectors": branches.vectors.detach().float().cpu().contiguous()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": str(FORMAT)})
        (tmp / CONFIG_FILE).write_text(json.dumps(asdict(branches.config), indent=1), encoding="utf-8")
        if history is not None:
            (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_branches_config(path: str | Path) -> BranchesConfig:
    p = Path(path)
    f = p / CONFIG_FILE
    if not f.is_file() or not (p / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{p} is not a learned-branches directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                              f"write one with mot train-branches)")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
        return BranchesConfig(**d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{f} is not a valid branches config: {e}") from None


def load_branches(path: str | Path, model: nn.Module | None = None, *, strict: bool = True) -> LearnedBranches:
    """The branches saved in ``path``; checked against ``model`` when given.

    Raises:
        CheckpointError: missing or corrupt files; a model of another architecture, hidden size, layer
            count or vocabulary; with ``strict``, a model of the same shapes but other weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = read_branches_config(path)
    try:
        vec = load_file(str(Path(path) / WEIGHTS_FILE))["vectors"]
    except (OSError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{Path(path) / WEIGHTS_FILE} is unreadable: {e}") from None
    if tuple(vec.shape) != (cfg.branches, len(cfg.layers), cfg.hidden_size):
        raise CheckpointError(f"{path}: vectors of shape {tuple(vec.shape)} do not match the config "
                              f"({cfg.branches}, {len(cfg.layers)}, {cfg.hidden_size})")
    module = LearnedBranches(cfg)
    with torch.no_grad():
        module.vectors.copy_(vec)
    if model is not None:
        mc = model.config
        got = (mc.model_type, mc.hidden_size, mc.num_hidden_layers, mc.vocab_size)
        if got != (cfg.model_type, cfg.hidden_size, cfg.num_layers, cfg.vocab_size):
            raise CheckpointError(f"the branches in {path} were trained on {cfg.describe()}; this model is "
                                  f"{got[0]} with hidden size {got[1]}, {got[2]} layers and vocabulary {got[3]}: "
                                  f"load the model they were trained on (--model {cfg.model})")
        if model_fingerprint(model) != cfg.fingerprint:
            msg = (f"the branches in {path} were trained on {cfg.describe()}; this model has the same shapes "
                   f"but other weights")
            if strict:
                raise CheckpointError(msg + f": load the model they were trained on (--model {cfg.model})")
            log.warning(msg)
        module.to(next(model.parameters()).device)
    return module


# ------------------------------------------------------------------------------------ losses


def soft_em_loss(ll: torch.Tensor) -> torch.Tensor:
    """Mixture NLL per response: ``-log (1/B) sum_b exp(ll[n, b])``, ``(N, B) -> (N,)``.

    Its gradient w.r.t. ``ll[n, b]`` is ``-r[n, b]`` with ``r = softmax_b(ll)``: the EM responsibilities.
    """
    return -(torch.logsumexp(ll, -1) - math.log(ll.shape[-1]))


def wta_weights(ll: torch.Tensor, eps: float) -> torch.Tensor:
    """Relaxed winner-takes-all weights (Rupprecht et al. 2017), ``(N, B)``: ``1 - eps`` on each
    response's best branch, ``eps / (B - 1)`` on the others (no gradient through the choice)."""
    B = ll.shape[-1]
    if B == 1:
        return torch.ones_like(ll)
    w = torch.full_like(ll, eps / (B - 1))
    return w.scatter(-1, ll.detach().argmax(-1, keepdim=True), 1.0 - eps).detach()


def wta_loss(ll: torch.Tensor, eps: float) -> torch.Tensor:
    """Multiple-choice learning loss per response, ``(N, B) -> (N,)``: ``-sum_b w_b ll_b``."""
    return -(wta_weights(ll, eps) * ll).sum(-1)


def balance_loss(resp: torch.Tensor) -> torch.Tensor:
    """``KL(mean_n resp[n] || uniform) = sum_b m_b log(B m_b)``: 0 when every branch takes the same share."""
    m = resp.mean(0)
    return (m * (m * m.numel()).clamp_min(1e-12).log()).sum()


# ------------------------------------------------------------------------------------ training


@dataclass
class BranchTrainConfig:
    """Settings of :func:`train_branches` (saved in ``branches.json``)."""

    branches: int = 4  # B
    layers: str | list[int] = "top4"  # topN, all, or decoder layer indices
    tokens: int = 16  # K: the objective reads the first K response tokens (the idea is decided early)
    objective: str = "soft-em"  # soft-em | wta
    epochs: int = 2
    batch_prompts: int = 4  # prompt groups per step (each with all its responses)
    lr: float = 0.02  # Adam step, relative to the mean hidden RMS of the branch layers
    init_scale: float = 0.1  # vector std at init, relative to each layer's hidden RMS
    balance: float = 0.1  # coefficient of KL(mean responsibility || uniform)
    wta_eps: float = 0.05  # relaxed WTA: weight on the branches that lost
    val_frac: float = 0.1  # prompts held back for validation
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast for the upper layers and the LM head
    max_steps: int | None = None  # stop early (smoke runs)

    def __post_init__(self):
        _check_int("branches", self.branches, 1)
        _check_int("tokens", self.tokens, 1)
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_prompts", self.batch_prompts, 1)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("lr", "init_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.balance >= 0:
            raise ConfigError(f"balance must be >= 0, got {self.balance}")
        if not 0 <= self.wta_eps < 1:
            raise ConfigError(f"wta_eps must be in [0, 1), got {self.wta_eps}")
        if not 0 <= self.val_frac < 1:
            raise ConfigError(f"val_frac must be in [0, 1), got {self.val_frac}")
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, 1)


@dataclass
class _Group:
    """One prompt and its responses cut to K tokens, packed in one sequence: the prompt once, then each
    response's input tokens; response ``r`` attends to the prompt and to itself only (a block mask), at
    the positions it has alone. ``hidden`` is the frozen lower layers' output, cached."""

    hidden: torch.Tensor  # (T, d) hidden states at the input of the first branch layer
    ids: torch.Tensor  # (T,) the packed token ids
    pos: torch.Tensor  # (T,) position of each token in its own sequence (prompt + one response)
    seg: torch.Tensor  # (T,) 0 for the prompt, r + 1 for response r
    pred: torch.Tensor  # (M,) packed index whose output predicts each target
    targets: torch.Tensor  # (M,) the first K tokens of every response, in order
    resp: torch.Tensor  # (M,) the response each target belongs to
    n_resp: int


def _pack(row: dict, K: int) -> _Group:
    """A prompt group packed (hidden left empty): prompt, then ``resp[:n - 1]`` for each response of
    ``n = min(K, len)`` targets -- the last target needs no input."""
    P = len(row["prompt_ids"])
    ids, pos, seg = list(row["prompt_ids"]), list(range(P)), [0] * P
    pred, tgt, resp = [], [], []
    for r, x in enumerate(row["responses"]):
        y = x["ids"][:K]
        start = len(ids)
        pred += [P - 1] + [start + t for t in range(len(y) - 1)]  # token t is read after token t - 1
        tgt += y
        resp += [r] * len(y)
        ids += y[:-1]
        pos += range(P, P + len(y) - 1)
        seg += [r + 1] * (len(y) - 1)
    t = functools.partial(torch.tensor, dtype=torch.long)
    return _Group(torch.empty(0), t(ids), t(pos), t(seg), t(pred), t(tgt), t(resp), len(row["responses"]))


def _pad_stack(xs: Sequence[torch.Tensor], value, T: int) -> torch.Tensor:
    return torch.stack([F.pad(x, (0, 0) * (x.dim() - 1) + (0, T - x.shape[0]), value=value) for x in xs])


def _block_mask(seg: torch.Tensor, model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``(N, 1, T, T)`` attention mask of packed rows ``seg`` (N, T): causal, and a response sees the
    prompt and itself only; padding (-1) sees earlier padding (no empty row). Boolean for SDPA, additive
    for the other attention implementations."""
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    si, sj = seg[:, :, None], seg[:, None, :]
    ok = causal & ((sj == si) | ((sj == 0) & (si > 0)))
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return ok[:, None]
    return torch.zeros(ok.shape, dtype=dtype, device=seg.device).masked_fill(~ok, torch.finfo(dtype).min)[:, None]


def _stack_base(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model``) of a rotary-position decoder whose layer list can be cut."""
    base = getattr(model, "model", None)
    if not isinstance(getattr(base, "layers", None), nn.ModuleList) or not hasattr(base, "rotary_emb"):
        raise ConfigError(f"training learned branches needs a rotary-position decoder (Llama, Mistral, Qwen2); "
                          f"got {getattr(model.config, 'model_type', type(model).__name__)!r}")
    return base


@contextlib.contextmanager
def layer_range(model: nn.Module, lo: int, hi: int):
    """The decoder stack running only layers ``lo .. hi-1`` (its layer list swapped, restored on exit).

    Rotary embeddings and the attention mask are built by the stack itself from the positions, so feeding
    it the hidden states at the input of layer ``lo`` (``inputs_embeds``) continues the full model.
    """
    base = _stack_base(model)
    full = base.layers
    base.layers = full[lo:hi]
    try:
        yield base
    finally:
        base.layers = full


@torch.no_grad()
def _lower_hidden(model: nn.Module, first: int, **inputs) -> torch.Tensor:
    """Hidden states at the input of layer ``first`` (``inputs``: the stack's ``input_ids``, masks, positions)."""
    captured = []
    with layer_range(model, 0, first) as base:
        h = base.norm.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        try:
            base(use_cache=False, **inputs)
        finally:
            h.remove()
    return captured[0]


def _packed_inputs(model: nn.Module, groups: Sequence[_Group], dtype=torch.float32) -> dict:
    dev = next(model.parameters()).device
    T = max(len(g.ids) for g in groups)
    seg = _pad_stack([g.seg for g in groups], -1, T).to(dev)
    return {"input_ids": _pad_stack([g.ids for g in groups], 0, T).to(dev),
            "position_ids": _pad_stack([g.pos for g in groups], 0, T).to(dev),
            "attention_mask": _block_mask(seg, model, dtype)}


def cache_groups(model: nn.Module, rows: Sequence[dict], first: int, K: int, batch_prompts: int = 8,
                 progress: Progress | None = None) -> list[_Group]:
    """Pack each prompt group and run the frozen layers below ``first`` over it once."""
    out = []
    for start in range(0, len(rows), batch_prompts):
        chunk = [_pack(r, K) for r in rows[start:start + batch_prompts]]
        H = _lower_hidden(model, first, **_packed_inputs(model, chunk))
        for n, g in enumerate(chunk):
            g.hidden = H[n, :len(g.ids)].clone()
            out.append(g)
        if progress is not None:
            progress("cache", min(len(rows), start + batch_prompts), len(rows), {})
    return out


def branch_loglik(model: nn.Module, branches: LearnedBranches, groups: Sequence[_Group], *,
                  bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ll, tokens)``: ``ll[n, b]`` = sum of log p_b over the first K tokens of response ``n`` (all groups'
    responses in order) under branch ``b``, ``(N, B)``; ``tokens``: ``(N,)`` tokens read per response.

    Runs only the layers from the first branch layer up, on the cached hidden states of the packed
    groups, for B branch copies of each, and the LM head on the predicting positions only.
    """
    B, first, G = branches.n_branches, branches.layers[0], len(groups)
    inputs = _packed_inputs(model, groups)
    T, dev = inputs["input_ids"].shape[1], inputs["input_ids"].device
    H = _pad_stack([g.hidden for g in groups], 0.0, T)  # (G, T, d)
    offsets = torch.tensor([0] + [g.n_resp for g in groups]).cumsum(0)
    flat = torch.cat([g.pred + i * T for i, g in enumerate(groups)]).to(dev)  # (M,) into (G*T)
    tgt = torch.cat([g.targets for g in groups]).to(dev)
    resp = torch.cat([g.resp + offsets[i] for i, g in enumerate(groups)]).to(dev)
    row_branch = torch.arange(B, device=dev).repeat_interleave(G)  # branch-major copies
    auto = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    with apply_branches(model, branches, row_branch), layer_range(model, first, model.config.num_hidden_layers) \
            as base, auto:
        hid = base(inputs_embeds=H.repeat(B, 1, 1), attention_mask=inputs["attention_mask"].repeat(B, 1, 1, 1),
                   position_ids=inputs["position_ids"].repeat(B, 1), use_cache=False).last_hidden_state
        logits = model.lm_head(hid.reshape(B, G * T, -1)[:, flat])  # (B, M, V)
    lp = -F.cross_entropy(logits.float().flatten(0, 1), tgt.repeat(B), reduction="none").view(B, -1)
    N = int(offsets[-1])
    ll = torch.zeros(B, N, device=dev, dtype=lp.dtype).index_add(1, resp, lp)
    return ll.T, torch.bincount(resp, minlength=N)


def mixture_terms(ll: torch.Tensor, tokens: torch.Tensor, cfg: BranchTrainConfig) -> dict[str, torch.Tensor]:
    """The training loss of a batch and what is logged: per-token objective + balance, mixture NLL per
    token, mean entropy of the responsibilities, winner share of each branch."""
    n_tok = tokens.sum().clamp_min(1)
    mix = soft_em_loss(ll)
    main = mix if cfg.objective == "soft-em" else wta_loss(ll, cfg.wta_eps)
    resp = torch.softmax(ll, -1)
    bal = balance_loss(resp)
    usage = torch.bincount(ll.detach().argmax(-1), minlength=ll.shape[1]).float() / ll.shape[0]
    return {"loss": main.sum() / n_tok + cfg.balance * bal, "mixture_nll": mix.detach().sum() / n_tok,
            "balance": bal.detach(), "entropy": -(resp * resp.clamp_min(1e-12).log()).sum(-1).mean().detach(),
            "usage": usage}


@torch.no_grad()
def measure_hidden_rms(model: nn.Module, rows: Sequence[dict], layers: Sequence[int], K: int) -> list[float]:
    """Median per-token RMS of the hidden states at the input of each of ``layers``, on the first
    :data:`RMS_PROMPTS` prompt groups (the median: a few positions carry huge activations)."""
    groups = [_pack(r, K) for r in rows[:RMS_PROMPTS]]
    inputs = _packed_inputs(model, groups)
    real = inputs["attention_mask"].new_zeros(inputs["input_ids"].shape, dtype=torch.bool)
    for n, g in enumerate(groups):
        real[n, :len(g.ids)] = True
    with layer_range(model, 0, layers[-1] + 1) as base:  # hidden_states[i]: the input of layer i
        hs = base(use_cache=False, output_hidden_states=True, **inputs).hidden_states
    return [float(hs[i].float().pow(2).mean(-1).sqrt()[real].median()) for i in layers]


@contextlib.contextmanager
def _frozen(model: nn.Module):
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


def data_hash(rows: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["prompt_ids"], [x["ids"] for x in r["responses"]]]).encode())
    return h.hexdigest()


def train_branches(model: nn.Module, tokenizer, data_rows: Sequence[dict], cfg: BranchTrainConfig, *,
                   model_name: str = "", progress: Progress | None = None) -> tuple[LearnedBranches, dict]:
    """Train ``cfg.branches`` learned branches on ``data_rows`` (:func:`load_branch_data`) with the base
    model frozen (its ``requires_grad`` flags and mode are restored after).

    A seeded 10% (``val_frac``) of the prompts is held back; the rest is shuffled each epoch (seeded
    ``torch.Generator``; the global RNG is never touched) into steps of ``batch_prompts`` prompt groups.
    Adam on the vectors only.

    Returns:
        ``(branches, history)``; history: ``steps`` (per step: loss, mixture NLL per token, balance KL,
        responsibility entropy, winner share per branch), ``epochs`` (validation, epoch 0 = at init),
        ``plain_val_nll`` (the plain model's NLL per token on the validation responses), ``seconds``.
    """
    t0 = time.perf_counter()
    rows = list(data_rows)
    vocab = model.config.vocab_size
    for i, r in enumerate(rows):
        if max(r["prompt_ids"] + [t for x in r["responses"] for t in x["ids"]]) >= vocab:
            raise DataError(f"row {i} of the data has token ids beyond this model's vocabulary of {vocab}: "
                            f"the data was made with another tokenizer")
    if len(rows) < 1:
        raise DataError("no training rows")
    layers = resolve_layers(cfg.layers, model.config.num_hidden_layers)
    _stack_base(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(rows), generator=gen).tolist()
    n_val = min(len(rows) - 1, math.ceil(cfg.val_frac * len(rows))) if cfg.val_frac > 0 else 0
    val_rows, train_rows = [rows[i] for i in perm[:n_val]], [rows[i] for i in perm[n_val:]]
    K = cfg.tokens
    with _frozen(model):
        rms = measure_hidden_rms(model, train_rows, layers, K)
        branches = new_branches(model, cfg.branches, layers, model_name=model_name, init_scale=cfg.init_scale,
                                hidden_rms=rms, generator=gen)
        branches.config.training = asdict(cfg)
        branches.config.data_sha256 = data_hash(rows)
        first = layers[0]
        train_g = cache_groups(model, train_rows, first, K, progress=progress)
        val_g = cache_groups(model, val_rows, first, K) if val_rows else []
        opt = torch.optim.Adam([branches.vectors], lr=cfg.lr * sum(rms) / len(rms))
        steps_per_epoch = math.ceil(len(train_g) / cfg.batch_prompts)
        total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps,
                                                                                steps_per_epoch * cfg.epochs)
        history = {"steps": [], "epochs": [], "train_prompts": len(train_g), "val_prompts": len(val_g),
                   "hidden_rms": rms}
        if val_g:
            history["plain_val_nll"] = _evaluate(model, branches, val_g, cfg, plain=True)["val_mixture_nll"]
            history["epochs"].append({"epoch": 0, **_evaluate(model, branches, val_g, cfg)})
        step = 0
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(len(train_g), generator=gen).tolist()
            for s in range(0, len(order), cfg.batch_prompts):
                if step >= total:
                    break
                batch = [train_g[i] for i in order[s:s + cfg.batch_prompts]]
                ts = time.perf_counter()
                ll, tokens = branch_loglik(model, branches, batch, bf16=cfg.bf16)
                terms = mixture_terms(ll, tokens, cfg)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                step += 1
                rec = {"step": step, "epoch": epoch, **_floats(terms), "seconds": time.perf_counter() - ts}
                if not math.isfinite(rec["loss"]):
                    raise ConfigError(f"the loss became {rec['loss']} at step {step}: lower --lr")
                history["steps"].append(rec)
                if progress is not None:
                    progress("train", step, total, rec)
            if val_g:
                history["epochs"].append({"epoch": epoch, **_evaluate(model, branches, val_g, cfg)})
            if step >= total:
                break
    history["seconds"] = time.perf_counter() - t0
    branches.vectors.requires_grad_(False)
    return branches, history


def _floats(terms: dict) -> dict:
    return {k: ([round(float(x), 4) for x in v] if v.dim() else float(v.detach())) for k, v in terms.items()}


@torch.no_grad()
def _evaluate(model, branches, groups, cfg, plain: bool = False) -> dict:
    """The objective over ``groups`` (in steps of ``batch_prompts``), token-weighted; ``plain``: zero vectors."""
    if plain:
        branches = LearnedBranches(dataclasses.replace(branches.config, branches=1)).to(branches.vectors.device)
    lls, toks = [], []
    for s in range(0, len(groups), cfg.batch_prompts):
        ll, tok = branch_loglik(model, branches, groups[s:s + cfg.batch_prompts], bf16=cfg.bf16)
        lls.append(ll)
        toks.append(tok)
    out = _floats(mixture_terms(torch.cat(lls), torch.cat(toks), cfg))
    return {"val_" + k: v for k, v in out.items()}


# ------------------------------------------------------------------------------------ use


def _shared_prefill_step(model: nn.Module, mask: torch.Tensor, shared: int) -> StepFn:
    """:func:`hf.vary.padded_hf_step` for rows whose prompts come in runs of ``shared`` equal ones: the
    first call reads each distinct prompt once and repeats its KV cache (``shared`` times less prefill)."""
    if shared == 1:
        return padded_hf_step(model, mask)
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    full, past, seen = mask.long(), None, 0

    def step(tokens: torch.Tensor, length: int) -> Step:
        nonlocal past, full, seen
        if length > full.shape[1]:
            full = torch.cat([full, full.new_ones(full.shape[0], length - full.shape[1])], 1)
        pos = (full.cumsum(-1) - 1).masked_fill(full == 0, 1)
        if past is None:
            out = model(input_ids=tokens[::shared, :length], attention_mask=full[::shared, :length],
                        position_ids=pos[::shared, :length], use_cache=True, **keep)
            past = _cache_of(out)
            past.batch_repeat_interleave(shared)
            logits = out.logits[:, -1, :].repeat_interleave(shared, 0)
        else:
            out = model(input_ids=tokens[:, seen:length], attention_mask=full[:, :length],
                        position_ids=pos[:, seen:length], use_cache=True, **keep, **{cache_kw: past})
            past, logits = _cache_of(out), out.logits[:, -1, :]
        seen = length
        return Step(logits, {})

    return step


@torch.no_grad()
def _decode_rows(model, tokenizer, rows: list[list[int]], seeds: list[int], *, max_new_tokens: int,
                 temperature: float, top_p: float | None = None, min_p: float | None = None,
                 branches: LearnedBranches | None = None, row_branch: Sequence[int] | None = None,
                 shared: int = 1):
    """``(continuation ids, text, mean NLL)`` per row: one left-padded pass, each row with its own seed
    (``RowPositionNoise``: the same decoded alone) and, with ``branches``, its own branch. ``shared``:
    the rows come in runs of that many with the same prompt (and no branches), prefilled once per run."""
    if shared > 1 and (branches is not None or len(rows) % shared
                       or any(rows[i] != rows[i - i % shared] for i in range(len(rows)))):
        raise ValueError("shared prefill needs runs of equal prompts and no branches")
    dev = next(model.parameters()).device
    ids, mask = left_pad(rows, _pad_id(tokenizer), dev)
    check_context(model, ids.shape[1], max_new_tokens)
    look = min(LOOKAHEAD, max_new_tokens)
    noise = RowPositionNoise(RowNoise(seeds, dev), ids.shape[1] - mask.sum(-1), lookahead=look)
    ctx = apply_branches(model, branches, torch.tensor(list(row_branch), device=dev)) \
        if branches is not None else contextlib.nullcontext()
    model.eval()
    with ctx:
        gen = decode(_shared_prefill_step(model, mask, shared), ids, max_new_tokens, noise,
                     Sampling(temperature, None, top_p, min_p), stop_ids=stop_token_ids(tokenizer, model))
    T0 = ids.shape[1]
    toks, lp, out = gen.tokens[:, T0:].tolist(), gen.logprobs.cpu(), []
    for b, L in enumerate(gen.lengths.tolist()):
        cont = toks[b][:L]
        out.append((cont, tokenizer.decode(cont, skip_special_tokens=True),
                    -float(lp[b, :L].mean()) if L else float("nan")))
    return out


def generate_learned(model: nn.Module, tokenizer, branches: LearnedBranches, ids_list: Sequence[list[int]],
                     seeds: Sequence[int], branch_of: Sequence[int] | None = None, *, max_new_tokens: int = 32,
                     temperature: float = 0.0, top_p: float | None = None,
                     min_p: float | None = None) -> list[tuple[list[int], str, float]]:
    """Per prompt (in order) and per seed ``j``: ``(continuation ids, text, mean NLL under the branch
    model)``, decoded with branch ``branch_of[j]`` (default ``j mod B``); all rows in one left-padded pass
    (the output format of ``experiments.compare_lm._generate``)."""
    seeds = list(seeds)
    branch_of = [j % branches.n_branches for j in range(len(seeds))] if branch_of is None else list(branch_of)
    if len(branch_of) != len(seeds):
        raise ConfigError(f"branch_of has {len(branch_of)} entries for {len(seeds)} seeds")
    rows = [list(ids) for ids in ids_list for _ in seeds]
    return _decode_rows(model, tokenizer, rows, [s for _ in ids_list for s in seeds], max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, min_p=min_p, branches=branches,
                        row_branch=[b for _ in ids_list for b in branch_of])


def think_learned(model: nn.Module, tokenizer, prompt: str, branches_module: LearnedBranches, *,
                  branches: int | None = None, seed: int = 0, branch_seeds: Sequence[int] | None = None,
                  branch_ids: Sequence[int] | None = None, max_new_tokens: int = 50, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                  stop: str | None = None, on_token=None, chat: bool | None = None) -> ThinkResult:
    """N branches of one prompt in one batched pass: row ``i`` has seed ``seed + i`` and learned branch
    ``i mod B`` (``branches`` defaults to B). A row is reproducible alone: ``branch_seeds=[seed + i]``
    decodes it with branch ``i mod B`` again (``branch_ids`` default ``(s - seed) mod B`` for each seed).

    Returns:
        :class:`~mixture_of_thoughts.generation.decoder.ThinkResult`; each branch's ``routing`` is, per
        branch layer, the one-hot of the learned branch it used.
    """
    B = branches_module.n_branches
    seeds = list(branch_seeds) if branch_seeds is not None else [seed + i for i in range(branches or B)]
    if not seeds:
        raise ConfigError("branches must be >= 1")
    ids = list(branch_ids) if branch_ids is not None else [(s - seed) % B for s in seeds]
    if len(ids) != len(seeds) or not all(0 <= b < B for b in ids):
        raise ConfigError(f"branch_ids must give one branch in [0, {B - 1}] per seed, got {ids}")
    row_branch = torch.tensor(ids, device=next(model.parameters()).device)
    with apply_branches(model, branches_module, row_branch):
        res = sample_branches(model, tokenizer, prompt, seeds, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop,
                              on_token=on_token, chat=chat)
    for br, b in zip(res.branches, ids, strict=True):
        br.routing = {layer: [float(e == b) for e in range(B)] for layer in branches_module.layers}
    return res
