"""RMSNorm (Zhang & Sennrich, 2019): x / rms(x) * g, computed in float32 for stability under bf16."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned gain ``weight`` (initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and returned in ``x``'s dtype."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)
