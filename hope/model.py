"""HopeLM: token embedding -> blocks -> RMSNorm -> output head. One class for every model family.

The model is plain PyTorch (no Lightning). Its call signature carries explicit recurrent state so that streaming,
generation and test-time learning read naturally::

    logits_BTV, state = model(idx_BT, state)

A Transformer++ block keeps no state (``state`` entries are None); memory families return theirs (Titans:
``hope.layers.titans``), and one call on a sequence equals any split of it into calls that carry the state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hope.config import ModelConfig
from hope.layers.attention import CausalSelfAttention
from hope.layers.hope_block import HopeAttentionBlock, HopeBlock
from hope.layers.mlp import SwiGLU
from hope.layers.norm import RMSNorm
from hope.layers.srwm import SRWMBlock
from hope.layers.titans import LMMBlock, MACBlock, MAGBlock, MALBlock


class TransformerBlock(nn.Module):
    """Pre-norm Transformer++ block: x + attn(norm(x)), then x + mlp(norm(x))."""

    carries_state = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config.n_embd, config.resolved_intermediate_size)

    def forward(self, x: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        """The block's output; no state (the KV cache is dropped: ``hope.generate`` recomputes the context)."""
        h, _ = self.attn(self.attn_norm(x))
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), None


BLOCKS: dict[str, type[nn.Module]] = {
    "transformer": TransformerBlock,
    "titans-mac": MACBlock,
    "titans-mag": MAGBlock,
    "titans-mal": MALBlock,
    "titans-lmm": LMMBlock,
    "hope": HopeBlock,
    "hope-attention": HopeAttentionBlock,
    "srwm": SRWMBlock,
}


class HopeLM(nn.Module):
    """Token embedding -> blocks of ``config.family`` -> RMSNorm -> output head; see the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(BLOCKS[config.family](config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for embeddings and linear weights; the projections that write into the residual
        stream (attention ``proj``, MLP ``down``, memory ``out_proj``) use init_std / sqrt(2 * n_layer) (GPT-2),
        norms start at 1. Blocks with a memory then reset its own parameters (initial weights, gate biases)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                is_residual_out = name.endswith((".proj", ".down", ".out_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            if hasattr(block, "reset_memory_parameters"):
                block.reset_memory_parameters()

    @property
    def carries_state(self) -> bool:
        """Whether the blocks keep a recurrent state, so that a stream can be fed in pieces (see hope.generate)."""
        return all(block.carries_state for block in self.blocks)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (tied weights once), without the token embedding if asked."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    def forward(self, idx_BT: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        """Logits over the padded vocabulary [B, T, padded_vocab_size] and the new per-block state."""
        T = idx_BT.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(
                f"input length {T} exceeds model.max_seq_len={self.config.max_seq_len}; shorten data.seq_len or "
                f"raise model.max_seq_len (RoPE extrapolates poorly past the trained length)."
            )
        state = state if state is not None else [None] * len(self.blocks)
        x = self.embed(idx_BT)
        new_state = []
        for block, block_state in zip(self.blocks, state, strict=True):
            x, block_state = block(x, block_state)
            new_state.append(block_state)
        return self.head(self.norm(x)), new_state
