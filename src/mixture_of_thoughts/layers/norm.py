"""RMSNorm (Zhang & Sennrich, 2019): ``x / rms(x) * weight``, with its backward written out.

PyTorch's ``nn.RMSNorm`` computes the same forward numbers (the same ops in the same order, so the
outputs are bit-identical), but on CPUs it goes through a composite with dtype round trips, and
autograd through it records every op: nine norms a step made it ~3.5 ms of a ~40 ms ``cpu-small``
training step on the machines of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dimension (through :class:`_RMSNorm` when
    a gradient is needed)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNorm.apply(x, weight, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with its backward written out: with ``xh = x r``, ``r = rsqrt(mean(x^2) + eps)``,
    ``dx = r (g w - xh mean(g w xh))`` and ``dw = sum(g xh)``: seven tensor ops, where autograd
    through the forward's ops records eleven (and keeps ``x``, ``x^2`` and ``x r`` alive)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        xh = x * r
        ctx.save_for_backward(xh, r, weight)
        return xh * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xh, r, weight = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gxh = grad * weight
            gx = torch.addcmul(gxh, xh, (gxh * xh).mean(-1, keepdim=True), value=-1.0).mul_(r)
        if ctx.needs_input_grad[1]:
            gw = (grad * xh).reshape(-1, xh.shape[-1]).sum(0)
        return gx, gw, None


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension with a learned gain (``weight``, as ``nn.RMSNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
