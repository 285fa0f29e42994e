"""Rotary position embedding (Su et al., 2021), "rotate half" layout as in Llama.

The cos/sin tables are plain tensors rebuilt lazily per device/dtype rather than registered buffers, so they
never enter a checkpoint and a model moved to another device rebuilds them.
"""

import torch
from torch import nn


def rope_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [seq_len, head_dim] in float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles_TD2 = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles_TD = torch.cat([angles_TD2, angles_TD2], dim=-1)
    return angles_TD.cos(), angles_TD.sin()


def apply_rope(x_BHTD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    half = x_BHTD.shape[-1] // 2
    x1, x2 = x_BHTD[..., :half], x_BHTD[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x_BHTD.float() * cos_TD + rotated.float() * sin_TD).type_as(x_BHTD)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, base: float) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def tables(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tables is None or self._tables[0].device != device:
            self._tables = rope_tables(self.max_seq_len, self.head_dim, self.base, device)
        cos, sin = self._tables
        return cos[:seq_len], sin[:seq_len]
