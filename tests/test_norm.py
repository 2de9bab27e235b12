"""RMSNorm: the numbers of ``nn.RMSNorm`` forward, and its written-out backward against autograd's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixture_of_thoughts.layers.norm import RMSNorm, rms_norm


def _x_w(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 24, generator=g, dtype=dtype) * 3
    w = torch.randn(24, generator=g, dtype=dtype)
    return x, w


def test_inference_matches_torch_rmsnorm_exactly():
    x, w = _x_w()
    ref = nn.RMSNorm(24, eps=1e-6)
    ours = RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(w)
        ours.weight.copy_(w)
        assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("need", ["both", "x", "weight"])
def test_training_value_and_gradients_match_autograd(need):
    x, w = _x_w(torch.float64, seed=1)
    x.requires_grad_(need in ("both", "x"))
    w.requires_grad_(need in ("both", "weight"))
    up = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # autograd through the ops
    y = rms_norm(x, w, 1e-6)
    assert y.requires_grad and torch.allclose(y, ref_y, atol=1e-12)
    inputs = [t for t in (x, w) if t.requires_grad]
    for a, r in zip(torch.autograd.grad((y * up).sum(), inputs), torch.autograd.grad((ref_y * up).sum(), inputs),
                    strict=True):
        assert torch.allclose(a, r, atol=1e-10)


def test_training_passes_gradcheck():
    x, w = _x_w(torch.float64, seed=3)
    x, w = x[:2, :3].clone().requires_grad_(), w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))


def test_low_precision_input_with_float_weight_promotes_like_torch():
    x, w = _x_w()
    x = x.to(torch.bfloat16).requires_grad_()
    w = w.requires_grad_()
    y = rms_norm(x, w, 1e-6)
    with torch.no_grad():
        assert y.dtype == rms_norm(x, w, 1e-6).dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
