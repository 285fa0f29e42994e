"""Softmax attention kernels (``fused.py``, ``chunked.py``); ``naive.py`` holds the slow reference that only tests
import."""

from hope.ops.attention.chunked import sliding_window_attention
from hope.ops.attention.fused import causal_attention, causal_mask, flash_attn_available, masked_attention

__all__ = ["causal_attention", "causal_mask", "flash_attn_available", "masked_attention", "sliding_window_attention"]
