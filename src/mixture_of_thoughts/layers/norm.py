"""RMSNorm (Zhang & Sennrich, 2019): ``x / rms(x) * weight``, with its backward written out.

Without a gradient, :func:`rms_norm` computes the same numbers as PyTorch's ``nn.RMSNorm`` (the
same ops in the same order, bit-identical). With one, it takes :class:`_RMSNorm`: ``nn.RMSNorm``
goes through a composite with dtype round trips on CPUs, and autograd through it records every op:
nine norms a step made it ~3.5 ms of a ~40 ms ``cpu-small`` training step on the machines of
``BENCHMARKS.md``.
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
    """RMSNorm with its backward written out, in as few passes over ``x`` as eager PyTorch allows.

    With ``r = rsqrt(mean(x^2) + eps)``, ``y = x r w``: ``dw = sum_rows(g x r)`` and
    ``dx = r (g w) - x r^3 mean(g w x)``. The forward keeps ``x`` and ``r`` (not ``x r``); ``r``
    comes from one norm reduction. Backward, both sums come from the one product ``g x``, by two
    matrix-vector products (with ``r`` for ``dw``, with ``w`` for ``mean(g w x)``), and ``dx`` is
    built in place in the buffer of ``g w``: three passes over the batch forward and six backward,
    where autograd through the forward's ops records eleven and keeps ``x``, ``x^2`` and ``x r``
    alive. Every pass counts on a CPU: each costs ~30-80 us for a ``cpu-small`` batch. The
    forward gives the numbers of :func:`rms_norm` without a gradient up to rounding in ``r``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        C = x.shape[-1]
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().mul_(1.0 / C).add_(eps).rsqrt_()
        ctx.save_for_backward(x, r, weight)
        ctx.x_dtype = x.dtype
        y = torch.mul(x, r)
        return y.mul_(weight) if torch.promote_types(y.dtype, weight.dtype) == y.dtype else y * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, r, weight = ctx.saved_tensors
        C = x.shape[-1]
        dt = torch.promote_types(grad.dtype, weight.dtype)  # mixed precision: work in the wider type
        if x.dtype != dt:
            x, r = x.to(dt), r.to(dt)
        w = weight if weight.dtype == dt else weight.to(dt)
        gx_rows = (grad * x).reshape(-1, C)  # g x: one pass serves both gradients, as two products
        rows = r.reshape(-1)
        gw = torch.mv(gx_rows.t(), rows) if ctx.needs_input_grad[1] else None
        gx = None
        if ctx.needs_input_grad[0]:
            coef = torch.mv(gx_rows, w).mul_(rows.pow(3)).mul_(1.0 / C).view(r.shape)  # r^3 mean(g w x)
            gx = (grad * w).mul_(r).addcmul_(x, coef, value=-1.0)
            gx = gx if gx.dtype == ctx.x_dtype else gx.to(ctx.x_dtype)
        if gw is not None and gw.dtype != weight.dtype:
            gw = gw.to(weight.dtype)
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
