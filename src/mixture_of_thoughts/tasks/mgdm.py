"""Game of 24 by masked diffusion alone: the recipe of MGDM (Ye et al., 2024) on the solver's traces.

Ye et al. (*Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning*, ICLR
2025; code: github.com/HKUNLP/diffusion-vs-ar) train a small masked diffusion model on Countdown
and report it far above an autoregressive model of the same size, without search. Their recipe,
as their trainer (``tuner/mdm/trainer.py``) and Countdown script (``scripts/cd/train-mdm.sh``) run it:

* **conditional sequences**: the puzzle is given and never masked; the answer (the steps, then
  padding to a fixed length) is what the model denoises, padding included;
* **discrete time**: ``t`` uniform in ``{0, ..., T-1}`` (``T = 20``); each answer position is masked
  with probability ``(t + 1) / T``;
* **token reweighting** ("multi-granularity"): a masked position's cross-entropy ``l`` counts as
  ``alpha * (1 - exp(-l)) ** gamma * l`` (a focal loss, ``alpha = 0.25``, ``gamma = 2``): the
  hard tokens of a plan (which numbers to combine first) outweigh the easy ones;
* **time reweighting** ("linear"): a sequence at step ``t`` weighs ``T - t``, so lightly masked
  sequences count more; the sum is divided by the number of masked positions;
* **easy-first top-k decoding**: every step predicts all masked positions, then keeps the most
  confident ones and masks the rest again, ``n * (t / S)`` of the ``n`` answer positions at step
  ``t = S-1, ..., 1`` (their ``topk_decoding``, linear schedule); which to mask is chosen on
  confidence plus Gumbel noise scaled by ``0.5 * t / S`` ("stochastic0.5").

Two choices differ from their code, each for a stated reason. (1) A kept token's confidence is the
one it had when it was predicted (Mask-Predict, Ghazvininejad et al. 2019): their code re-reads it
from the model's output at an unmasked position, which its loss never trains (a GPT-2 with shifted
logits makes that output meaningful there; a denoiser without the shift has none). (2) The
answer is the steps alone, one per line (``10 - 6 = 4``), as their Countdown data write it
(``44-15=29,...``): no ``(left: ...)`` lists and no answer line, which the steps imply. Under this
project's accounting a diffusion sample costs ``steps x length`` positions (the model reads every
position at every step; there is no KV cache to reuse), so a short answer is what lets diffusion
afford more than one sample at the budgets of the report. The verifier replays the steps exactly
(:func:`read_solution`): every step must be valid on the numbers left and the last must give 24.

The model is this package's :class:`..models.transformer.Transformer` (bidirectional, time-
conditioned on the masked fraction of the answer), trained by :func:`train_mgdm` on every
distinct solution of every *training* puzzle (up to ``per_solution`` step orders each), saved as an
ordinary diffusion checkpoint (safetensors), chosen on the validation puzzles by how many a single
greedy decode solves. :class:`Denoiser` writes several answers at once from per-row seeds.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ModelConfig, TrainConfig
from ..data.tokenizer import CharTokenizer
from ..errors import ConfigError
from ..generation.diffusion import propose
from ..models.diffusion import denoiser_logits, mask_id
from ..rng import DIFFUSION, RowNoise, stream_id
from . import game24

PAD = "\n"  # answers are padded with newlines: a blank line ends the steps
_SELECT = 2  # sub-stream of the decoder's Gumbel draws (propose uses 1 for tokens)


# ------------------------------------------------------------------------------------ the text


def step_line(step: game24.Step) -> str:
    """``10 - 6 = 4``: a step as the answer writes it."""
    return f"{game24.fmt(step.a)} {step.op} {game24.fmt(step.b)} = {game24.fmt(step.result)}"


def prompt_of(puzzle) -> str:
    """``4 5 6 10:`` and a newline (the same first line as the autoregressive traces)."""
    return game24.State.start(tuple(puzzle)).prompt()


def answer_of(steps) -> str:
    """The steps, one per line, and a final newline."""
    return "".join(step_line(s) + "\n" for s in steps)


def examples(puzzles, *, per_solution: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """``(prompt, answer)`` for every distinct solution of every puzzle, up to ``per_solution`` step
    orders each (``None``: every order), shuffled. Pass only training puzzles (:func:`game24.split`)."""
    rng = random.Random(seed)
    out = []
    for p in puzzles:
        for seqs in game24.solve(tuple(sorted(p))).values():
            seqs = list(seqs)
            picks = seqs if per_solution is None else rng.sample(seqs, min(per_solution, len(seqs)))
            out += [(prompt_of(p), answer_of(steps)) for steps, _ in picks]
    rng.shuffle(out)
    return out


def replay(puzzle, text: str) -> game24.State | None:
    """The state an answer (step lines up to the first blank line) reaches from ``puzzle``, every step
    applied exactly; None as soon as a line is not a valid step on the numbers left."""
    state = game24.State.start(tuple(puzzle))
    for line in text.split(PAD + PAD)[0].strip(PAD).split(PAD):
        if state.done:
            return None  # more steps than numbers
        try:
            head, res = line.split(" = ")
            a, op, b = head.split(" ")
            if op not in game24.OPS:
                return None
            state = state.apply(game24.Step(game24.parse_number(a), op, game24.parse_number(b),
                                            game24.parse_number(res)))
        except (ValueError, ZeroDivisionError):
            return None
    return state


def read_solution(puzzle, text: str) -> str | None:
    """The canonical key of the solution an answer states, or None: every step must apply to the
    numbers left (:func:`replay`), and the last must leave 24."""
    state = replay(puzzle, text)
    return game24.canonical(state.expression()) if state is not None and state.solved else None


# ------------------------------------------------------------------------------------ training


@dataclass
class MGDMConfig:
    """The model and MGDM's training recipe (defaults: theirs where they apply, sized for a CPU).

    Attributes:
        n_layer, n_head, n_embd: the denoiser (a bidirectional, time-conditioned transformer).
        length: positions per sequence (the puzzle, its answer, newline padding).
        diffusion_steps: ``T`` of training's discrete time (theirs: 20).
        alpha, gamma: the token reweighting ``alpha * (1 - exp(-l)) ** gamma * l`` (theirs: 0.25, 2).
        token_weighting: apply it (False: plain cross-entropy, the ablation).
        time_weighting: ``"linear"`` (``T - t``, theirs), ``"elbo"`` (``T / (t + 1)``) or ``"none"``.
        per_solution: step orders per distinct solution in the data (None: all of them).
        train: the optimisation (the trainer's :class:`TrainConfig`: batch, steps, AdamW, cosine decay,
            seed of the data order, initialisation and masks), MGDM-sized by default.
        minutes: stop after this many minutes even before ``train.max_steps`` (a CPU budget).
        eval_every: steps between validation decodes (the best checkpoint is kept).
        eval_steps: denoising steps of the validation decode.
        init: an autoregressive checkpoint (run or checkpoint directory) to start from instead of random
            weights: its size replaces ``n_layer, n_head, n_embd``, its tokenizer is kept and ``[MASK]``
            added, attention becomes bidirectional, and the logits are *shifted* (the output at position
            ``i - 1`` predicts token ``i``, as the autoregressive head was trained), the adaptation of
            Gong et al. 2025 (*Scaling Diffusion Language Models via Adaptation from Autoregressive
            Models*, DiffuLLaMA) and of Dream 7B. No time input: the masked context says the time.
        suffix: the share of training rows that mask a *suffix* of the answer (at the row's masked
            fraction) instead of random positions: the left-to-right curriculum of block diffusion
            (Arriola et al. 2025), which asks for each step's result from the steps before it.
        anneal: with ``init``, the steps over which attention opens from causal to bidirectional
            (DiffuLLaMA's attention mask annealing): at step ``s`` a query reads each later key with
            probability ``s / anneal``; 0 opens it at once.
        tie_values: mask each intermediate number whole and everywhere it is written (its result and
            its later uses together, :func:`ties`), so a result cannot be copied from the step that uses
            it and must be computed from its operands.
    """

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    length: int = 64
    diffusion_steps: int = 20
    alpha: float = 0.25
    gamma: float = 2.0
    token_weighting: bool = True
    time_weighting: str = "linear"
    per_solution: int | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(objective="diffusion", batch_size=64,
                                                                   max_steps=3500, seed=0))
    minutes: float | None = None
    eval_every: int = 250
    eval_steps: int = 8
    init: str | None = None
    suffix: float = 0.0
    anneal: int = 0
    tie_values: bool = False

    @property
    def shift(self) -> bool:
        """The outputs are read one position on (:func:`logits_of`): a model adapted from ``init``."""
        return self.init is not None

    def __post_init__(self):
        if self.time_weighting not in ("linear", "elbo", "none"):
            raise ConfigError(f"time_weighting must be linear, elbo or none, got {self.time_weighting!r}")
        for name in ("length", "diffusion_steps", "eval_every", "eval_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")
        if isinstance(self.anneal, bool) or not isinstance(self.anneal, int) or self.anneal < 0:
            raise ConfigError(f"anneal must be a whole number of steps >= 0, got {self.anneal!r}")
        if self.anneal and self.init is None:
            raise ConfigError("anneal opens a causal model's attention: it needs init (--adapt)")
        if not 0.0 <= self.suffix <= 1.0:
            raise ConfigError(f"suffix must be a share in [0, 1], got {self.suffix}")
        if self.per_solution is not None and self.per_solution < 1:
            raise ConfigError(f"per_solution must be >= 1 (or None for every step order), got {self.per_solution}")


def tokenizer_for(pairs) -> CharTokenizer:
    """A character vocabulary covering every puzzle and answer (digits, ``+-*/``, ``=``, ``:``, space, newline)."""
    text = "".join(p + a for p, a in pairs) + PAD + "0123456789+-*/=: "
    return CharTokenizer.from_text(text)


def encode(tok: CharTokenizer, pairs, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (N, length), given (N, length) bool)``: prompt then answer, newline-padded; ``given``
    marks the prompt (never masked). A pair longer than ``length`` is an error naming it."""
    pad = tok.encode(PAD)[0]
    ids = torch.full((len(pairs), length), pad, dtype=torch.long)
    given = torch.zeros((len(pairs), length), dtype=torch.bool)
    for i, (p, a) in enumerate(pairs):
        x = tok.encode(p + a)
        if len(x) > length:
            raise ConfigError(f"{(p + a)!r} is {len(x)} characters, longer than length={length}: raise length")
        ids[i, :len(x)] = torch.tensor(x)
        given[i, :len(tok.encode(p))] = True
    return ids, given


def ties(pairs, length: int) -> torch.Tensor:
    """(N, length) long: at each position of an intermediate number, the id (within its row) of that
    number, else -1. A step's result and its later use as an operand share an id (an operand equal to
    several open results takes the latest; one not among them is a puzzle number and stays -1), so
    :func:`mgdm_loss` with ``tie_values`` masks a number whole and everywhere it is written."""
    out = torch.full((len(pairs), length), -1, dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        pos, open_ = len(p), []  # results not yet used: (text, id)
        for k, line in enumerate(a.rstrip(PAD).split(PAD)):
            left, op, right, _, res = line.split(" ")
            for start, text in ((pos, left), (pos + len(left) + len(op) + 2, right)):
                hit = next((j for j in range(len(open_) - 1, -1, -1) if open_[j][0] == text), None)
                if hit is not None:
                    out[i, start:start + len(text)] = open_.pop(hit)[1]
            start = pos + len(line) - len(res)
            out[i, start:start + len(res)] = k
            open_.append((res, k))
            pos += len(line) + 1
    return out


def mgdm_loss(model, x: torch.Tensor, given: torch.Tensor, cfg: MGDMConfig, g: torch.Generator, *,
              future: float = 1.0, tie: torch.Tensor | None = None) -> torch.Tensor:
    """MGDM's training loss on a batch: mask answer positions at a random discrete time, weight each
    masked position's cross-entropy by the token and time weights, divide by the masked count.

    ``future`` < 1 (attention mask annealing, a denoiser adapted from a causal model): each query reads
    every key before it and each later key with probability ``future``, drawn per row. ``tie``: the
    rows' :func:`ties` (with ``cfg.tie_values``): the positions of one number share their draw."""
    B, L = x.shape
    T = cfg.diffusion_steps
    t = torch.randint(0, T, (B,), generator=g)
    u = torch.rand((B, L), generator=g)
    if cfg.tie_values:
        if tie is None:
            raise ConfigError("tie_values needs the rows' ties (mgdm.ties)")
        u = torch.where(tie >= 0, torch.rand((B, L), generator=g).gather(1, tie.clamp(min=0)), u)
    masked = (u < ((t + 1).float() / T)[:, None]) & ~given
    if cfg.suffix > 0:  # these rows mask a suffix of the answer instead, at the same fraction
        rows = torch.rand(B, generator=g) < cfg.suffix
        n = (~given).sum(1)
        start = L - ((t + 1).float() / T * n).ceil().long()
        after = torch.arange(L, device=x.device)[None, :] >= start[:, None].to(x.device)
        masked = torch.where(rows[:, None].to(x.device), after, masked) & ~given
    masked[:, -1] |= ~masked.any(1)  # a row with nothing masked still teaches something (the last pad)
    x_t = torch.where(masked, torch.full_like(x, mask_id(model)), x)
    attn = None
    if future < 1.0:
        causal = torch.ones(L, L, dtype=torch.bool).tril()  # every earlier key, and later ones by chance
        attn = (causal | (torch.rand((B, 1, L, L), generator=g) < future)).to(x.device)
    logits = logits_of(model, x_t, masked_fraction(masked, given), shift=cfg.shift, attn_mask=attn)
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
    ce = torch.where(masked, ce, torch.zeros_like(ce))
    if cfg.token_weighting:
        ce = cfg.alpha * (1.0 - torch.exp(-ce)) ** cfg.gamma * ce
    if cfg.time_weighting == "linear":
        w = (T - t).float()
    elif cfg.time_weighting == "elbo":
        w = T / (t + 1).float()
    else:
        w = torch.ones(B)
    return (ce * w[:, None]).sum() / masked.sum()


def logits_of(model, x_t: torch.Tensor, t: torch.Tensor, *, shift: bool, attn_mask=None) -> torch.Tensor:
    """(B, L, V+1) logits of every position's clean token (``[MASK]`` at -inf). ``shift``: the model
    was adapted from an autoregressive one, so position ``i``'s token is read from output ``i - 1``
    (position 0, always given, keeps its own output). ``attn_mask``: as for the model (default all)."""
    logits, _ = denoiser_logits(model, x_t, t, attn_mask=attn_mask)
    return shifted(logits) if shift else logits


def shifted(logits: torch.Tensor) -> torch.Tensor:
    """Output ``i - 1`` as position ``i``'s prediction (position 0 keeps its own)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], 1)


def masked_fraction(masked: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """(B,) the time input: the masked fraction of each row's answer positions."""
    return (masked.sum(1).float() / (~given).sum(1).clamp(min=1).float()).clamp(1e-3, 1.0)


def adapt(ck, cfg: MGDMConfig, generator: torch.Generator):
    """The denoiser adapted from the autoregressive checkpoint ``ck``: the same weights, bidirectional
    attention, a block of ``cfg.length``, no time input, and ``[MASK]`` added as the last id (its
    embedding, tied to the head, drawn as the model's own were, std 0.02)."""
    import dataclasses

    from ..models.transformer import Transformer

    mc = ck.model.config
    if mc.has_thoughts:
        raise ConfigError(f"{ck.path} has thought layers: start the denoiser from a plain autoregressive run")
    new = Transformer(dataclasses.replace(mc, vocab_size=mc.vocab_size + 1, block_size=cfg.length, causal=False,
                                          time_conditioning=False))
    state = ck.model.state_dict()
    mask = torch.randn(1, state["wte.weight"].shape[1], generator=generator) * 0.02
    state["wte.weight"] = torch.cat([state["wte.weight"].float(), mask])
    state["lm_head.weight"] = state["wte.weight"]  # tied
    new.load_state_dict(state)
    return new.float()


def build_model(cfg: MGDMConfig, vocab_size: int):
    """The denoiser for a vocabulary of ``vocab_size`` characters (``[MASK]`` added as the last id)."""
    from ..models.transformer import Transformer

    mc = ModelConfig(vocab_size=vocab_size + 1, block_size=cfg.length, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, causal=False, time_conditioning=True)
    return Transformer(mc).init_weights(torch.Generator().manual_seed(cfg.train.seed))


def train_mgdm(train_puzzles, val_puzzles, cfg: MGDMConfig, out: str | Path, *,
               log: Callable[[dict], None] | None = None, force: bool = False) -> dict:
    """Train a denoiser on the training puzzles' traces with MGDM's recipe; save ``out/best`` (the
    checkpoint solving the most validation puzzles with one greedy decode) and ``out/latest``.

    Returns the run's summary (also ``out/summary.json``); progress rows go to ``log`` and
    ``out/metrics.jsonl``. The global RNG is not touched.
    """
    from ..training.checkpoint import save_checkpoint
    from ..training.optim import lr_at, make_optimizer, optimizer_step
    from ..training.trainer import prepare_out_dir

    out = Path(out)
    pairs = examples(train_puzzles, per_solution=cfg.per_solution, seed=cfg.train.seed)
    if not pairs:
        raise ConfigError("no training puzzles with a solution: nothing to train on")
    if cfg.init is None:
        tok = tokenizer_for(pairs)
        model = build_model(cfg, tok.vocab_size)
    else:
        from ..training.checkpoint import load_checkpoint

        ck = load_checkpoint(cfg.init, expect="ar")
        tok = ck.tokenizer
        lacking = sorted(set(tokenizer_for(pairs).chars) - set(tok.chars))
        if lacking:
            raise ConfigError(f"{cfg.init}'s tokenizer lacks {lacking!r}: start from a Game of 24 run")
        model = adapt(ck, cfg, torch.Generator().manual_seed(cfg.train.seed))
    model.train()
    x_all, given_all = encode(tok, pairs, cfg.length)
    tie_all = ties(pairs, cfg.length) if cfg.tie_values else None
    prepare_out_dir(out, resume=False, force=force)  # once the model and data are ready: a bad start writes nothing
    out.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    opt = make_optimizer(model, tc, torch.device("cpu"))
    g = torch.Generator().manual_seed(tc.seed + 1)
    meta = {"mgdm": asdict(cfg), "shift": cfg.shift, "train": asdict(tc),
            "data": f"{len(pairs)} traces of {len(train_puzzles)} training puzzles (mot game24 train --kind mgdm)",
            "answer_format": "mgdm-answer/1"}
    best, summary, t0, step = -1.0, {}, time.time(), 0
    metrics = (out / "metrics.jsonl").open("w", encoding="utf-8")
    running = []
    try:
        while step < tc.max_steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            idx = torch.randint(0, len(pairs), (tc.batch_size,), generator=g)
            future = min(1.0, step / cfg.anneal) if cfg.anneal else 1.0
            loss = mgdm_loss(model, x_all[idx], given_all[idx], cfg, g, future=future,
                             tie=None if tie_all is None else tie_all[idx])
            optimizer_step(opt, loss, model.parameters(), tc.grad_clip)
            step += 1
            running.append(float(loss.detach()))
            over = cfg.minutes is not None and time.time() - t0 > 60 * cfg.minutes
            if step % cfg.eval_every == 0 or step == tc.max_steps or over:
                model.eval()
                shift = cfg.shift
                solved = solve_rate(Denoiser(model, tok, steps=cfg.eval_steps, shift=shift), val_puzzles)
                first = first_result_accuracy(model, tok, val_puzzles, shift=shift)
                model.train()
                row = {"step": step, "train_loss": sum(running) / len(running), "val_solved": solved,
                       "val_first_result": first, "minutes": (time.time() - t0) / 60}
                running = []
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                if log:
                    log(row)
                info = {**meta, "step": step, "val_solved": solved}
                save_checkpoint(out / "latest", model, tok, objective="diffusion", meta=info)
                if solved >= best:  # ties go to the later, longer-trained checkpoint
                    best = solved
                    save_checkpoint(out / "best", model, tok, objective="diffusion", meta=info)
                    summary = {"best_step": step, "val_solved": solved}
            if over:
                break
    finally:
        metrics.close()
    summary.update({"steps": step, "minutes": (time.time() - t0) / 60, "traces": len(pairs),
                    "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


# ------------------------------------------------------------------------------------ decoding


class Denoiser:
    """Writes answers to puzzles with MGDM's easy-first top-k decoding, several rows at once.

    Args:
        model, tokenizer: a checkpoint made by :func:`train_mgdm`.
        steps: denoising steps ``S``; a row costs ``S * length`` positions (the model reads the whole
            sequence at every step).
        temperature: 0 takes each position's most likely token (theirs); above 0 samples it.
        select_noise: the Gumbel scale on the choice of what to mask again (theirs: 0.5), times ``t / S``.
        shift: the model was adapted from an autoregressive one (:func:`adapt`); :meth:`from_checkpoint`
            reads it from the checkpoint.
    """

    def __init__(self, model, tokenizer, *, steps: int = 8, temperature: float = 0.0, select_noise: float = 0.5,
                 shift: bool = False):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"the denoising steps must be a positive integer, got {steps!r}")
        if not temperature >= 0 or not select_noise >= 0:
            raise ConfigError(f"temperature and select_noise must be >= 0, got {temperature}, {select_noise}")
        self.model, self.tok = model.eval(), tokenizer
        self.steps, self.temperature, self.select_noise = steps, float(temperature), float(select_noise)
        self.shift = bool(shift)
        self.length = model.config.block_size
        self.dev = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, ck, **kw) -> Denoiser:
        """The denoiser of a checkpoint made by :func:`train_mgdm` (``kw`` as for the constructor)."""
        return cls(ck.model, ck.tokenizer, shift=bool(ck.meta.get("shift", False)), **kw)

    @property
    def cost(self) -> int:
        """Positions one row costs: every position, at every step."""
        return self.steps * self.length

    @torch.no_grad()
    def answers(self, puzzles, seeds: list[int]) -> list[str]:
        """One answer per (puzzle, seed) row; a row's answer depends only on its puzzle and seed."""
        x, given = encode(self.tok, [(prompt_of(p), "") for p in puzzles], self.length)
        x, given = x.to(self.dev), given.to(self.dev)
        tokens = self.decode(x, given, RowNoise(seeds, self.dev))
        n = given.sum(1).tolist()
        return [self.tok.decode(row[k:]) for row, k in zip(tokens.tolist(), n, strict=True)]

    def decode(self, x: torch.Tensor, given: torch.Tensor, noise: RowNoise) -> torch.Tensor:
        """(B, L) ids: the answer positions (``~given``) denoised in :attr:`steps` easy-first steps."""
        S, M = self.steps, mask_id(self.model)
        answer = ~given
        n = answer.sum(1)
        x = torch.where(answer, torch.full_like(x, M), x)
        score = torch.zeros(x.shape, device=x.device)
        positions = torch.arange(x.shape[1], device=x.device)
        for i in range(S):
            masked = x == M
            logits = logits_of(self.model, x, masked_fraction(masked, given), shift=self.shift)
            tok, conf = propose(logits, noise, i, positions, self.temperature)
            x = torch.where(masked, tok, x)
            score = torch.where(masked, conf.clamp_min(1e-30).log(), score)
            if i == S - 1:
                break
            rate = (S - 1 - i) / S
            k = (n.float() * rate).long()  # answer positions masked again for the next step
            key = score
            if self.select_noise > 0:
                u = noise.uniform(stream_id(DIFFUSION, i & 0xFFFF, _SELECT), positions).to(x.device)
                key = key - self.select_noise * rate * torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
            key = key.masked_fill(given, float("inf"))
            rank = key.argsort(1).argsort(1)
            x = torch.where(rank < k[:, None], torch.full_like(x, M), x)
        return x


def solve_rate(den: Denoiser, puzzles, *, batch: int = 100) -> float:
    """The fraction of ``puzzles`` one decode (seed 0) solves."""
    if not puzzles:
        return float("nan")
    hits = 0
    for i in range(0, len(puzzles), batch):
        chunk = puzzles[i:i + batch]
        answers = den.answers(chunk, [0] * len(chunk))
        hits += sum(read_solution(p, a) is not None for p, a in zip(chunk, answers, strict=True))
    return hits / len(puzzles)


@torch.no_grad()
def first_result_accuracy(model, tok: CharTokenizer, puzzles, *, shift: bool, later_given: bool = False,
                          limit: int = 400) -> float:
    """Arithmetic with the rest unwritten: the share of the answers of ``puzzles`` (up to ``limit``)
    whose first step's result one greedy pass writes exactly when the prompt and the first step's
    left side (``10 - 6 = ``) are given and everything after them is masked, as when an answer is
    written from left to right. ``later_given``: mask the result alone, the later steps (which use it)
    given. An autoregressive model (causal, nothing to mask: its attention hides what follows) is read
    the same way, its output at ``i - 1`` predicting token ``i`` (pass ``shift=True``) with the true
    digits before each one (teacher forcing)."""
    pairs = examples(puzzles)[:limit]
    if not pairs:
        return float("nan")
    causal = model.config.causal
    length = max(len(p + a) for p, a in pairs) if causal else model.config.block_size
    x, given = encode(tok, pairs, length)
    x, given = x.to(model.wte.weight.device), given.to(model.wte.weight.device)
    start = torch.tensor([len(p) + a.index("= ") + 2 for p, a in pairs], device=x.device)
    end = torch.tensor([len(p) + a.index(PAD) for p, a in pairs], device=x.device)
    pos = torch.arange(x.shape[1], device=x.device)[None, :]
    result = (pos >= start[:, None]) & (pos < end[:, None])
    if causal:
        logits = model.eval()(x).logits
        pred = (shifted(logits) if shift else logits).argmax(-1)
    else:
        masked = result if later_given else pos >= start[:, None]
        x_t = torch.where(masked, torch.full_like(x, mask_id(model)), x)
        pred = logits_of(model.eval(), x_t, masked_fraction(masked, given), shift=shift).argmax(-1)
    return float(((pred == x) | ~result).all(1).float().mean())


def max_length(puzzles) -> int:
    """The longest prompt + answer of ``puzzles``' solutions (what ``length`` must hold)."""
    return max((len(p + a) for p, a in examples(puzzles)), default=0)


__all__ = ["MGDMConfig", "Denoiser", "examples", "replay", "read_solution", "train_mgdm", "solve_rate", "mgdm_loss",
           "encode", "tokenizer_for", "adapt", "logits_of",
           "first_result_accuracy", "ties", "step_line", "prompt_of", "answer_of", "max_length"]
