"""HOPE blocks (Nested Learning §3, Fig. 3; arXiv §8.3, Eqs. 94-97): a token mixer, then the Continuum Memory System.

- ``hope``: o = x + SMT(RMSNorm(x)), y = CMS(o). SMT is the self-modifying Titans (``hope.layers.self_modifying``),
  whose memories learn in context every chunk; CMS is ``hope.layers.cms.ContinuumMemory``.
- ``hope-attention``: the same block with the SMT replaced by global causal softmax attention (the Transformer++
  attention of ``hope.layers.attention``, whose KV cache streams it).

The CMS already has a pre-norm and a residual per level (h <- h + SwiGLU_l(RMSNorm_l(h))), so it is not wrapped in
another residual: with one level it *is* the Transformer++ MLP sub-layer, which is what ad-hoc level stacking
(``hope.stack``) relies on.

State: ``HopeState(mixer, cms)``. ``forward`` reads the CMS fast weights in ``state.cms``; it changes them only
with ``cms_learn_in_context`` (a layer-local objective, in every forward). Learning them from the model's loss is
driven by ``hope.ttl.TestTimeLearner``, which runs the model's forward and records each ``cms``'s input and output
with forward hooks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from hope.config import ModelConfig
from hope.layers.attention import CausalSelfAttention, KVCache
from hope.layers.cms import CMSState, ContinuumMemory
from hope.layers.norm import RMSNorm
from hope.layers.self_modifying import SelfModifyingTitans

__all__ = ["HopeBlock", "HopeAttentionBlock", "HopeState", "build_cms"]


def _detach(x: Any) -> Any:
    if x is None or isinstance(x, int | float):
        return x
    if isinstance(x, torch.Tensor):
        return x.detach()
    if hasattr(x, "detach"):
        return x.detach()
    return type(x)(*(_detach(v) for v in x)) if hasattr(x, "_fields") else type(x)(_detach(v) for v in x)


class HopeState(NamedTuple):
    """State of a HOPE block: the mixer's (SelfModifyingState or KVCache) and the CMS's (CMSState)."""

    mixer: Any
    cms: CMSState | None

    def detach(self) -> HopeState:
        """Cut from the autograd graph (truncated backpropagation through time)."""
        return HopeState(_detach(self.mixer), _detach(self.cms))


def build_cms(config: ModelConfig) -> ContinuumMemory:
    """The CMS of a HOPE block: ``config.cms_levels``' widths and in-context periods (tokens), pre-norm levels."""
    return ContinuumMemory(
        config.n_embd,
        config.resolved_cms_hidden,
        [level.tokens_per_update for level in config.cms_levels],
        inner_lr=config.cms_inner_lr,
        objective=config.cms_objective,
        norm=True,
        norm_eps=config.norm_eps,
        learn_in_context=config.cms_learn_in_context,
        max_step=config.cms_max_step,
    )


class _HopeBlockBase(nn.Module):
    """Shared forward: y = CMS(mix(x)) (Eqs. 94-97); subclasses define ``mix``."""

    cms: ContinuumMemory

    def mix(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """o = x + mixer(RMSNorm(x)) and the mixer's new state."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: HopeState | None = None) -> tuple[torch.Tensor, HopeState]:
        """y = CMS(mix(x)) with the CMS fast weights of ``state`` (learned here only with cms_learn_in_context)."""
        mixer_state, cms_state = (None, None) if state is None else state
        o, mixer_state = self.mix(x, mixer_state)
        y, cms_state = self.cms(o, cms_state)  # learning from the loss is hope.ttl's job
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
            safe_step=config.hope_safe_step,
            compile=config.memory_compile,
            recompute=config.memory_recompute,
        )
        self.cms = build_cms(config)

    def reset_memory_parameters(self) -> None:
        """Called by HopeLM.reset_parameters after its generic init: the memories' own initial states and gates."""
        self.mixer.reset_memory_parameters()

    def mix(self, x, state):
        """o = x + SelfModifyingTitans(RMSNorm(x)), continuing the memories in ``state``."""
        h, state = self.mixer(self.mixer_norm(x), state)
        return x + h, state


class HopeAttentionBlock(_HopeBlockBase):
    """o = x + Attention(RMSNorm(x)); y = CMS(o). Parameter names match TransformerBlock's attention
    (``attn_norm``, ``attn.qkv``, ``attn.proj``) so a Transformer++ checkpoint maps onto it (``hope.stack``).

    ``carries_state`` is False: the KV cache grows with the stream and RoPE was trained up to max_seq_len, so
    ``hope.generate`` recomputes windows for it as for Transformer++. Explicit streaming works up to max_seq_len."""

    carries_state = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.cms = build_cms(config)
        self.max_seq_len = config.max_seq_len

    def mix(self, x: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """o = x + Attention(RMSNorm(x)), continuing the stream in the KV cache."""
        end = x.shape[1] + (0 if cache is None else cache.position)
        if end > self.max_seq_len:
            raise ValueError(
                f"hope-attention stream position {end} exceeds model.max_seq_len={self.max_seq_len} (full KV "
                "cache, RoPE past the trained length); start a new state or raise max_seq_len."
            )
        h, cache = self.attn(self.attn_norm(x), cache)
        return x + h, cache
