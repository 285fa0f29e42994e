"""Rotary position embedding (Su et al., 2021), "rotate half" layout as in Llama.

Angles are computed in float64 from the integer positions on every call and applied in at least float32, in float64
when the inputs are (the exactness tests). A stream position therefore costs no table and loses no precision however
far a stream goes, and a token is rotated identically whether it comes in one call or in many, which keeps
streaming exact.
"""

import torch


def rope_angles(positions_T: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Rotation angles [T, head_dim] (float64) of the given integer positions."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions_T.device) / head_dim)
    angles_TD2 = positions_T.to(torch.float64)[:, None] * inv_freq
    return torch.cat([angles_TD2, angles_TD2], dim=-1)


def apply_rope(x_BHTD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """x rotated by the given angles' cos and sin [T, D]: x cos + rotate_half(x) sin, in at least float32."""
    dtype = torch.promote_types(x_BHTD.dtype, torch.float32)
    x = x_BHTD.to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos_TD.to(dtype) + rotated * sin_TD.to(dtype)).type_as(x_BHTD)


def rope_at(x_BHTD: torch.Tensor, positions_T: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE of x [B, H, T, D] at arbitrary integer positions [T] (streaming: positions continue across calls)."""
    angles_TD = rope_angles(positions_T, x_BHTD.shape[-1], base)
    return apply_rope(x_BHTD, angles_TD.cos(), angles_TD.sin())
