"""Training learned branches (:mod:`.learned`) with a mixture objective over branches.

The base model is frozen; the objective over the first K response tokens is a mixture over branches,
so that the branches divide the responses among them:

- ``soft-em``: ``-log (1/B) sum_b exp(ll_b)`` (the mixture likelihood; its gradient weighs branch b
  by the EM responsibility ``r_b = softmax_b(ll_b)``);
- ``wta``: multiple-choice learning (Guzman-Rivera et al., NeurIPS 2012; stochastic MCL, Lee et al.,
  NeurIPS 2016), relaxed as in Rupprecht et al. (ICCV 2017): weight ``1 - eps`` on the winner,
  ``eps / (B - 1)`` on each other branch;
- plus ``balance * KL(mean_batch r || uniform)`` so every branch stays in use.

Speed: each prompt group (the prompt once, then each response, with a block attention mask) runs
through the frozen lower layers once, without grad; each step runs only the upper layers for the B
branch copies, and the LM head on the K response positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..training.mixture import balance_loss, soft_em_loss, wta_loss
from .learned import LearnedBranches, Progress, apply_branches, check_int, new_branches, resolve_layers

OBJECTIVES = ("soft-em", "wta")
RMS_PROMPTS = 8  # prompt groups on which the hidden-state RMS is measured


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
        check_int("branches", self.branches, 1)
        check_int("tokens", self.tokens, 1)
        check_int("epochs", self.epochs, 1)
        check_int("batch_prompts", self.batch_prompts, 1)
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
            check_int("max_steps", self.max_steps, 1)


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
