"""Multi-head causal softmax attention with RoPE: the one attention module of every family.

``CausalSelfAttention`` serves Transformer++ (``hope.model.TransformerBlock``), Hope-Attention
(``hope.layers.hope_block``) and the Titans hybrids (``hope.layers.titans``). Its options:

- **sliding window** (``sliding_window``): each token attends to itself and the previous window - 1 tokens;
- **persistent prefix** (Titans): learnable tokens every query may attend to, passed to ``forward`` by the block
  that owns them (see below);
- **output projection** ``proj`` (Transformer++, Hope-Attention), or none (Titans: MAC and MAG gate the merged heads
  before projecting, MAL projects in its block);
- **KV cache** (:class:`KVCache`): ``forward(x, cache)`` continues a stream. Keys are rotated once, at their
  absolute stream position, and kept (with a window, only the last window - 1: all a later token can see);
- **lower-level steps** for MAC (``hope.layers.titans.mac``), which attends over memory tokens at segment-local
  positions: ``project``, ``project_kv``, ``rotate`` and ``attend``.

**Persistent tokens.** Titans prepends N_p learnable persistent tokens P to the attention's input (§3.3,
Eqs. 19-20). Their keys and values are P W_K and P W_V; every query may attend to them, whatever its position.

**Positions.** Sequence tokens are rotated by RoPE (``hope.layers.rope``) at positions the caller gives:
- absolute stream positions in ``forward`` (Transformer++, Hope-Attention, the sliding windows of MAG/MAL);
- segment-local positions for MAC.

The persistent tokens carry **no position**. A query scores them with its *un-rotated* vector, q_t . p_j: each
persistent token sits at relative distance 0 from every query. Two reasons:
- Their contribution is the same at every position, which suits input-independent task knowledge.
- It stays reachable however long a stream runs. Giving P the positions 0..N_p-1 of a prefix, as a literal
  reading of Eq. 19 would, moves it further from each new token and out of the trained range in long streams.

One fused attention call computes both kinds of score by widening the head dim: q' = [R(t) q | q],
k'_seq = [R(s) k | 0], k'_P = [0 | k_P], with the softmax scale of the original head dim.

RoPE angles are computed in float64 from the integer positions on every call, so a token is rotated identically
whether it comes in one call or in many, which keeps streaming exact.

**Kernels.** A call with no cache and no persistent prefix (training, the first call of a stream) runs the fused
causal kernel (``hope.ops.attention.causal_attention``: flash-attn, SDPA's causal mode, or for a window shorter
than the call the O(T W) blocked SDPA ``sliding_window_attention``). A cache-less call with the prefix and such a
window (MAG and MAL training) runs ``sliding_window_attention`` with the prefix. Every other call runs
``masked_attention`` with an explicit mask built from the query and key positions (and so does backend ``naive``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hope.config import ModelConfig
from hope.layers.rope import rope_at
from hope.ops.attention import causal_attention, causal_mask, masked_attention, sliding_window_attention

__all__ = ["CausalSelfAttention", "KVCache"]


class KVCache(NamedTuple):
    """Streaming state of an attention: rotated keys and values of the latest tokens, and the stream position."""

    keys: torch.Tensor
    """rotated keys [B, H, S, D] of the tokens so far (the last sliding_window - 1 only, if a window is set)"""
    values: torch.Tensor
    """their values [B, H, S, D]"""
    position: int
    """stream position of the next token"""

    def detach(self) -> KVCache:
        """Cut from the autograd graph (truncated backpropagation through time)."""
        return KVCache(self.keys.detach(), self.values.detach(), self.position)


class CausalSelfAttention(nn.Module):
    """q, k, v projections (``qkv``), RoPE, causal attention and an optional output projection (``proj``).

    Args:
        config: heads, head dim, sliding window, backend and RoPE base.
        output_proj: whether to project the merged heads back to n_embd (False for the Titans blocks).
    """

    def __init__(self, config: ModelConfig, output_proj: bool = True) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.resolved_head_dim
        self.window, self.backend, self.rope_base = config.sliding_window, config.attn_backend, config.rope_base
        inner = self.n_head * self.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, config.n_embd, bias=False) if output_proj else None

    def forward(
        self, x_BTC: torch.Tensor, cache: KVCache | None = None, persistent_NC: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Attention of x [B, T, C] over the stream so far (``cache``; None starts one) and the persistent prefix
        [N_p, C] if given. Returns [B, T, C] (the merged heads [B, T, H*D] without ``proj``) and the new cache."""
        start, T = (0 if cache is None else cache.position), x_BTC.shape[1]
        positions_T = torch.arange(start, start + T, device=x_BTC.device)
        q_BHTD, k_BHTD, v_BHTD = self.project(x_BTC)
        k_BHTD = self.rotate(k_BHTD, positions_T)  # once, at its stream position; the cache keeps it rotated
        keys_BHSD, values_BHSD = k_BHTD, v_BHTD
        if cache is None and persistent_NC is None:  # training, or a stream's first call: the fused causal kernel
            q_BHTD = self.rotate(q_BHTD, positions_T)
            y_BTI = _merge_heads(causal_attention(q_BHTD, k_BHTD, v_BHTD, self.window, self.backend))
        elif cache is None and self._windowed(T):  # the same with the prefix (MAG, MAL training): O(T W)
            y_BTI = self.attend_window(q_BHTD, k_BHTD, v_BHTD, positions_T, persistent_NC)
        else:  # earlier keys and/or the position-free prefix: an explicit mask over the key positions
            cache = self._empty_cache(x_BTC) if cache is None else cache
            keys_BHSD = torch.cat([cache.keys, k_BHTD], dim=2)
            values_BHSD = torch.cat([cache.values, v_BHTD], dim=2)
            key_positions_S = torch.arange(start - cache.keys.shape[2], start + T, device=x_BTC.device)
            y_BTI = self.attend(q_BHTD, positions_T, keys_BHSD, values_BHSD, key_positions_S, persistent_NC)
        return (y_BTI if self.proj is None else self.proj(y_BTI)), self._keep(keys_BHSD, values_BHSD, start + T)

    def _empty_cache(self, x_BTC: torch.Tensor) -> KVCache:
        empty_BHSD = x_BTC.new_zeros(x_BTC.shape[0], self.n_head, 0, self.head_dim)
        return KVCache(empty_BHSD, empty_BHSD, 0)

    def _keep(self, keys_BHSD: torch.Tensor, values_BHSD: torch.Tensor, position: int) -> KVCache:
        """The cache after this call: every key, or with a window the last window - 1 (all a later token sees)."""
        n_keys = keys_BHSD.shape[2]
        first_kept = 0 if self.window is None else n_keys - min(self.window - 1, n_keys)
        return KVCache(keys_BHSD[:, :, first_kept:], values_BHSD[:, :, first_kept:], position)

    def _heads(self, h_BTC: torch.Tensor) -> torch.Tensor:
        B, T, _ = h_BTC.shape
        return h_BTC.view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, T, n*H*D] -> [B, n*H, T, D]

    def project(self, x_BTC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Un-rotated q, k, v [B, H, T, D]."""
        return self._heads(self.qkv(x_BTC)).chunk(3, dim=1)

    def project_kv(self, x_BTC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-rotated k, v [B, H, T, D] (for tokens that are only attended to: persistent and memory tokens)."""
        inner = self.n_head * self.head_dim
        return self._heads(F.linear(x_BTC, self.qkv.weight[inner:])).chunk(2, dim=1)

    def rotate(self, x_BHTD: torch.Tensor, positions_T: torch.Tensor) -> torch.Tensor:
        """RoPE of x [B, H, T, D] at the integer positions [T]."""
        return rope_at(x_BHTD, positions_T, self.rope_base)

    def attend(self, q_BHTD, q_positions_T, k_rot_BHSD, v_BHSD, k_positions_S, persistent_NC) -> torch.Tensor:
        """Each query [B, H, T, D] (un-rotated, at positions q_positions [T]) attends to the rotated keys [B, H, S, D]
        at k_positions [S] <= its own (and within the sliding window, if any) and to every persistent token [N_p, C]
        (None: none). Returns merged heads [B, T, H*D]."""
        allowed_TS = causal_mask(q_positions_T, k_positions_S, self.window)
        q_BHTD, k_rot_BHSD, prefix = self._widen(q_BHTD, q_positions_T, k_rot_BHSD, persistent_NC)
        if prefix is not None:
            k_rot_BHSD = torch.cat([prefix[0], k_rot_BHSD], dim=2)  # [B, H, N_p + S, 2D]
            v_BHSD = torch.cat([prefix[1], v_BHSD], dim=2)
            allowed_TS = torch.cat([allowed_TS.new_ones(allowed_TS.shape[0], prefix[0].shape[2]), allowed_TS], dim=-1)
        y_BHTD = masked_attention(q_BHTD, k_rot_BHSD, v_BHSD, allowed_TS, self.head_dim**-0.5, self.backend)
        return _merge_heads(y_BHTD)

    def attend_window(self, q_BHTD, k_rot_BHTD, v_BHTD, positions_T, persistent_NC) -> torch.Tensor:
        """``attend`` for queries and keys at the same positions with a window shorter than them: each block of
        ``window`` queries scores only the keys its window reaches (``sliding_window_attention``, O(T W))."""
        q_BHTD, k_rot_BHTD, prefix = self._widen(q_BHTD, positions_T, k_rot_BHTD, persistent_NC)
        prefix_k, prefix_v = (None, None) if prefix is None else prefix
        y_BHTD = sliding_window_attention(
            q_BHTD, k_rot_BHTD, v_BHTD, self.window, prefix_k, prefix_v, self.head_dim**-0.5
        )
        return _merge_heads(y_BHTD)

    def _windowed(self, T: int) -> bool:
        """Whether T cache-less queries take ``attend_window``: a window that cuts into them, on a fused backend."""
        return self.window is not None and self.window < T and self.backend != "naive"

    def _widen(self, q_BHTD, q_positions_T, k_rot_BHSD, persistent_NC):
        """Rotated queries and keys, widened so that persistent keys meet the un-rotated query: q' = [R q | q],
        k'_seq = [R k | 0], k'_P = [0 | k_P]. Returns (q', k'_seq, (k'_P, v_P) [B, H, N_p, .] or None)."""
        q_rot_BHTD = self.rotate(q_BHTD, q_positions_T)
        if persistent_NC is None:
            return q_rot_BHTD, k_rot_BHSD, None
        pk_BHND, pv_BHND = (t.expand(q_BHTD.shape[0], -1, -1, -1) for t in self.project_kv(persistent_NC[None]))
        q_rot_BHTD = torch.cat([q_rot_BHTD, q_BHTD], dim=-1)  # [R q | q]
        prefix_k = torch.cat([torch.zeros_like(pk_BHND), pk_BHND], dim=-1)  # [0 | k_P]
        seq_k = torch.cat([k_rot_BHSD, torch.zeros_like(k_rot_BHSD)], dim=-1)  # [R k | 0]
        return q_rot_BHTD, seq_k, (prefix_k, pv_BHND)


def _merge_heads(y_BHTD: torch.Tensor) -> torch.Tensor:
    return y_BHTD.transpose(1, 2).flatten(2)  # [B, H, T, D] -> [B, T, I = H*D]
