"""Reference attention, obviously correct and slow: one query at a time, a softmax over the keys it may see.

Only tests and benchmarks import this module; they compare every backend of ``fused.py`` against it. It computes in
float64 whatever the inputs' dtype and returns that dtype.
"""

import math

import torch

__all__ = ["causal_attention_naive", "masked_attention_naive"]


def _attend(q_BHD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per head [B, H, D] over its allowed keys and values [B, H, S, D]: sum_s softmax_s(q . k_s) v_s."""
    scores_BHS = (k_BHSD.double() @ q_BHD.double()[..., None])[..., 0] * scale
    return (torch.softmax(scores_BHS, dim=-1)[..., None] * v_BHSD.double()).sum(dim=-2)


def causal_attention_naive(q_BHTD, k_BHTD, v_BHTD, window: int | None = None) -> torch.Tensor:
    """Query t attends keys s with s <= t and t - s < window (all s <= t without a window); [B, H, T, D]."""
    scale = 1 / math.sqrt(q_BHTD.shape[-1])
    out_BHTD = torch.empty_like(q_BHTD)
    for t in range(q_BHTD.shape[-2]):
        keys = slice(0 if window is None else max(0, t - window + 1), t + 1)
        out_BHTD[..., t, :] = _attend(q_BHTD[..., t, :], k_BHTD[..., keys, :], v_BHTD[..., keys, :], scale)
    return out_BHTD


def masked_attention_naive(q_BHTD, k_BHSD, v_BHSD, allowed_TS: torch.Tensor, scale: float | None = None):
    """Query t attends the keys s where allowed[t, s]; scale 1 / sqrt(D) unless given; [B, H, T, D]."""
    scale = 1 / math.sqrt(q_BHTD.shape[-1]) if scale is None else scale
    out_BHTD = torch.empty_like(q_BHTD)
    for t in range(q_BHTD.shape[-2]):
        keys = allowed_TS[t].nonzero()[:, 0]
        out_BHTD[..., t, :] = _attend(q_BHTD[..., t, :], k_BHSD[..., keys, :], v_BHSD[..., keys, :], scale)
    return out_BHTD
