"""Rotary position embedding (Su et al., 2021), "rotate half" layout as in Llama.

Angles are computed in float64 (exact at any stream position) and applied in at least float32, in float64 when the
inputs are (the exactness tests). The tables of ``RotaryEmbedding`` are plain tensors rebuilt lazily per device
rather than registered buffers, so they never enter a checkpoint.
"""

import torch
from torch import nn


def rope_angles(positions_T: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Rotation angles [T, head_dim] (float64) of the given integer positions."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions_T.device) / head_dim)
    angles_TD2 = positions_T.to(torch.float64)[:, None] * inv_freq
    return torch.cat([angles_TD2, angles_TD2], dim=-1)


def apply_rope(x_BHTD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(x_BHTD.dtype, torch.float32)
    x = x_BHTD.to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos_TD.to(dtype) + rotated * sin_TD.to(dtype)).type_as(x_BHTD)


def rope_at(x_BHTD: torch.Tensor, positions_T: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE of x [B, H, T, D] at arbitrary integer positions [T] (streaming: positions continue across calls)."""
    angles_TD = rope_angles(positions_T, x_BHTD.shape[-1], base)
    return apply_rope(x_BHTD, angles_TD.cos(), angles_TD.sin())


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, base: float) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def tables(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [seq_len, head_dim] for positions 0..seq_len-1, kept in float64."""
        if self._tables is None or self._tables[0].device != device:
            angles_TD = rope_angles(torch.arange(self.max_seq_len, device=device), self.head_dim, self.base)
            self._tables = angles_TD.cos(), angles_TD.sin()
        cos, sin = self._tables
        return cos[:seq_len], sin[:seq_len]
