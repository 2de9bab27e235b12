"""Training objectives: what a batch costs and how validation is scored.

An objective turns a batch of windows into ``(loss, aux_loss, stats)`` and scores the model on
held-out windows in nats per character. ``ar`` is next-character cross-entropy; the masked
diffusion ELBO lives in ``models/diffusion.py`` and is registered here as ``diffusion``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import ModelConfig, TrainConfig
from ..rng import GeneratorNoise


class StepLoss(NamedTuple):
    loss: torch.Tensor  # the objective, nats per character (what bpc is computed from)
    aux_loss: torch.Tensor  # auxiliary router losses, added to the loss for the gradient
    stats: dict[int, dict[str, torch.Tensor]]


class AutoregressiveObjective:
    """Next-character cross-entropy (the model's exact negative log-likelihood)."""

    name = "ar"

    def model_config(self, cfg: ModelConfig, vocab_size: int) -> ModelConfig:
        cfg.vocab_size, cfg.causal, cfg.time_conditioning = vocab_size, True, False
        cfg.__post_init__()
        return cfg

    def loss(self, model, x, y, generator: torch.Generator) -> StepLoss:
        noise = GeneratorNoise(generator, x.shape[0])
        out = model(x, y, noise=noise)
        return StepLoss(out.loss, out.aux_loss, out.stats)

    @torch.no_grad()
    def eval_loss(self, model, x, y, generator: torch.Generator, train_cfg: TrainConfig) -> StepLoss:
        """Mean nats per character over the batch (exact for an AR model), with layer stats."""
        out = model(x, y, noise=GeneratorNoise(generator, x.shape[0]))
        return StepLoss(out.loss, out.aux_loss, out.stats)


def get_objective(name: str):
    if name == "ar":
        return AutoregressiveObjective()
    if name == "diffusion":
        from ..models.diffusion import DiffusionObjective

        return DiffusionObjective()
    raise ValueError(f"unknown objective {name!r}")
