"""The dense feed-forward block (nanoGPT's MLP): ``d -> hidden -> d`` with GELU.

The Mixture-of-Thoughts layer (``thoughts.py``) uses the same activation, :func:`activation`, in
each of its branches so that a dense model and a MoT model differ only in routing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def activation(x: torch.Tensor) -> torch.Tensor:
    """The FFN non-linearity shared by the dense FFN and every thought branch (tanh-free GELU)."""
    return F.gelu(x)


class DenseFFN(nn.Module):
    """``y = W_out · gelu(W_in · x)``, then dropout.

    Args:
        n_embd: model width d.
        hidden: hidden width (4·d in the presets).
        bias: biases in the two linear maps.
        dropout: dropout on the output.
    """

    def __init__(self, n_embd: int, hidden: int, *, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.fc_in = nn.Linear(n_embd, hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d) -> (B, T, d)
        return self.dropout(self.fc_out(activation(self.fc_in(x))))
