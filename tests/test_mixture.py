"""The mixture objectives over branches (training/mixture.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mixture_of_thoughts.training import mixture as MX


def test_soft_em_loss_is_minus_log_mean_exp():
    ll = torch.tensor([[-3.0, -5.0, -4.0], [-10.0, -2.0, -7.0]], requires_grad=True)
    loss = MX.soft_em_loss(ll)
    want = [-math.log(sum(math.exp(v) for v in row) / 3) for row in ll.tolist()]
    assert loss.tolist() == pytest.approx(want)
    loss.sum().backward()  # the gradient is minus the EM responsibilities
    torch.testing.assert_close(ll.grad, -torch.softmax(ll.detach(), -1))


def test_wta_gives_the_winner_one_minus_eps():
    ll = torch.tensor([[-3.0, -1.0, -4.0, -9.0]])
    w = MX.wta_weights(ll, 0.1)
    assert w[0].tolist() == pytest.approx([0.1 / 3, 0.9, 0.1 / 3, 0.1 / 3])
    assert MX.wta_loss(ll, 0.1).item() == pytest.approx(-(0.9 * -1.0 + 0.1 / 3 * (-3 - 4 - 9)))
    assert MX.wta_loss(ll, 0.0).item() == pytest.approx(1.0)  # plain MCL: the winner alone


def test_balance_is_zero_at_uniform_usage_only():
    assert MX.balance_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-7)
    assert MX.balance_loss(torch.full((5, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-7)
    skewed = MX.balance_loss(torch.tensor([[0.9, 0.1], [0.8, 0.2]])).item()
    assert skewed > 0.1 and MX.balance_loss(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(2))


def test_sampled_wta_draws_each_branch_with_its_relaxed_weight():
    ll = torch.tensor([[-3.0, -1.0, -4.0, -9.0], [-0.5, -2.0, -1.0, -0.7]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    pick = MX.sampled_wta(ll, 0.3, g)
    freq = torch.stack([torch.bincount(pick[i::2], minlength=4).float() / 20000 for i in range(2)])
    torch.testing.assert_close(freq, MX.wta_weights(ll[:2], 0.3), atol=0.01, rtol=0)
    assert MX.sampled_wta(ll, 0.0, g).tolist() == [1, 0] * 20000  # plain MCL: always the winner
    again = MX.sampled_wta(ll, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(pick, again)  # reproducible from its generator
