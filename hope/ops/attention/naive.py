"""Reference attention: an explicit masked softmax, obviously correct, used to test the fused kernels."""

import math

import torch


def causal_mask(seq_len: int, window: int | None, device=None) -> torch.Tensor:
    """Boolean [T, T] mask, True where query t may attend key s: s <= t and (t - s) < window."""
    t = torch.arange(seq_len, device=device)
    delta_TT = t[:, None] - t[None, :]
    allowed = delta_TT >= 0
    if window is not None:
        allowed &= delta_TT < window
    return allowed


def causal_attention_naive(q_BHTD, k_BHTD, v_BHTD, window: int | None = None) -> torch.Tensor:
    scores_BHTT = (q_BHTD @ k_BHTD.transpose(-1, -2)) / math.sqrt(q_BHTD.shape[-1])
    mask = causal_mask(q_BHTD.shape[-2], window, q_BHTD.device)
    scores_BHTT = scores_BHTT.masked_fill(~mask, float("-inf"))
    # softmax in at least float32 (bf16 scores lose too much), in float64 when the inputs are
    probs_BHTT = torch.softmax(scores_BHTT.to(torch.promote_types(scores_BHTT.dtype, torch.float32)), dim=-1)
    return probs_BHTT.type_as(v_BHTD) @ v_BHTD
