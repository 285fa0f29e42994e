"""Input and output plumbing shared by the memory layers (``NeuralMemory``, ``SelfModifyingTitans``).

Splitting features into heads, the causal depthwise convolution that carries its last inputs across calls, the
normalised gated output (Titans §4.4) and cutting state fields from the graph. Functions of the layers' own
modules, so that the layers keep their parameter names.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["split_heads", "causal_conv", "zero_conv_cache", "gated_output", "detach_field"]


def split_heads(h_BTC: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, H, T, D]."""
    B, T, _ = h_BTC.shape
    return h_BTC.view(B, T, -1, head_dim).transpose(1, 2)


def causal_conv(
    conv: nn.Conv1d | None, h_BTC: torch.Tensor, cache_BCK: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal conv of h [B, T, C] continuing from the cached last K-1 inputs [B, C, K-1].

    Returns the conv output [B, T, C] and the new cache; without a conv, h and the (None) cache unchanged.
    """
    if conv is None:
        return h_BTC, cache_BCK
    h_BCT = torch.cat([cache_BCK, h_BTC.mT], dim=-1)  # [B, C, K-1+T]
    keep = cache_BCK.shape[-1]
    return conv(h_BCT).mT, h_BCT[..., h_BCT.shape[-1] - keep :]


def zero_conv_cache(conv: nn.Conv1d, batch_size: int, ref: torch.Tensor) -> torch.Tensor:
    """The history of a fresh stream for ``conv``: K-1 zero inputs [B, C, K-1], dtype and device of ``ref``."""
    return ref.new_zeros(batch_size, conv.in_channels, conv.kernel_size[0] - 1)


def gated_output(
    y_BHTD: torch.Tensor, x: torch.Tensor, out_norm: nn.Module | None, out_gate: nn.Module | None, out_proj: nn.Module
) -> torch.Tensor:
    """Per-head RMSNorm, heads merged, times SiLU(x W_gate), output projection (Titans §4.4, Gated DeltaNet)."""
    if out_norm is not None:
        y_BHTD = out_norm(y_BHTD)
    B, H, T, D = y_BHTD.shape
    y = y_BHTD.transpose(1, 2).reshape(B, T, H * D)  # merge heads
    if out_gate is not None:
        y = y * F.silu(out_gate(x))
    return out_proj(y)


def detach_field(field: torch.Tensor | tuple[torch.Tensor, ...] | None):
    """A state field (a tensor, a tuple of tensors or None) cut from the autograd graph."""
    if field is None:
        return None
    if isinstance(field, torch.Tensor):
        return field.detach()
    return tuple(t.detach() for t in field)
