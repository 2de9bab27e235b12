"""Thought modes for Game of 24: the MoT model's branches trained to be different ways of solving.

Thought noise and temperature perturb every sample the same way, so independent samples repeat the
likeliest solution. Here the branches of the Game of 24 MoT model are trained to *divide the solutions
among them*:

* **Mode ``b``** forces branch ``b`` in every thought layer (the router may pick no other expert;
  :meth:`..steering.experts.ExpertController.force_rows`), so mode ``b`` is a dense model sharing
  attention and embeddings with the others and owning its FFNs.
* **Objective**: multiple-choice learning over the ``M`` modes (Guzman-Rivera et al., NeurIPS 2012),
  relaxed as in Rupprecht et al. (ICCV 2017): each training answer (one solution of a training puzzle,
  written as a trace) is scored by every mode without gradient; the mode that explains it best is trained
  on it with probability ``1 - eps``, another mode otherwise (:func:`..training.mixture.sampled_wta`: the
  relaxed WTA gradient in expectation, one backward pass per answer instead of ``M``). A puzzle's
  different solutions thus go to different modes.
* **Start**: the trained MoT model (shipped by default); only the answer's characters are scored,
  given the puzzle.
* **Use**: row ``i`` of a batch decodes with mode ``seed_i mod M`` and no thought noise
  (:class:`.search.models.LineModel` with ``modes``), so consecutive seeds go round the modes.

**Mode codes** (``kind="codes"``; Shen, Ott, Auli & Ranzato 2019, "Mixture Models for Diverse Machine
Translation: Tricks of the Trade", ICML: hard EM, a uniform prior and *shared parameters*, the mixture
component given as a latent token). Branches that own their FFNs see an eighth of the answers each, so
each is a weaker solver than one model trained on all of them (the control above beat the 8 modes at every
budget). Here the whole autoregressive model is shared: mode ``b`` is one learned token, ``CODE_BASE +
b`` in the tokenizer, written right after the prompt, and the same objective decides which code each
answer is trained under. Every answer trains every weight but the codes; only the code tells the modes
apart. At decoding the code is the row's first position (charged to it), after the shared prompt read.

Saved as an ordinary checkpoint whose metadata holds ``modes`` (:class:`ModesConfig`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..errors import ConfigError
from . import game24

BLOCK_SEP = "\n"  # as the training text: a trace starts after a blank line
STOP = "\n"  # the blank line that ends a trace (the search stops there)
CODE_BASE = 0xE000  # mode codes are characters of Unicode's private use area, which no text here holds
KINDS = ("branches", "codes")


@dataclass
class ModesConfig:
    """Settings of :func:`train_modes` (saved in the checkpoint's metadata).

    Attributes:
        modes: ``M``; mode ``b`` forces branch ``b`` (``M`` <= the model's branches), or is code ``b``.
        kind: ``"branches"`` (the MoT model's branches) or ``"codes"`` (the autoregressive model, shared,
            with ``M`` learned mode tokens).
        eps: the relaxed WTA's share for the modes that lost.
        per_solution: step orders per distinct solution in the data.
        train: batch (answers per step), steps, AdamW and its schedule, seed.
        minutes: stop after this many minutes even before ``train.max_steps``.
        eval_every: steps between validation scores (the best checkpoint is kept).
    """

    modes: int = 8
    kind: str = "branches"
    eps: float = 0.1
    per_solution: int = 1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=24, max_steps=700, lr=3e-4,
                                                                   min_lr=3e-5, warmup_steps=20, seed=0))
    minutes: float | None = None
    eval_every: int = 100

    def __post_init__(self):
        for name in ("modes", "per_solution", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 0 <= self.eps < 1:
            raise ConfigError(f"eps must be in [0, 1), got {self.eps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")


def answers(puzzles, *, per_solution: int = 1, seed: int = 0) -> list[tuple[str, str]]:
    """``(prompt, answer)`` per distinct solution of each puzzle (``per_solution`` step orders each):
    the prompt is the trace's first line after a blank line, the answer the rest of the trace and the
    blank line that ends it."""
    import random

    rng = random.Random(seed)
    out = []
    for p in puzzles:
        for seqs in game24.solve(tuple(sorted(p))).values():
            for steps, expr in rng.sample(list(seqs), min(per_solution, len(seqs))):
                text = game24.trace_of(p, steps, expr)
                head = game24.State.start(tuple(p)).prompt()
                out.append((BLOCK_SEP + head, text[len(head):] + STOP))
    return out


def encode(tok, pairs, code: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (N, T), targets (N, T))``: the next-token targets of the answer characters, ``-1``
    elsewhere (the prompt, a mode code and the newline padding). With ``code`` (a token id), each row
    holds it between its prompt and its answer: the slot :func:`code_setter` fills with the row's mode."""
    extra = [] if code is None else [code]
    rows = [(tok.encode(p) + extra, tok.encode(a)) for p, a in pairs]
    T = max(len(p) + len(a) for p, a in rows)
    pad = tok.encode("\n")[0]
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    tgt = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        x = torch.tensor(p + a)
        ids[i, :len(x)] = x
        tgt[i, len(p) - 1:len(x) - 1] = torch.tensor(a)
    return ids, tgt


def branch_setter(ctl):
    """``set(ids, modes) -> ids``: mode ``b`` forces branch ``b`` in every thought layer (``ctl``: an
    entered :class:`~..steering.experts.ExpertController`)."""
    def set_(ids: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
        ctl.force_rows(modes)
        return ids
    return set_


def code_setter(base: int):
    """``set(ids, modes) -> ids``: each row's code slot (its one token id ``>= base``) holds ``base +
    mode``."""
    def set_(ids: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
        slot = (ids >= base).int().argmax(-1)
        return ids.index_put((torch.arange(len(ids)), slot), base + modes)
    return set_


def answer_loglik(model, setter, ids: torch.Tensor, tgt: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """Each row's log-likelihood of its answer under its mode, ``(R,)`` (``setter``: :func:`branch_setter`
    or :func:`code_setter`)."""
    logits = model(setter(ids, modes), noise=None, aux=False).logits
    nll = F.cross_entropy(logits.transpose(1, 2), tgt.clamp(min=0), reduction="none")
    return -(nll * (tgt >= 0)).sum(-1)


@torch.no_grad()
def mode_logliks(model, setter, ids: torch.Tensor, tgt: torch.Tensor, M: int, chunk: int = 256) -> torch.Tensor:
    """Every answer's log-likelihood under every mode, ``(N, M)``, without gradient."""
    N = ids.shape[0]
    rows = torch.arange(N).repeat_interleave(M)
    modes = torch.arange(M).repeat(N)
    out = torch.cat([answer_loglik(model, setter, ids[rows[i:i + chunk]], tgt[rows[i:i + chunk]], modes[i:i + chunk])
                     for i in range(0, N * M, chunk)])
    return out.view(N, M)


def validation(model, setter, ids, tgt, M: int) -> dict:
    """Per answer character: the mixture NLL (modes drawn uniformly, as decoding goes round them), the
    best mode's (the WTA oracle) and the mean mode's; and each mode's share of the answers it wins."""
    from ..training.mixture import soft_em_loss

    ll = mode_logliks(model, setter, ids, tgt, M)
    n = float((tgt >= 0).sum())
    mix = soft_em_loss(ll).sum() / n
    share = torch.bincount(ll.argmax(-1), minlength=M).float() / len(ll)
    return {"val_mixture_nll": float(mix), "val_best_mode_nll": float(-ll.max(-1).values.sum() / n),
            "val_mean_mode_nll": float(-ll.mean(-1).sum() / n), "val_wins": [round(float(s), 4) for s in share]}


def with_codes(model, tokenizer, M: int, generator: torch.Generator):
    """The model and tokenizer with ``M`` mode codes added: characters ``CODE_BASE + b`` at the end of
    the vocabulary, their embeddings (tied to the head) drawn as the model's own were (std 0.02), so the
    modes differ from the first step and the winner-takes-all choice has something to break ties."""
    import dataclasses

    from ..data.tokenizer import CharTokenizer
    from ..models.transformer import Transformer

    if any(ord(c) >= CODE_BASE for c in tokenizer.chars):
        raise ConfigError("this model already has mode codes: start from the autoregressive run it came from")
    V = tokenizer.vocab_size
    if model.config.vocab_size != V:
        raise ConfigError(f"the model's vocabulary ({model.config.vocab_size}) is not its tokenizer's ({V})")
    new = Transformer(dataclasses.replace(model.config, vocab_size=V + M))
    state = model.state_dict()
    codes = torch.randn(M, state["wte.weight"].shape[1], generator=generator) * 0.02
    state["wte.weight"] = torch.cat([state["wte.weight"], codes])
    state["lm_head.weight"] = state["wte.weight"]  # tied
    new.load_state_dict(state)
    return new, CharTokenizer(tokenizer.chars + [chr(CODE_BASE + b) for b in range(M)])


def train_modes(init: str | Path, train_puzzles, val_puzzles, cfg: ModesConfig, out: str | Path, *,
                log: Callable[[dict], None] | None = None, force: bool = False) -> dict:
    """Fine-tune the model at ``init`` into ``cfg.modes`` modes with the relaxed WTA objective; save
    ``out/best`` (lowest validation mixture NLL) and ``out/latest``. ``kind="branches"``: a MoT run, mode
    ``b`` its branch ``b``; ``kind="codes"``: an autoregressive run, given ``cfg.modes`` mode codes.

    Returns the run's summary (also ``out/summary.json``); rows go to ``log`` and ``out/metrics.jsonl``.
    The global RNG is not touched.
    """
    import contextlib

    from ..steering.experts import ExpertController
    from ..training.checkpoint import load_checkpoint, save_checkpoint
    from ..training.mixture import sampled_wta
    from ..training.optim import lr_at, make_optimizer, optimizer_step
    from ..training.trainer import prepare_out_dir

    ck = load_checkpoint(init, expect="ar")
    model, tok = ck.model, ck.tokenizer
    g = torch.Generator().manual_seed(cfg.train.seed + 1)
    if cfg.kind == "codes":
        model, tok = with_codes(model, tok, cfg.modes, g)
        model.train()
    elif not model.config.has_thoughts:
        raise ConfigError(f"{init} has no thought layers: start from a MoT run (mot game24 train --kind mot)")
    elif cfg.modes > model.config.thoughts.n_branches:
        raise ConfigError(f"{cfg.modes} modes need as many branches; {init} has "
                          f"{model.config.thoughts.n_branches}: lower --modes")
    out = Path(out)
    prepare_out_dir(out, resume=False, force=force)
    out.mkdir(parents=True, exist_ok=True)
    tc, M = cfg.train, cfg.modes
    pairs = answers(train_puzzles, per_solution=cfg.per_solution, seed=tc.seed)
    if not pairs:
        raise ConfigError("no training puzzles with a solution: nothing to train on")
    base = tok.vocab_size - M if cfg.kind == "codes" else None
    x_all, y_all = encode(tok, pairs, base)
    vx, vy = encode(tok, answers(val_puzzles, seed=tc.seed), base)
    opt = make_optimizer(model, tc, torch.device("cpu"))
    meta = {"modes": {**asdict(cfg), "init": str(init)}, "train": asdict(tc),
            "data": f"{len(pairs)} answers of {len(train_puzzles)} training puzzles (mot game24 train --kind "
                    f"{'modes' if base is None else 'codes'})"}
    t0, step, running, wins = time.time(), 0, [], torch.zeros(M)
    state = {"best": float("inf"), "summary": {}}

    def evaluate(setter, metrics) -> None:
        model.eval()
        row = {"step": step, "train_nll": sum(running) / len(running) if running else None,
               "train_wins": (wins / wins.sum().clamp(min=1)).tolist(), **validation(model, setter, vx, vy, M),
               "minutes": (time.time() - t0) / 60}
        model.train()
        running.clear()
        wins.zero_()
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        if log:
            log(row)
        info = {**meta, "step": step, "val_mixture_nll": row["val_mixture_nll"]}
        save_checkpoint(out / "latest", model, tok, objective="ar", meta=info)
        if row["val_mixture_nll"] <= state["best"]:
            state["best"] = row["val_mixture_nll"]
            save_checkpoint(out / "best", model, tok, objective="ar", meta=info)
            state["summary"] = {"best_step": step, "val_mixture_nll": row["val_mixture_nll"],
                                "val_wins": row["val_wins"]}

    with contextlib.ExitStack() as stack:
        metrics = stack.enter_context((out / "metrics.jsonl").open("w", encoding="utf-8"))
        setter = code_setter(base) if base is not None else branch_setter(stack.enter_context(ExpertController(model)))
        while True:
            over = cfg.minutes is not None and time.time() - t0 > 60 * cfg.minutes
            if step % cfg.eval_every == 0 or over or step == tc.max_steps:
                evaluate(setter, metrics)
            if over or step == tc.max_steps:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            idx = torch.randint(0, len(pairs), (tc.batch_size,), generator=g)
            x, y = x_all[idx], y_all[idx]
            keep = int((y >= 0).any(0).nonzero().max()) + 2  # trim the padding every row has
            x, y = x[:, :keep], y[:, :keep]
            model.eval()  # scoring the modes: no dropout
            ll = mode_logliks(model, setter, x, y, M)
            model.train()
            pick = sampled_wta(ll, cfg.eps, g)
            wins += torch.bincount(ll.argmax(-1), minlength=M).float()
            loss = -answer_loglik(model, setter, x, y, pick).sum() / (y >= 0).sum()
            optimizer_step(opt, loss, model.parameters(), tc.grad_clip)
            step += 1
            running.append(float(loss.detach()))
    summary = state["summary"]
    summary.update({"steps": step, "minutes": (time.time() - t0) / 60, "answers": len(pairs),
                    "parameters": sum(p.numel() for p in model.parameters()), "config": meta["modes"]})
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def modes_of(ck) -> int:
    """The number of modes a checkpoint was trained with (0: not a modes checkpoint)."""
    return int(ck.meta.get("modes", {}).get("modes", 0))


def code_base(ck) -> int | None:
    """The token id of mode code 0 when a checkpoint's modes are codes (code ``b`` is that + ``b``),
    else None."""
    if ck.meta.get("modes", {}).get("kind") != "codes":
        return None
    base = ck.tokenizer.stoi.get(chr(CODE_BASE))
    if base is None or base + modes_of(ck) != ck.tokenizer.vocab_size:
        raise ConfigError(f"{ck.path}: its metadata names mode codes its tokenizer does not hold")
    return base
