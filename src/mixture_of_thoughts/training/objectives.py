"""Training objectives: what a batch costs and how validation is scored.

An objective turns a batch of windows into ``(loss, aux_loss, stats)`` and scores the model on
held-out windows in nats per character. ``ar`` is next-character cross-entropy; ``diffusion`` is
the masked-diffusion ELBO, whose maths (schedule, masking, per-sequence bound) lives in
``models/diffusion.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import ModelConfig, TrainConfig
from ..models.diffusion import MaskSchedule, draw_mask, elbo_terms
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


class DiffusionObjective:
    """The masked-diffusion ELBO as a training objective (same interface as ``AutoregressiveObjective``)."""

    name = "diffusion"

    def __init__(self, schedule: MaskSchedule | None = None):
        self.schedule = schedule or MaskSchedule()

    def model_config(self, cfg: ModelConfig, vocab_size: int) -> ModelConfig:
        cfg.vocab_size, cfg.causal, cfg.time_conditioning = vocab_size + 1, False, True  # + [MASK]
        cfg.__post_init__()
        return cfg

    def _draw(self, model, x, generator):
        t = self.schedule.sample_t(x.shape[0], generator, x.device)
        masked = draw_mask(x, t, generator, self.schedule)
        nats, out = elbo_terms(model, x, t, masked, noise=GeneratorNoise(generator, x.shape[0]),
                               schedule=self.schedule)
        return nats, out

    def loss(self, model, x, y, generator: torch.Generator) -> StepLoss:
        """ELBO in nats per character, averaged over the batch (``y`` is unused: the target is ``x``)."""
        nats, out = self._draw(model, x, generator)
        return StepLoss(nats.mean() / x.shape[1], out.aux_loss, out.stats)

    @torch.no_grad()
    def eval_loss(self, model, x, y, generator: torch.Generator, train_cfg: TrainConfig) -> StepLoss:
        """The bound averaged over ``train_cfg.diffusion_eval_draws`` draws of ``t`` (and masks)."""
        k = train_cfg.diffusion_eval_draws
        total, aux, stats = 0.0, 0.0, {}
        for _ in range(k):
            nats, out = self._draw(model, x, generator)
            total = total + nats.mean() / x.shape[1]
            aux, stats = aux + out.aux_loss, out.stats
        return StepLoss(total / k, aux / k, stats)


def get_objective(name: str):
    if name == "ar":
        return AutoregressiveObjective()
    if name == "diffusion":
        return DiffusionObjective()
    raise ValueError(f"unknown objective {name!r}")
