"""HOPE blocks (Nested Learning §3, Fig. 3; arXiv §8.3, Eqs. 94-97): a token mixer, then the Continuum Memory System.

- ``hope``: o = x + SMT(RMSNorm(x)), y = CMS(o). SMT is the self-modifying Titans (``hope.layers.self_modifying``),
  whose memories learn in context every chunk; CMS is ``hope.layers.cms.ContinuumMemory``.
- ``hope-attention``: the same block with the SMT replaced by global causal softmax attention (the Transformer++
  attention of ``hope.layers.attention``, with a KV cache for streaming).

The CMS already has a pre-norm and a residual per level (h <- h + SwiGLU_l(RMSNorm_l(h))), so it is not wrapped in
another residual: with one level it *is* the Transformer++ MLP sub-layer, which is what ad-hoc level stacking
(``hope.stack``) relies on.

State: ``HopeState(mixer, cms)``. ``forward`` reads the CMS fast weights in ``state.cms`` but never changes them;
learning them in context needs the model's loss and is driven by ``hope.ttl.TestTimeLearner``, which calls
``mix`` and ``cms`` separately.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from hope.config import ModelConfig
from hope.layers.attention import CausalSelfAttention
from hope.layers.cms import CMSState, ContinuumMemory
from hope.layers.norm import RMSNorm
from hope.layers.rope import apply_rope
from hope.layers.self_modifying import SelfModifyingTitans
from hope.layers.titans.attention import masked_attention
from hope.ops.attention import causal_attention

__all__ = ["HopeBlock", "HopeAttentionBlock", "HopeState", "KVCache", "build_cms"]


def _detach(x: Any) -> Any:
    if x is None or isinstance(x, int | float):
        return x
    if isinstance(x, torch.Tensor):
        return x.detach()
    if hasattr(x, "detach"):
        return x.detach()
    return type(x)(*(_detach(v) for v in x)) if hasattr(x, "_fields") else type(x)(_detach(v) for v in x)


class KVCache(NamedTuple):
    """Streaming state of the Hope-Attention mixer: rotated keys and values of the tokens so far."""

    keys: torch.Tensor
    """rotated keys [B, H, S, D] (the last sliding_window - 1 only, if a window is set)"""
    values: torch.Tensor
    """values [B, H, S, D]"""
    position: int
    """stream position of the next token"""

    def detach(self) -> KVCache:
        return KVCache(self.keys.detach(), self.values.detach(), self.position)


class HopeState(NamedTuple):
    """State of a HOPE block: the mixer's (SelfModifyingState or KVCache) and the CMS's (CMSState)."""

    mixer: Any
    cms: CMSState | None

    def detach(self) -> HopeState:
        """Cut from the autograd graph (truncated backpropagation through time)."""
        return HopeState(_detach(self.mixer), _detach(self.cms))


def build_cms(config: ModelConfig) -> ContinuumMemory:
    return ContinuumMemory(
        config.n_embd,
        config.resolved_cms_hidden,
        [level.tokens_per_update for level in config.cms_levels],
        inner_lr=config.cms_inner_lr,
        objective=config.cms_objective,
        norm=True,
        norm_eps=config.norm_eps,
    )


class _HopeBlockBase(nn.Module):
    """Shared forward: y = CMS(mix(x)) (Eqs. 94-97); subclasses define ``mix``."""

    cms: ContinuumMemory

    def mix(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: HopeState | None = None) -> tuple[torch.Tensor, HopeState]:
        mixer_state, cms_state = (None, None) if state is None else state
        o, mixer_state = self.mix(x, mixer_state)
        y, cms_state = self.cms(o, cms_state)  # reads the fast weights; learning is hope.ttl's job
        return y, HopeState(mixer_state, cms_state)


class HopeBlock(_HopeBlockBase):
    """o = x + SelfModifyingTitans(RMSNorm(x)); y = CMS(o)."""

    carries_state = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mixer = SelfModifyingTitans(
            config.n_embd,
            config.n_head,
            expansion=config.hope_expansion,
            chunk_size=config.hope_chunk_size,
            memory_chunk_size=config.hope_memory_chunk_size,
            conv_kernel=config.memory_conv_kernel,
            use_conv=config.memory_conv,
            adaptive_q=config.hope_adaptive_q,
            max_lr=config.memory_max_lr,
            max_grad_norm=config.memory_max_grad_norm,
            compile=config.memory_compile,
        )
        self.cms = build_cms(config)

    def reset_memory_parameters(self) -> None:
        """Called by HopeLM.reset_parameters after its generic init: the memories' own initial states and gates."""
        self.mixer.reset_memory_parameters()

    def mix(self, x, state):
        h, state = self.mixer(self.mixer_norm(x), state)
        return x + h, state


class HopeAttentionBlock(_HopeBlockBase):
    """o = x + Attention(RMSNorm(x)); y = CMS(o). Parameter names match TransformerBlock's attention
    (``attn_norm``, ``attn.qkv``, ``attn.proj``) so a Transformer++ checkpoint maps onto it (``hope.stack``).

    ``carries_state`` is False: the KV cache grows with the stream and RoPE tables end at max_seq_len, so
    ``hope.generate`` recomputes windows for it as for Transformer++. Explicit streaming works up to max_seq_len."""

    carries_state = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.cms = build_cms(config)
        self.max_seq_len = config.max_seq_len

    def mix(self, x, cache: KVCache | None):
        a = self.attn
        B, T, _ = x.shape
        pos = 0 if cache is None else cache.position
        if pos + T > self.max_seq_len:
            raise ValueError(
                f"hope-attention stream position {pos + T} exceeds model.max_seq_len={self.max_seq_len} (full KV "
                "cache, RoPE tables); start a new state or raise max_seq_len."
            )
        q, k, v = a.qkv(self.attn_norm(x)).view(B, T, 3, a.n_head, a.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = a.rope.tables(pos + T, x.device)
        q, k = apply_rope(q, cos[pos:], sin[pos:]), apply_rope(k, cos[pos:], sin[pos:])
        if cache is None:  # start of a stream: the Transformer++ kernel, bit-identical to CausalSelfAttention
            y = causal_attention(q, k, v, a.window, a.backend)
            keys, values = k, v
        else:
            keys, values = torch.cat([cache.keys, k], dim=2), torch.cat([cache.values, v], dim=2)
            q_pos = torch.arange(pos, pos + T, device=x.device)
            k_pos = torch.arange(pos + T - keys.shape[2], pos + T, device=x.device)
            delta = q_pos[:, None] - k_pos[None, :]
            allowed = (delta >= 0) & (delta < a.window if a.window is not None else True)
            backend = "naive" if a.backend == "naive" else "sdpa"
            y = masked_attention(q, keys, values, allowed, a.head_dim**-0.5, backend)
        if a.window is not None:
            keep = min(a.window - 1, keys.shape[2])
            keys, values = keys[:, :, keys.shape[2] - keep :], values[:, :, values.shape[2] - keep :]
        out = a.proj(y.transpose(1, 2).reshape(B, T, -1))
        return x + out, KVCache(keys, values, pos + T)
