"""The training loop: clipping, evaluation, checkpoints, resume (the optimiser and schedule: :mod:`.optim`).

One code path for a single process and for ``torchrun`` (DDP). Everything random comes from
explicit generators whose states are checkpointed, so ``resume`` continues exactly: the losses
after resuming equal the uninterrupted run's, bit for bit on CPU.

Files in the run directory (rank 0 only): ``latest/`` and ``best/`` checkpoints and
``metrics.jsonl`` (one JSON object per evaluation: step, train/val loss in nats and bits per
character, learning rate, tokens/s, auxiliary loss, and per thought layer the router entropy,
load-balancing and z-losses, and branch load).

The library draws no progress bar: pass a :class:`TrainProgress` (the CLI backs one with tqdm).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import ModelConfig, TrainConfig
from ..data.batches import CharDataset, get_batch
from ..data.corpus import load_corpus
from ..data.tokenizer import CharTokenizer
from ..device import autocast, resolve_device, resolve_dtype
from ..errors import CheckpointError, TrainingDiverged
from ..models.transformer import Transformer
from ..units import to_bits
from . import distributed
from .checkpoint import is_run, load_checkpoint, load_trainer_state, save_checkpoint
from .objectives import StepLoss, get_objective
from .optim import lr_at, make_optimizer, optimizer_step

log = logging.getLogger(__name__)
RANK_SEED_STRIDE = 1_000_003  # keeps the ranks' data streams apart
LAYER_SCALARS = ("router_entropy", "balance_loss", "z_loss")  # per thought layer, logged at each evaluation
EVAL_CHUNK_TOKENS = 8192  # tokens per forward pass of an evaluation, at most (or one batch, if larger)


class TrainProgress(Protocol):
    """Follows a run on rank 0 (other ranks never call it); the CLI backs it with a tqdm bar."""

    def start(self, total: int, initial: int, desc: str) -> None:
        """Before the first step: the schedule's length ``total`` and the step the run starts from."""

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """After each optimisation step; ``step`` counts the steps done (``initial + 1``, ``initial + 2``, ...).

        ``metrics`` holds the step's training ``loss`` (nats) and ``lr``; after an evaluation also
        that evaluation's ``metrics.jsonl`` record (``train_loss``, ``val_loss``, ``val_bpc``,
        ``tokens_per_s``, ``aux_loss`` averaged since the last evaluation, ...).
        """

    def close(self) -> None:
        """Once, when the run ends: finished, stopped, interrupted or failed."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float
    last_val_loss: float
    interrupted: bool = False


def prepare_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to write into a directory that holds something, unless told to."""
    if resume:
        if not is_run(out):
            raise CheckpointError(f"--resume {out}: not a run directory (no latest/ checkpoint or metrics.jsonl)")
        return
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            what = "holds a run" if is_run(out) else "is not empty and is not a run"
            raise CheckpointError(f"--out {out} {what}; pass --resume to continue a run, --force to overwrite, "
                                  "or choose another directory")
        for name in ("latest", "best", "metrics.jsonl", "train_args.json"):  # only our own files
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


