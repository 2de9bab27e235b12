"""Masked (absorbing-state) diffusion on top of the shared :class:`Transformer` (DESIGN §3).

What changes from the autoregressive model: the same ``Transformer`` with one more token id,
``[MASK]`` (the last id, ``V``), bidirectional attention (``causal=False``) and a time embedding of
the noise level ``t`` (``time_conditioning=True``). Nothing else; the trainer and the checkpoints
work unchanged through ``training.objectives.DiffusionObjective``.

Forward process: each position stays itself with probability ``alpha_t = 1 - t`` and becomes
``[MASK]`` otherwise (linear masking). The training loss is the continuous-time ELBO of MDLM
(Sahoo et al. 2024, eq. 10–11 with the SUBS parametrisation), per sequence of length L:

    loss_seq = (1/L) * sum_{l masked} w(t) * CE(logits_l, x_l),   w(t) = -alpha'(t) / (1 - alpha_t) = 1/t

with ``t`` in ``[eps, 1]`` drawn antithetically across the batch and the ``[MASK]`` logit at
``-inf``. It is an upper bound on the negative log-likelihood in nats per character; averaging CE
over masked positions only would not be, and is not done here.

:class:`MaskSchedule` is the one object that says what ``t`` means; the samplers in
``generation/diffusion.py`` use the same object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..rng import GeneratorNoise
from ..units import to_bits

EPS = 1e-3  # smallest noise level drawn in training: keeps the 1/t weight finite


@dataclass(frozen=True)
class MaskSchedule:
    """The linear masking schedule ``alpha_t = 1 - t`` (MDLM's "loglinear").

    ``t`` is the probability that a position is ``[MASK]``; training draws it in ``[eps, 1]``,
    samplers walk it from 1 to 0.
    """

    eps: float = EPS

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a position is still itself at noise level ``t``."""
        return 1.0 - t

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a position is ``[MASK]`` at noise level ``t``: ``1 - alpha_t``."""
        return 1.0 - self.alpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight ``-alpha'(t) / (1 - alpha_t)`` of a masked position's cross-entropy: ``1/t``."""
        return 1.0 / t

    def unmask_prob(self, t: torch.Tensor | float, s: torch.Tensor | float):
        """Reverse step ``t -> s < t``: probability that a masked position is revealed,
        ``(alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t``."""
        return (t - s) / t

    def sample_t(self, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """``n`` antithetic noise levels ``t_i = eps + (1 - eps) * ((u + i/n) mod 1)``, shape (n,)."""
        u = torch.rand((), generator=generator, device=generator.device)
        t = (u + torch.arange(n, device=generator.device, dtype=torch.float32) / n) % 1.0
        return (self.eps + (1.0 - self.eps) * t).to(device or generator.device)

    def time_input(self, masked: torch.Tensor) -> torch.Tensor:
        """The noise level given to the denoiser for a partly masked (B, L) batch: each row's
        masked fraction, the maximum-likelihood ``t`` for that row (clamped to ``[eps, 1]``)."""
        return masked.float().mean(-1).clamp(self.eps, 1.0)


LINEAR = MaskSchedule()  # the schedule every model of this package trains and samples with


def mask_id(model) -> int:
    """The ``[MASK]`` id of a diffusion model: its last vocabulary id."""
    return model.config.vocab_size - 1


def denoiser_logits(model, x_t: torch.Tensor, t: torch.Tensor, *, noise=None, creativity=None, attn_mask=None):
    """Float logits of the clean tokens with the ``[MASK]`` logit at ``-inf``.

    Args:
        model: a time-conditioned bidirectional :class:`Transformer`.
        x_t: (B, L) partly masked ids.
        t: (B,) noise levels.
        attn_mask: (B, 1, L, L) bool, which keys each query reads (default: all).
    Returns:
        ``(logits (B, L, V+1), ModelOutput)``.
    """
    mask = {} if attn_mask is None else {"attn_mask": attn_mask}
    out = model(x_t, noise=noise, creativity=creativity, time=t, **mask)
    logits = out.logits.float()
    logits[..., mask_id(model)] = float("-inf")
    return logits, out


def elbo_terms(model, x: torch.Tensor, t: torch.Tensor, masked: torch.Tensor, *, noise=None,
               schedule: MaskSchedule = LINEAR):
    """Per-sequence ELBO sums ``sum_{l masked} w(t) * CE(logits_l, x_l)`` for given ``t`` and mask.

    Args:
        x: (B, L) clean ids; t: (B,) noise levels; masked: (B, L) bool, the positions to mask.
    Returns:
        ``(nats (B,), ModelOutput)``: summed weighted cross-entropy per sequence (not divided by L).
    """
    x_t = torch.where(masked, torch.full_like(x, mask_id(model)), x)
    logits, out = denoiser_logits(model, x_t, t, noise=noise)
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # (B, L)
    ce = torch.where(masked, ce, torch.zeros_like(ce))  # unmasked -inf rows never reach the sum
    return ce.sum(-1) * schedule.weight(t), out


def draw_mask(x: torch.Tensor, t: torch.Tensor, generator: torch.Generator, schedule: MaskSchedule) -> torch.Tensor:
    """(B, L) bool: each position masked independently with probability ``mask_prob(t_b)``."""
    u = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    return u < schedule.mask_prob(t)[:, None]


@torch.no_grad()
def diffusion_nll(model, ids: torch.Tensor, *, draws: int = 4, seed: int = 0, batch_size: int = 64,
                  schedule: MaskSchedule = LINEAR) -> tuple[float, int, int]:
    """Upper bound on the NLL of ``ids`` (1-D) in nats: the validation bpc of DESIGN §3.

    ``ids`` is cut into non-overlapping windows of ``block_size`` (the last one may be shorter and is
    scored at its own length). Each window gets ``draws`` = K noise levels, stratified
    (``t_k = (u + k/K) mod 1``, ``u`` seeded per window) and K independent masks; its bound is the
    mean over the K draws of ``sum_masked CE / t``. Thought layers draw noise from the same seed.

    Returns:
        ``(total_nats, n_characters, K)``; bits per character = ``units.to_bits(total / n)``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    model.eval()
    T = model.config.block_size
    dev = model.wte.weight.device
    n = len(ids)
    if n < 1:
        raise ValueError("need at least one character to score")
    g = torch.Generator(device=dev).manual_seed(seed)
    n_full = n // T
    groups = [ids[:n_full * T].view(n_full, T)] if n_full else []
    if n % T:
        groups.append(ids[n_full * T:].view(1, -1))
    total = 0.0
    per = max(1, batch_size // draws)  # windows per forward; each repeated K times
    for windows in groups:
        for i in range(0, windows.shape[0], per):
            w = windows[i:i + per].to(dev)
            W = w.shape[0]
            x = w.repeat_interleave(draws, 0)  # (W*K, L): window-major, K draws each
            u = torch.rand(W, 1, generator=g, device=dev)
            strata = (u + torch.arange(draws, device=dev)[None, :] / draws) % 1.0
            t = (schedule.eps + (1.0 - schedule.eps) * strata).reshape(-1)
            masked = draw_mask(x, t, g, schedule)
            nats, _ = elbo_terms(model, x, t, masked, noise=GeneratorNoise(g, x.shape[0]), schedule=schedule)
            total += float(nats.view(W, draws).mean(-1).sum())
    return total, n, draws


def diffusion_bpc(model, ids: torch.Tensor, **kw) -> float:
    """Bits per character of ``ids`` under a diffusion model: an ELBO upper bound (see :func:`diffusion_nll`)."""
    total, n, _ = diffusion_nll(model, ids, **kw)
    return to_bits(total / n)


__all__ = ["EPS", "LINEAR", "MaskSchedule", "mask_id", "denoiser_logits", "elbo_terms",
           "draw_mask", "diffusion_nll", "diffusion_bpc"]
