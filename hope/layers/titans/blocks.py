"""Titans blocks LMM, MAG and MAL (Titans §4.2-4.4), and the parts they share with MAC (``mac.py``).

Every block is pre-norm and residual, and ends like a Transformer++ block with x + SwiGLU(RMSNorm(x)). The token
mixers are:

- **LMM** (§4.4): x + M(norm(x)). The memory is the whole mixer.
- **MAG** (§4.2, Eqs. 26-28): two branches over the same normalised input x~.
  - y = SW-Attn*([P | x~]): sliding-window attention with the persistent prefix.
  - m = M([P | x~]): the memory.
  - Combined as x + W_O(RMSNorm(y) * sigmoid(RMSNorm(m))). Both branches are normalised with learnable vector
    weights, as the paper says, and the non-linearity sigma makes the memory branch a gate on the attention branch.
    This follows §4.4, "a normalisation and a linear-layer gate before the output projection".
- **MAL** (§4.3, Eqs. 29-31): the memory as a layer before a sliding-window attention layer.
  - Memory sub-layer: x + M(norm(x)), fed [P | x~].
  - Attention sub-layer: x + W_O SW-Attn*(norm(x)).

**Persistent tokens.** P holds N_p learnable tokens per layer, living in the normalised input space.
- Attention (MAG, MAL; MAC in ``mac.py``): P is an always-visible, position-free prefix (see
  ``hope.layers.attention``).
- Memory (LMM, MAG, MAL): P is prepended to the memory's input stream, x~ = [P | x] (Eq. 19). The first call of a
  stream (state None) reads and writes P before x; the memory outputs at P's positions are dropped. In the paper's
  MAL the attention sees those outputs M(P) as its prefix. They depend on parameters only, so we give the
  attention P itself: an equally learnable prefix, with no extra memory pass.

**State.** A block's state is None at the start of a stream. After each call it holds:
- the memory's :class:`~hope.layers.neural_memory.NeuralMemoryState`;
- for MAG and MAL, also the window's keys and values (:class:`HybridState`).

Streaming is therefore exact at any split.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hope.config import ModelConfig
from hope.layers.attention import CausalSelfAttention, KVCache
from hope.layers.mlp import SwiGLU
from hope.layers.neural_memory import NeuralMemory, NeuralMemoryState
from hope.layers.norm import RMSNorm

__all__ = ["HybridState", "LMMBlock", "MAGBlock", "MALBlock", "GatedOutput", "TitansBlock", "build_memory"]


def build_memory(config: ModelConfig) -> NeuralMemory:
    """The Titans long-term memory with the config's depth, chunking, convolution and ablation switches."""
    return NeuralMemory(
        config.n_embd,
        config.n_head,
        config.resolved_head_dim,
        depth=config.memory_depth,
        expansion=config.memory_expansion,
        chunk_size=config.memory_chunk_size,
        conv_kernel=config.memory_conv_kernel,
        use_conv=config.memory_conv,
        use_momentum=config.memory_momentum,
        use_weight_decay=config.memory_weight_decay,
        linear_memory=config.memory_linear,
        max_lr=config.memory_max_lr,
        ema_momentum=config.memory_ema_momentum,
        max_grad_norm=config.memory_max_grad_norm,
        alpha_init=config.memory_alpha_init,
        compile=config.memory_compile,
        recompute=config.memory_recompute,
        kernel=config.memory_kernel,
    )


class GatedOutput(nn.Module):
    """o = W_O (RMSNorm(y) * sigmoid(RMSNorm(m))): the attention branch y gated by the memory branch m."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.memory_norm = RMSNorm(dim, eps)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, y_BTC: torch.Tensor, m_BTC: torch.Tensor) -> torch.Tensor:
        """o [B, T, C] from the attention branch y and the memory branch m."""
        return self.proj(self.attn_norm(y_BTC) * torch.sigmoid(self.memory_norm(m_BTC)))


class TitansBlock(nn.Module):
    """What every Titans block has: the memory, the persistent tokens, and the closing SwiGLU sub-layer."""

    carries_state = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.memory = build_memory(config)
        n_p = config.n_persistent
        self.persistent = nn.Parameter(torch.empty(n_p, config.n_embd)) if n_p else None
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config.n_embd, config.resolved_intermediate_size)

    def reset_memory_parameters(self) -> None:
        """Memory init and gate biases (NeuralMemory's own), persistent tokens ~ N(0, 1) like normalised inputs.

        HopeLM.reset_parameters calls this after its generic init, which would zero the gate biases.
        """
        self.memory.reset_memory_parameters()
        if self.persistent is not None:
            nn.init.normal_(self.persistent)

    def remember(self, x_BTC: torch.Tensor, state: NeuralMemoryState | None):
        """The LMM over x, x~ = [P | x] on the first call of a stream (state None): P is read and written first."""
        if state is not None or self.persistent is None:
            return self.memory(x_BTC, state)
        n_p = self.persistent.shape[0]
        prefixed = torch.cat([self.persistent.expand(x_BTC.shape[0], -1, -1), x_BTC], dim=1)
        y, state = self.memory(prefixed)
        return y[:, n_p:], state

    def feed_forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        """The closing sub-layer x + SwiGLU(RMSNorm(x))."""
        return x_BTC + self.mlp(self.mlp_norm(x_BTC))


class HybridState(NamedTuple):
    """State of a MAG or MAL block."""

    memory: NeuralMemoryState
    attention: KVCache


class LMMBlock(TitansBlock):
    """Titans LMM (§4.4): x + M(norm(x)), then the SwiGLU sub-layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.memory_norm = RMSNorm(config.n_embd, config.norm_eps)

    def forward(self, x: torch.Tensor, state: NeuralMemoryState | None = None):
        """The block's output and the memory's new state (None starts a stream)."""
        m, state = self.remember(self.memory_norm(x), state)
        return self.feed_forward(x + m), state


class MAGBlock(TitansBlock):
    """Titans MAG (§4.2): sliding-window attention and memory in parallel, the memory gating the attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.mixer_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config, output_proj=False)
        self.out = GatedOutput(config.n_embd, config.norm_eps)

    def forward(self, x: torch.Tensor, state: HybridState | None = None):
        """The block's output and the new memory state and KV cache (None starts a stream)."""
        memory_state, window_state = (None, None) if state is None else state
        h = self.mixer_norm(x)
        y, window_state = self.attn(h, window_state, self.persistent)  # Eqs. 26-27: SW-Attn*([P | x])
        m, memory_state = self.remember(h, memory_state)  # M(x~) of Eq. 28
        x = x + self.out(y, m)  # Eq. 28: o = y (x) M(x~), normalised and gated
        return self.feed_forward(x), HybridState(memory_state, window_state)


class MALBlock(TitansBlock):
    """Titans MAL (§4.3): a memory sub-layer, then a sliding-window attention sub-layer, then SwiGLU."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.memory_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config, output_proj=False)
        self.proj = nn.Linear(config.n_head * config.resolved_head_dim, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, state: HybridState | None = None):
        """The block's output and the new memory state and KV cache (None starts a stream)."""
        memory_state, window_state = (None, None) if state is None else state
        m, memory_state = self.remember(self.memory_norm(x), memory_state)  # Eq. 30: y = M(x~)
        x = x + m
        y, window_state = self.attn(self.attn_norm(x), window_state, self.persistent)  # Eq. 31, with P
        x = x + self.proj(y)
        return self.feed_forward(x), HybridState(memory_state, window_state)
