"""Fused causal attention: flash-attn 2 when installed and on CUDA in fp16/bf16, else PyTorch SDPA.

Both compute softmax(q k^T / sqrt(d) + mask) v with the mask of ``naive.causal_mask``; tests compare them.
flash-attn's ``window_size=(w - 1, 0)`` is the same window as ``causal_mask(window=w)``.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from hope.ops.attention.naive import causal_attention_naive, causal_mask


def flash_attn_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def _flash_ok(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available()


def _flash(q_BHTD, k_BHTD, v_BHTD, window: int | None) -> torch.Tensor:
    from flash_attn import flash_attn_func

    # flash-attn wants [B, T, H, D]
    q, k, v = (t.transpose(1, 2) for t in (q_BHTD, k_BHTD, v_BHTD))
    window_size = (-1, -1) if window is None else (window - 1, 0)
    return flash_attn_func(q, k, v, causal=True, window_size=window_size).transpose(1, 2)


def _sdpa(q_BHTD, k_BHTD, v_BHTD, window: int | None) -> torch.Tensor:
    seq_len = q_BHTD.shape[-2]
    if window is None or window >= seq_len:
        return F.scaled_dot_product_attention(q_BHTD, k_BHTD, v_BHTD, is_causal=True)
    mask = causal_mask(seq_len, window, q_BHTD.device)
    return F.scaled_dot_product_attention(q_BHTD, k_BHTD, v_BHTD, attn_mask=mask)


def causal_attention(q_BHTD, k_BHTD, v_BHTD, window: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Causal attention over [B, H, T, D] tensors with the chosen backend (see ModelConfig.attn_backend)."""
    if backend == "naive":
        return causal_attention_naive(q_BHTD, k_BHTD, v_BHTD, window)
    if backend == "flash" or (backend == "auto" and _flash_ok(q_BHTD)):
        if not _flash_ok(q_BHTD):
            raise RuntimeError(
                "model.attn_backend='flash' needs flash-attn installed (pip install 'hope[cuda]'), a CUDA device "
                "and fp16/bf16 inputs; use attn_backend='auto' to fall back to SDPA."
            )
        return _flash(q_BHTD, k_BHTD, v_BHTD, window)
    return _sdpa(q_BHTD, k_BHTD, v_BHTD, window)
