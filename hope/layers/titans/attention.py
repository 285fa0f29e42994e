"""Attention of the Titans hybrids: RoPE at explicit positions, a position-free persistent prefix, any mask.

Titans prepends N_p learnable persistent tokens P to the attention's input (§3.3, Eqs. 19-20). Their keys and
values are P W_K and P W_V; every query may attend to them, whatever its position.

**Positions.** Sequence tokens are rotated by RoPE at positions the caller gives:
- absolute stream positions for the sliding windows of MAG/MAL;
- segment-local positions for MAC.

The persistent tokens carry **no position**. A query scores them with its *un-rotated* vector, q_t . p_j: each
persistent token sits at relative distance 0 from every query. Two reasons:
- Their contribution is the same at every position, which suits input-independent task knowledge.
- It stays reachable however long a stream runs. Giving P the positions 0..N_p-1 of a prefix, as a literal
  reading of Eq. 19 would, moves it further from each new token and out of the trained range in long streams.

One fused attention call computes both kinds of score by widening the head dim: q' = [R(t) q | q],
k'_seq = [R(s) k | 0], k'_P = [0 | k_P], with the softmax scale of the original head dim.

RoPE angles are computed in float64 from the integer positions on every call. A stream position therefore costs
no table and loses no precision however far a stream goes, and a token is rotated identically whether it comes
in one call or in many, which keeps streaming exact.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hope.config import ModelConfig
from hope.layers.rope import rope_at

__all__ = ["TitansAttention", "WindowState"]


def masked_attention(q, k, v, allowed_TS: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    """softmax(q k^T * scale, masked to allowed [T, S]) v; ``naive`` is the explicit reference of SDPA."""
    if backend != "naive":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_TS, scale=scale)
    scores = (q @ k.mT) * scale
    scores = scores.masked_fill(~allowed_TS, float("-inf"))
    probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
    return probs.type_as(v) @ v


class WindowState(NamedTuple):
    """Streaming state of a sliding-window attention: the last window - 1 keys and values, and the position."""

    keys: torch.Tensor
    """rotated keys [B, H, <= window-1, D] of the latest tokens"""
    values: torch.Tensor
    """their values [B, H, <= window-1, D]"""
    position: int
    """stream position of the next token"""


class TitansAttention(nn.Module):
    """q, k, v projections and masked attention; returns merged heads [B, T, H*D] (no output projection:
    MAC and MAG gate before projecting, MAL projects in its block)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.resolved_head_dim
        self.window, self.backend, self.rope_base = config.sliding_window, config.attn_backend, config.rope_base
        self.qkv = nn.Linear(config.n_embd, 3 * self.n_head * self.head_dim, bias=False)

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
        return rope_at(x_BHTD, positions_T, self.rope_base)

    def attend(self, q, q_pos, k_rot, v, k_pos, persistent: torch.Tensor | None) -> torch.Tensor:
        """Each query [B, H, T, D] (un-rotated, at positions q_pos [T]) attends to the rotated keys k_rot [B, H, S, D]
        at k_pos [S] with k_pos <= q_pos (and within the sliding window, if any) and to every persistent token
        [N_p, C]. Returns merged heads [B, T, H*D]."""
        delta_TS = q_pos[:, None] - k_pos[None, :]
        allowed_TS = delta_TS >= 0
        if self.window is not None:
            allowed_TS &= delta_TS < self.window
        q_rot = self.rotate(q, q_pos)
        if persistent is not None:  # widen the head dim so that persistent keys meet the un-rotated query
            B, T, N_p = q.shape[0], q.shape[2], persistent.shape[0]
            pk, pv = (t.expand(B, -1, -1, -1) for t in self.project_kv(persistent[None]))
            q_rot = torch.cat([q_rot, q], dim=-1)
            prefix_k = torch.cat([torch.zeros_like(pk), pk], dim=-1)  # [0 | k_P]
            k_rot = torch.cat([prefix_k, torch.cat([k_rot, torch.zeros_like(k_rot)], dim=-1)], dim=2)  # [R k | 0]
            v = torch.cat([pv, v], dim=2)
            allowed_TS = torch.cat([allowed_TS.new_ones(T, N_p), allowed_TS], dim=-1)
        y = masked_attention(q_rot, k_rot, v, allowed_TS, self.head_dim**-0.5, self.backend)
        return y.transpose(1, 2).flatten(2)  # [B, H, T, D] -> [B, T, H*D]

    # ---- sliding window (MAG, MAL) ---------------------------------------------------------------------------

    def init_window(self, x_BTC: torch.Tensor) -> WindowState:
        empty = x_BTC.new_zeros(x_BTC.shape[0], self.n_head, 0, self.head_dim)
        return WindowState(empty, empty, 0)

    def sliding(self, x_BTC: torch.Tensor, state: WindowState | None, persistent: torch.Tensor | None):
        """Sliding-window attention with the persistent prefix (Titans' SW-Attn*), continuing the stream in state.

        Keys are rotated once, at their absolute stream position, and kept for window - 1 tokens.
        """
        state = self.init_window(x_BTC) if state is None else state
        q, k, v = self.project(x_BTC)
        T, n_cached = q.shape[2], state.keys.shape[2]
        q_pos = torch.arange(state.position, state.position + T, device=x_BTC.device)
        keys = torch.cat([state.keys, self.rotate(k, q_pos)], dim=2)
        values = torch.cat([state.values, v], dim=2)
        k_pos = torch.arange(state.position - n_cached, state.position + T, device=x_BTC.device)
        y = self.attend(q, q_pos, keys, values, k_pos, persistent)
        first_kept = keys.shape[2] - min(self.window - 1, keys.shape[2])
        return y, WindowState(keys[:, :, first_kept:], values[:, :, first_kept:], state.position + T)
