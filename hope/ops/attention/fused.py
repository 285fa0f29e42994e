"""Softmax attention kernels: causal (optionally sliding-window) and under any boolean mask.

- ``causal_attention``: flash-attn 2 when installed and on CUDA in fp16/bf16, else PyTorch SDPA (``is_causal``, or,
  when a sliding window cuts into the sequence, the O(T W) blocked SDPA of ``chunked.sliding_window_attention``,
  which equals a masked full SDPA up to round-off). flash-attn's ``window_size=(w - 1, 0)`` is the same window as
  ``causal_mask(..., window=w)``.
- ``masked_attention``: SDPA with an explicit boolean mask [T, S] (keys from a cache, a persistent prefix,
  segment-local positions); flash-attn cannot take such a mask.

Backend ``naive`` (``ModelConfig.attn_backend``) is an explicit masked softmax in both. ``naive.py`` beside this file
is the slow per-query reference that the tests compare every backend against; nothing here imports it.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

from hope.ops.attention.chunked import sliding_window_attention

__all__ = ["causal_attention", "causal_mask", "flash_attn_available", "masked_attention"]


def flash_attn_available() -> bool:
    """Whether flash-attn is installed and a CUDA device is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def causal_mask(q_positions_T: torch.Tensor, k_positions_S: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Boolean [T, S] mask, True where query t may attend key s: k_pos <= q_pos and q_pos - k_pos < window."""
    delta_TS = q_positions_T[:, None] - k_positions_S[None, :]
    allowed_TS = delta_TS >= 0
    if window is not None:
        allowed_TS &= delta_TS < window
    return allowed_TS


def _explicit_softmax(q_BHTD, k_BHSD, v_BHSD, allowed_TS: torch.Tensor, scale: float | None) -> torch.Tensor:
    scale = 1 / math.sqrt(q_BHTD.shape[-1]) if scale is None else scale  # SDPA's default
    scores_BHTS = (q_BHTD @ k_BHSD.mT) * scale
    scores_BHTS = scores_BHTS.masked_fill(~allowed_TS, float("-inf"))
    # softmax in at least float32 (bf16 scores lose too much), in float64 when the inputs are
    probs_BHTS = torch.softmax(scores_BHTS.to(torch.promote_types(scores_BHTS.dtype, torch.float32)), dim=-1)
    return probs_BHTS.type_as(v_BHSD) @ v_BHSD


def masked_attention(
    q_BHTD, k_BHSD, v_BHSD, allowed_TS: torch.Tensor, scale: float | None = None, backend: str = "sdpa"
) -> torch.Tensor:
    """softmax(q k^T * scale, masked to allowed [T, S]) v, [B, H, T, D]; ``naive``: explicit softmax, else SDPA.

    ``scale`` defaults to 1 / sqrt(D); pass it when the head dim was widened (the persistent prefix)."""
    if backend == "naive":
        return _explicit_softmax(q_BHTD, k_BHSD, v_BHSD, allowed_TS, scale)
    return F.scaled_dot_product_attention(q_BHTD, k_BHSD, v_BHSD, attn_mask=allowed_TS, scale=scale)


def _flash_ok(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available()


def _flash(q_BHTD, k_BHTD, v_BHTD, window: int | None) -> torch.Tensor:
    from flash_attn import flash_attn_func

    # flash-attn wants [B, T, H, D]
    q, k, v = (t.transpose(1, 2) for t in (q_BHTD, k_BHTD, v_BHTD))
    window_size = (-1, -1) if window is None else (window - 1, 0)
    return flash_attn_func(q, k, v, causal=True, window_size=window_size).transpose(1, 2)


def _square_mask(q_BHTD: torch.Tensor, window: int | None) -> torch.Tensor:
    positions_T = torch.arange(q_BHTD.shape[-2], device=q_BHTD.device)
    return causal_mask(positions_T, positions_T, window)


def causal_attention(q_BHTD, k_BHTD, v_BHTD, window: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Causal attention over [B, H, T, D] tensors with the chosen backend (see ModelConfig.attn_backend)."""
    if backend == "naive":
        return _explicit_softmax(q_BHTD, k_BHTD, v_BHTD, _square_mask(q_BHTD, window), None)
    if backend == "flash" or (backend == "auto" and _flash_ok(q_BHTD)):
        if not _flash_ok(q_BHTD):
            raise RuntimeError(
                "model.attn_backend='flash' needs flash-attn installed (pip install 'hope[cuda]'), a CUDA device "
                "and fp16/bf16 inputs; use attn_backend='auto' to fall back to SDPA."
            )
        return _flash(q_BHTD, k_BHTD, v_BHTD, window)
    if window is None or window >= q_BHTD.shape[-2]:
        return F.scaled_dot_product_attention(q_BHTD, k_BHTD, v_BHTD, is_causal=True)
    return sliding_window_attention(q_BHTD, k_BHTD, v_BHTD, window)
