"""Mixture objectives over branches: each training example is explained by one of B branches.

Used by the learned branches of a pretrained model (:mod:`..hf.branch_training`) and by the Game of 24
thought modes (:mod:`..tasks.modes`). ``ll`` is ``(N, B)``: each example's log-likelihood under each
branch.

- :func:`soft_em_loss`: the mixture likelihood ``-log (1/B) sum_b exp(ll_b)``;
- :func:`wta_loss`: multiple-choice learning (Guzman-Rivera et al., NeurIPS 2012), relaxed as in
  Rupprecht et al. (ICCV 2017): weight ``1 - eps`` on the winner, ``eps / (B - 1)`` on the others;
  :func:`sampled_wta` draws one branch per example with those probabilities (the same expected
  gradient, one backward pass instead of B);
- :func:`balance_loss`: ``KL(mean responsibility || uniform)``, so every branch stays in use.
"""

from __future__ import annotations

import math

import torch


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


def sampled_wta(ll: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One branch per example, ``(N, B) -> (N,)``: the winner (highest ``ll``) with probability ``1 - eps``,
    else one of the others uniformly. Training each example on its drawn branch has the expected
    gradient of :func:`wta_loss`, at the cost of one branch's backward pass."""
    N, B = ll.shape
    win = ll.detach().argmax(-1)
    if B == 1 or eps == 0:
        return win
    u = torch.rand(N, generator=generator, device="cpu").to(ll.device)
    other = torch.randint(0, B - 1, (N,), generator=generator, device="cpu").to(ll.device)
    other = other + (other >= win).long()  # uniform over the B - 1 losers
    return torch.where(u < eps, other, win)
