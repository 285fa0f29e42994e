"""Causal (optionally sliding-window) softmax attention: a naive reference and the fused kernels."""

from hope.ops.attention.fused import causal_attention, flash_attn_available
from hope.ops.attention.naive import causal_attention_naive

__all__ = ["causal_attention", "causal_attention_naive", "flash_attn_available"]