class _Evaluator:
    """Fixed train and validation batches, scored the same way at every evaluation.

    ``eval_batches`` batches of ``batch_size`` rows per split, drawn once; consecutive batches are
    scored together, up to ~:data:`EVAL_CHUNK_TOKENS` tokens a forward pass (fewer, larger passes:
    ~15% of an evaluation of ``cpu-small``), and the loss is the mean over all their rows.
    """

    def __init__(self, ds: CharDataset, cfg: TrainConfig, block: int, device):
        g = torch.Generator().manual_seed(cfg.seed + 7)
        per = max(1, EVAL_CHUNK_TOKENS // (block * cfg.batch_size))  # batches per forward pass
        self.batches = {}
        for split in ("train", "val"):
            drawn = [get_batch(ds.split(split), block, cfg.batch_size, g, device) for _ in range(cfg.eval_batches)]
            chunks = (drawn[i:i + per] for i in range(0, len(drawn), per))
            self.batches[split] = [tuple(torch.cat(t) for t in zip(*chunk, strict=True)) for chunk in chunks]
        self.seed = cfg.seed + 11

    @torch.no_grad()
    def __call__(self, model, objective, cfg, device, dtype) -> dict:
        model.eval()
        out, stats_acc = {}, {}
        for split, batches in self.batches.items():
            g = torch.Generator(device=device).manual_seed(self.seed)
            total, n_all = 0.0, sum(x.shape[0] for x, _ in batches)
            for x, y in batches:
                with autocast(device, dtype):
                    ev = objective.eval_loss(model, x, y, g, cfg)
                share = x.shape[0] / n_all  # each chunk weighs by its rows
                total += float(ev.loss) * share
                if split == "val":
                    for layer, s in ev.stats.items():
                        acc = stats_acc.setdefault(layer, dict.fromkeys(LAYER_SCALARS, 0.0) | {"load": 0})
                        for key in LAYER_SCALARS:
                            acc[key] += float(s[key]) * share
                        acc["load"] = acc["load"] + s["load"].float().cpu() * share
            out[f"{split}_loss"] = total
            out[f"{split}_bpc"] = to_bits(out[f"{split}_loss"])
        if stats_acc:
            for key in LAYER_SCALARS:
                out[key] = {str(k): round(v[key], 5) for k, v in stats_acc.items()}
            out["branch_load"] = {str(k): [round(float(x), 5) for x in v["load"]] for k, v in stats_acc.items()}
        model.train()
        return out


@dataclass
class _Run:
    """A run being trained: what the steps, evaluations and checkpoints share."""

    out: Path
    dist_info: distributed.DistInfo
    dev: torch.device
    amp: torch.dtype
    cfg: TrainConfig
    tokenizer: CharTokenizer
    model: Transformer
    ddp_model: torch.nn.Module
    objective: Any
    ds: CharDataset
    optimizer: Any  # FusedAdamW, or torch.optim.AdamW off CPUs and CUDA
    batch_gen: torch.Generator
    noise_gen: torch.Generator
    evaluate: _Evaluator
    meta: dict[str, Any]
    step: int = 0
    best: float = float("inf")
    dropout_rng: torch.Tensor | None = None  # the global RNG state to resume dropout from


@dataclass
class _Window:
    """The steps since the last evaluation: when they began, how many, their summed auxiliary loss."""

    t0: float = field(default_factory=time.perf_counter)
    steps: int = 0
    aux: float = 0.0


def _model_and_data(data, out: Path, model_cfg, train_cfg, *, resume: bool, max_steps, dev):
    """The run's data, configuration, tokenizer, model, objective and trainer state (``None`` when fresh)."""
    if not resume:
        text = load_corpus(data)
        tokenizer = CharTokenizer.from_text(text)
        objective = get_objective(train_cfg.objective)
        model_cfg = objective.model_config(ModelConfig.from_dict(model_cfg.to_dict()), tokenizer.vocab_size)
        model = Transformer(model_cfg).init_weights(torch.Generator().manual_seed(train_cfg.seed)).to(dev)
        return data, text, train_cfg, tokenizer, model, objective, None
    ck = load_checkpoint(out, which="latest", device=dev)
    state = load_trainer_state(ck.path)
    train_cfg = TrainConfig.from_dict(ck.meta["train"])
    if max_steps is not None:
        train_cfg.max_steps = max_steps
        train_cfg.__post_init__()
    data = data or ck.meta["data"]
    return data, load_corpus(data), train_cfg, ck.tokenizer, ck.model, get_objective(ck.objective), state


def _set_up(data, out: Path, model_cfg, train_cfg, *, resume: bool, force: bool, device, dtype, max_steps) -> _Run:
    """Join the process group, check ``out``, build or load the model, optimiser and generators."""
    dev = resolve_device(device)
    dist_info, dev = distributed.setup(dev)
    amp = resolve_dtype(dtype, dev)
    if dist_info.is_main:
        prepare_out_dir(out, resume=resume, force=force)
    distributed.barrier(dist_info)
    data, text, train_cfg, tokenizer, model, objective, state = _model_and_data(
        data, out, model_cfg, train_cfg, resume=resume, max_steps=max_steps, dev=dev)
    ds = CharDataset(text, model.config.block_size, tokenizer)
    batch_gen = torch.Generator().manual_seed(train_cfg.seed + RANK_SEED_STRIDE * (dist_info.rank + 1))
    noise_gen = torch.Generator(device=dev).manual_seed(train_cfg.seed + 2 + dist_info.rank)
    optimizer = make_optimizer(model, train_cfg, dev)
    run = _Run(out, dist_info, dev, amp, train_cfg, tokenizer, model, model, objective, ds, optimizer, batch_gen,
               noise_gen, _Evaluator(ds, train_cfg, model.config.block_size, dev),
               {"train": asdict(train_cfg), "data": str(data)})
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        batch_gen.set_state(state["batch_gen"])
        noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
        run.step, run.best = int(state["step"]), float(state["best_val_loss"])
        run.dropout_rng = state.get("dropout_rng")
    if dist_info.enabled:
        run.ddp_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    return run


def _checkpoint(run: _Run, name: str, val_loss: float | None) -> None:
    """Save the model and the trainer state at the current step to ``out/name`` (rank 0)."""
    if not run.dist_info.is_main:
        return
    trainer_state = {"step": run.step, "optimizer": run.optimizer.state_dict(),
                     "batch_gen": run.batch_gen.get_state(), "dropout_rng": torch.get_rng_state(),
                     "noise_gen": run.noise_gen.get_state().cpu(), "best_val_loss": run.best}
    save_checkpoint(run.out / name, run.model, run.tokenizer, objective=run.objective.name,
                    meta={**run.meta, "step": run.step, "val_loss": val_loss}, trainer_state=trainer_state)


def _train_step(run: _Run, lr: float) -> StepLoss:
    """One optimisation step at learning rate ``lr``; a non-finite loss saves the last good state and raises."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x, y = get_batch(run.ds.train, run.model.config.block_size, run.cfg.batch_size, run.batch_gen, run.dev)
    with autocast(run.dev, run.amp):
        sl = run.objective.loss(run.ddp_model, x, y, run.noise_gen)
    total = sl.loss + sl.aux_loss
    if not torch.isfinite(total):
        _checkpoint(run, "latest", None)  # parameters are still those of the last good step
        raise TrainingDiverged(
            f"the training loss became {float(total.detach())} at step {run.step}; stopped. The last good state is "
            f"saved in {run.out / 'latest'}: resume it with a lower learning rate (--lr) or more warm-up")
    optimizer_step(run.optimizer, total, run.model.parameters(), run.cfg.grad_clip)
    run.step += 1
    return sl


def _evaluate(run: _Run, lr: float, window: _Window, metrics_f) -> dict[str, Any]:
    """Score the fixed batches, save ``latest`` (and ``best`` if improved), append to ``metrics.jsonl``."""
    elapsed = time.perf_counter() - window.t0
    ev = run.evaluate(run.model, run.objective, run.cfg, run.dev, run.amp)
    tokens_per_step = run.cfg.batch_size * run.model.config.block_size * run.dist_info.world_size
    record = {"step": run.step, **ev, "lr": lr, "aux_loss": window.aux / window.steps,
              "tokens_per_s": tokens_per_step * window.steps / max(elapsed, 1e-9)}
    improved = ev["val_loss"] < run.best
    run.best = min(run.best, ev["val_loss"])
    _checkpoint(run, "latest", ev["val_loss"])
    if improved:
        _checkpoint(run, "best", ev["val_loss"])
    if metrics_f is not None:
        metrics_f.write(json.dumps(record) + "\n")
        metrics_f.flush()
    log.info("step %d: train %.4f val %.4f (%.3f bpc)", run.step, ev["train_loss"], ev["val_loss"], ev["val_bpc"])
    return record


def _loop(run: _Run, end: int, metrics_f, progress: TrainProgress | None) -> tuple[float, bool]:
    """Step to ``end``, evaluating every ``eval_interval`` steps and at ``end``; Ctrl-C saves ``latest``.

    Returns the last validation loss (NaN if none) and whether the run was interrupted.
    """
    last_val, window = float("nan"), _Window()
    try:
        while run.step < end:
            lr = lr_at(run.step, run.cfg)
            sl = _train_step(run, lr)
            window.steps += 1
            window.aux += float(sl.aux_loss.detach())
            record = {}
            if run.step % run.cfg.eval_interval == 0 or run.step == end:
                record = _evaluate(run, lr, window, metrics_f)
                last_val, window = record["val_loss"], _Window()
            if progress is not None:
                progress.update(run.step, {"loss": float(sl.loss.detach()), "lr": lr, **record})
    except KeyboardInterrupt:
        _checkpoint(run, "latest", None)
        return last_val, True
    return last_val, False


def train(data: str, out: str | Path, model_cfg: ModelConfig | None, train_cfg: TrainConfig | None, *,
          resume: bool = False, force: bool = False, device: str | None = None, dtype: str | None = None,
          progress: TrainProgress | None = None, max_steps: int | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train a model on a character corpus (or resume a run).

    Args:
        data: a text file path or ``"shakespeare"``; on resume ``None`` reuses the run's data.
        out: the run directory.
        model_cfg, train_cfg: configurations (ignored on resume: the run's own are loaded).
        resume: continue the run in ``out`` from its ``latest`` checkpoint.
        force: overwrite the run files in an existing ``out``.
        device, dtype: see :mod:`mixture_of_thoughts.device`.
        progress: a :class:`TrainProgress` told of every step, on rank 0 only (``None``: silent).
        max_steps: on resume, a new total number of steps (e.g. to train longer).
        stop_after: save and stop after this step although the schedule runs to ``max_steps``.
    Returns:
        :class:`TrainResult`.
    """
    out = Path(out)
    run = _set_up(data, out, model_cfg, train_cfg, resume=resume, force=force, device=device, dtype=dtype,
                  max_steps=max_steps)
    main = run.dist_info.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    metrics_f = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None
    progress = progress if main else None
    end = run.cfg.max_steps if stop_after is None else min(run.cfg.max_steps, stop_after)
    try:
        if progress is not None:
            progress.start(run.cfg.max_steps, run.step, f"train {run.objective.name}")
        run.model.train()
        # Dropout draws from the global RNG (it takes no generator): fork it, so the caller's state is
        # left as it was, seed it from the run, and checkpoint it, so resuming stays exact.
        with torch.random.fork_rng(devices=[run.dev] if run.dev.type == "cuda" else []):
            if run.dropout_rng is not None:
                torch.set_rng_state(run.dropout_rng)
            else:
                torch.manual_seed(run.cfg.seed + 3 + run.dist_info.rank)
            last_val, interrupted = _loop(run, end, metrics_f, progress)
    finally:
        if progress is not None:
            progress.close()
        if metrics_f is not None:
            metrics_f.close()
        distributed.teardown(run.dist_info)
    return TrainResult(out, run.step, run.best, last_val, interrupted)
