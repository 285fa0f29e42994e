"""SwiGLU feed-forward (Shazeer, 2020), the Transformer++ MLP: down(silu(gate(x)) * up(x))."""

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """Gated feed-forward [..., dim] -> [..., dim] through a ``hidden``-wide SwiGLU layer, without biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """down(silu(gate(x)) * up(x)), the same shape as ``x``."""
        return self.down(F.silu(self.gate(x)) * self.up(x))
