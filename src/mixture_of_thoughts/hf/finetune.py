"""Fine-tune only the thought parameters of a grafted Hugging Face model (DESIGN §6).

Reuses the project's optimiser grouping and schedule (``training.optim.make_optimizer`` and
``lr_at``) in a small loop over random windows of one token stream: the trainer itself runs this
package's ``Transformer`` on character corpora and cannot take a Hugging Face model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from ..rng import RowNoise
from ..training.optim import lr_at, make_optimizer, optimizer_step
from .graft import freeze_except_thoughts, grafted_state, thought_noise


def train_graft(model: nn.Module, ids: torch.Tensor, *, steps: int, batch_size: int = 8, block_size: int = 64,
                lr: float = 1e-3, seed: int = 0, grad_clip: float = 1.0, branches: bool = True,
                creativity: float | None = None,
                progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Fine-tune only the thought parameters on random windows of ``ids`` (1-D token ids).

    AdamW (decay on matrices, :func:`~mixture_of_thoughts.training.optim.make_optimizer`), linear
    warm-up then cosine decay (:func:`~mixture_of_thoughts.training.optim.lr_at`), gradient clipping;
    windows drawn from a generator seeded by ``seed``. Loss = LM cross-entropy + the thought layers'
    auxiliary losses. ``branches=False`` trains only the router, its temperature and the noise scales
    (tied branches stay tied). The branch noise is on at ``creativity`` (None: the graft's default),
    the creativity used for generation. ``progress(step, lm_loss)``, if given, is called after each
    step (``step`` counting from 0). Returns the LM loss per step (nats/token).
    """
    if ids.dim() != 1 or ids.numel() < 2:
        raise ConfigError("training data must hold at least 2 tokens")
    block_size = min(block_size, ids.numel() - 1)
    cfg = TrainConfig(batch_size=batch_size, max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(10, steps // 10),
                      weight_decay=0.0, grad_clip=grad_clip, seed=seed)
    freeze_except_thoughts(model, branches=branches)
    dev = next(model.parameters()).device
    opt = make_optimizer(model, cfg, dev)
    g = torch.Generator().manual_seed(seed)
    st = grafted_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    losses = []
    # The model's own dropout draws from the global RNG: fork it (the caller's state is restored on
    # exit) and seed it from ``seed`` so that fine-tuning is reproducible.
    forked = [dev] if dev.type == "cuda" else []
    with thought_noise(model, st.training_noise, creativity), torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed + 1)
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            starts = torch.randint(0, ids.numel() - block_size, (batch_size,), generator=g)
            x = ids[starts[:, None] + torch.arange(block_size + 1)[None, :]].to(dev)  # (B, block + 1), one gather
            out = model(input_ids=x[:, :-1], use_cache=False)
            lm = F.cross_entropy(out.logits.float().reshape(-1, out.logits.size(-1)), x[:, 1:].reshape(-1))
            loss = lm + st.aux_loss().to(lm.device)
            optimizer_step(opt, loss, params, grad_clip)
            losses.append(float(lm.detach()))
            if progress is not None:
                progress(step, losses[-1])
    model.eval()
    return losses




@torch.no_grad()
def heldout_nll(model: nn.Module, ids: torch.Tensor, creativities, *, block_size: int = 128, windows: int = 16,
                seed: int = 0) -> dict[float, float]:
    """Mean next-token NLL (nats/token) of the first ``windows`` non-overlapping windows of ``ids``,
    at each creativity (the same per-window noise seeds for every creativity, so the figures differ by
    the creativity alone). Returns ``{creativity: nll}``."""
    n = min(windows, (ids.numel() - 1) // block_size)
    if n < 1:
        raise ConfigError(f"held-out text of {ids.numel()} tokens is shorter than one window of {block_size + 1}")
    dev = next(model.parameters()).device
    x = ids[: n * block_size + 1]
    starts = torch.arange(n) * block_size
    win = x[starts[:, None] + torch.arange(block_size + 1)[None, :]].to(dev)  # (n, block + 1)
    was_training = model.training
    model.eval()
    out = {}
    for c in creativities:
        with thought_noise(model, RowNoise([seed + i for i in range(n)], dev), float(c)):
            logits = model(input_ids=win[:, :-1], use_cache=False).logits
        out[float(c)] = float(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), win[:, 1:].reshape(-1)))
    model.train(was_training)
    return out
