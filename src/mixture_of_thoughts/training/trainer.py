"""The training loop: AdamW, warm-up then cosine decay, clipping, evaluation, checkpoints, resume.

One code path for a single process and for ``torchrun`` (DDP). Everything random comes from
explicit generators whose states are checkpointed, so ``resume`` continues exactly: the losses
after resuming equal the uninterrupted run's, bit for bit on CPU.

Files in the run directory (rank 0 only): ``latest/`` and ``best/`` checkpoints and
``metrics.jsonl`` (one JSON object per evaluation: step, train/val loss in nats and bits per
character, learning rate, tokens/s, auxiliary loss, and per thought layer the router entropy,
load-balancing and z-losses, and branch load).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import ModelConfig, TrainConfig
from ..data.batches import CharDataset, get_batch
from ..data.corpus import load_corpus
from ..data.tokenizer import CharTokenizer
from ..device import autocast, resolve_device, resolve_dtype
from ..errors import CheckpointError, TrainingDiverged
from ..models.transformer import Transformer
from . import distributed
from .checkpoint import is_run, load_checkpoint, load_trainer_state, save_checkpoint
from .objectives import get_objective

log = logging.getLogger(__name__)
LN2 = math.log(2.0)
RANK_SEED_STRIDE = 1_000_003  # keeps the ranks' data streams apart
LAYER_SCALARS = ("router_entropy", "balance_loss", "z_loss")  # per thought layer, logged at each evaluation


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= cfg.max_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's grouping)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


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
    """Fixed train and validation batches, scored the same way at every evaluation."""

    def __init__(self, ds: CharDataset, cfg: TrainConfig, block: int, device):
        g = torch.Generator().manual_seed(cfg.seed + 7)
        self.batches = {split: [get_batch(ds.split(split), block, cfg.batch_size, g, device)
                                for _ in range(cfg.eval_batches)] for split in ("train", "val")}
        self.seed = cfg.seed + 11

    @torch.no_grad()
    def __call__(self, model, objective, cfg, device, dtype) -> dict:
        model.eval()
        out, stats_acc = {}, {}
        for split, batches in self.batches.items():
            g = torch.Generator(device=device).manual_seed(self.seed)
            losses = []
            for x, y in batches:
                with autocast(device, dtype):
                    ev = objective.eval_loss(model, x, y, g, cfg)
                losses.append(float(ev.loss))
                if split == "val":
                    for layer, s in ev.stats.items():
                        acc = stats_acc.setdefault(layer, dict.fromkeys(LAYER_SCALARS, 0.0) | {"load": 0})
                        for key in LAYER_SCALARS:
                            acc[key] += float(s[key]) / len(batches)
                        acc["load"] = acc["load"] + s["load"].float().cpu() / len(batches)
            out[f"{split}_loss"] = sum(losses) / len(losses)
            out[f"{split}_bpc"] = out[f"{split}_loss"] / LN2
        if stats_acc:
            for key in LAYER_SCALARS:
                out[key] = {str(k): round(v[key], 5) for k, v in stats_acc.items()}
            out["branch_load"] = {str(k): [round(float(x), 5) for x in v["load"]] for k, v in stats_acc.items()}
        model.train()
        return out


def train(data: str, out: str | Path, model_cfg: ModelConfig | None, train_cfg: TrainConfig | None, *,
          resume: bool = False, force: bool = False, device: str | None = None, dtype: str | None = None,
          progress: bool = False, max_steps: int | None = None, stop_after: int | None = None) -> TrainResult:
    """Train a model on a character corpus (or resume a run).

    Args:
        data: a text file path or ``"shakespeare"``; on resume ``None`` reuses the run's data.
        out: the run directory.
        model_cfg, train_cfg: configurations (ignored on resume: the run's own are loaded).
        resume: continue the run in ``out`` from its ``latest`` checkpoint.
        force: overwrite the run files in an existing ``out``.
        device, dtype: see :mod:`mixture_of_thoughts.device`.
        progress: show a tqdm progress bar (rank 0).
        max_steps: on resume, a new total number of steps (e.g. to train longer).
        stop_after: save and stop after this step although the schedule runs to ``max_steps``.
    Returns:
        :class:`TrainResult`.
    """
    out = Path(out)
    dev = resolve_device(device)
    dist_info, dev = distributed.setup(dev)
    amp = resolve_dtype(dtype, dev)
    if dist_info.is_main:
        prepare_out_dir(out, resume=resume, force=force)
    distributed.barrier(dist_info)

    state = None
    if resume:
        ck = load_checkpoint(out, which="latest", device=dev)
        state = load_trainer_state(ck.path)
        train_cfg = TrainConfig.from_dict(ck.meta["train"])
        if max_steps is not None:
            train_cfg.max_steps = max_steps
            train_cfg.__post_init__()
        data = data or ck.meta["data"]
        tokenizer, model, objective = ck.tokenizer, ck.model, get_objective(ck.objective)
        text = load_corpus(data)
    else:
        text = load_corpus(data)
        tokenizer = CharTokenizer.from_text(text)
        objective = get_objective(train_cfg.objective)
        model_cfg = objective.model_config(ModelConfig.from_dict(model_cfg.to_dict()), tokenizer.vocab_size)
        model = Transformer(model_cfg).init_weights(torch.Generator().manual_seed(train_cfg.seed)).to(dev)
    ds = CharDataset(text, model.config.block_size, tokenizer)

    batch_gen = torch.Generator().manual_seed(train_cfg.seed + RANK_SEED_STRIDE * (dist_info.rank + 1))
    noise_gen = torch.Generator(device=dev).manual_seed(train_cfg.seed + 2 + dist_info.rank)
    optimizer = make_optimizer(model, train_cfg, dev)
    step, best = 0, float("inf")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        batch_gen.set_state(state["batch_gen"])
        noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
        step, best = int(state["step"]), float(state["best_val_loss"])
    ddp_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None) if dist_info.enabled else model
    evaluate = _Evaluator(ds, train_cfg, model.config.block_size, dev)
    meta = {"train": asdict(train_cfg), "data": str(data)}

    def checkpoint(name: str, at_step: int, val_loss: float | None):
        if not dist_info.is_main:
            return
        trainer_state = {"step": at_step, "optimizer": optimizer.state_dict(), "batch_gen": batch_gen.get_state(),
                         "dropout_rng": torch.get_rng_state(),
                         "noise_gen": noise_gen.get_state().cpu(), "best_val_loss": best}
        save_checkpoint(out / name, model, tokenizer, objective=objective.name,
                        meta={**meta, "step": at_step, "val_loss": val_loss}, trainer_state=trainer_state)

    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    metrics_f = open(out / "metrics.jsonl", "a", encoding="utf-8") if dist_info.is_main else None
    bar = None
    if progress and dist_info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_cfg.max_steps, initial=step, desc=f"train {objective.name}", unit="step")
    last_val, interrupted = float("nan"), False
    tokens_per_step = train_cfg.batch_size * model.config.block_size * dist_info.world_size
    t_last, steps_since, aux_acc = time.perf_counter(), 0, 0.0
    end = train_cfg.max_steps if stop_after is None else min(train_cfg.max_steps, stop_after)
    model.train()
    # Dropout draws from the global RNG (it takes no generator): fork it, so the caller's state is
    # left as it was, seed it from the run, and checkpoint it, so resuming stays exact.
    fork = contextlib.ExitStack()
    fork.enter_context(torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []))
    if state is not None and "dropout_rng" in state:
        torch.set_rng_state(state["dropout_rng"])
    else:
        torch.manual_seed(train_cfg.seed + 3 + dist_info.rank)
    try:
        while step < end:
            lr = lr_at(step, train_cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(ds.train, model.config.block_size, train_cfg.batch_size, batch_gen, dev)
            with autocast(dev, amp):
                sl = objective.loss(ddp_model, x, y, noise_gen)
            total = sl.loss + sl.aux_loss
            if not torch.isfinite(total):
                checkpoint("latest", step, None)  # parameters are still those of the last good step
                raise TrainingDiverged(
                    f"the training loss became {float(total.detach())} at step {step}; stopped. The last good state is "
                    f"saved in {out / 'latest'}: resume it with a lower learning rate (--lr) or more warm-up")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if train_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            step += 1
            steps_since += 1
            aux_acc += float(sl.aux_loss.detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(sl.loss.detach()):.4f}", refresh=False)
            if step % train_cfg.eval_interval == 0 or step == end:
                elapsed = time.perf_counter() - t_last
                ev = evaluate(model, objective, train_cfg, dev, amp)
                last_val = ev["val_loss"]
                record = {"step": step, **ev, "lr": lr, "aux_loss": aux_acc / steps_since,
                          "tokens_per_s": tokens_per_step * steps_since / max(elapsed, 1e-9)}
                improved = last_val < best
                best = min(best, last_val)
                checkpoint("latest", step, last_val)
                if improved:
                    checkpoint("best", step, last_val)
                if metrics_f is not None:
                    metrics_f.write(json.dumps(record) + "\n")
                    metrics_f.flush()
                if bar is not None:
                    bar.set_postfix(train=f"{ev['train_loss']:.4f}", val=f"{last_val:.4f}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                log.info("step %d: train %.4f val %.4f (%.3f bpc)", step, ev["train_loss"], last_val, ev["val_bpc"])
                t_last, steps_since, aux_acc = time.perf_counter(), 0, 0.0
    except KeyboardInterrupt:
        interrupted = True
        checkpoint("latest", step, None)
    finally:
        fork.close()
        if bar is not None:
            bar.close()
        if metrics_f is not None:
            metrics_f.close()
        distributed.teardown(dist_info)
    return TrainResult(out, step, best, last_val, interrupted)
