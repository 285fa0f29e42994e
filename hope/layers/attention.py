"""Multi-head causal self-attention with RoPE (Transformer++), optionally sliding-window."""

import torch
from torch import nn

from hope.config import ModelConfig
from hope.layers.rope import RotaryEmbedding, apply_rope
from hope.ops.attention import causal_attention


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.resolved_head_dim
        self.window, self.backend = config.sliding_window, config.attn_backend
        inner = self.n_head * self.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, config.n_embd, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, config.max_seq_len, config.rope_base)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BTC.shape
        qkv = self.qkv(x_BTC).view(B, T, 3, self.n_head, self.head_dim)
        q_BHTD, k_BHTD, v_BHTD = qkv.permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
        cos, sin = self.rope.tables(T, x_BTC.device)
        q_BHTD, k_BHTD = apply_rope(q_BHTD, cos, sin), apply_rope(k_BHTD, cos, sin)
        y_BHTD = causal_attention(q_BHTD, k_BHTD, v_BHTD, self.window, self.backend)
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, -1))  # [B, T, H*D]
