"""Sliding-window attention in O(T W): queries in blocks, each block against the keys its window can reach.

Query t attends the keys s with t - window < s <= t (``causal_mask(..., window)``) and, optionally, every key of a
prefix that all queries see (the Titans persistent tokens). A masked full SDPA costs O(T^2) for that; here the
queries are cut into blocks of L tokens, and block b = [bL, bL + L) attends only the W - 1 + L keys
[bL - W + 1, bL + L) it can reach, plus the prefix, under the exact mask. Cost O(T (W + L + N)); L defaults to
min(W, 128): on 2 CPU cores (T 2048, W 512) L = 128 was 2.6x faster than the masked full SDPA, L = W 1.7x
(``bench/attention.py``).

One SDPA call does all blocks: the blocks go on the batch axis, [B, H, T, D] -> [n B, H, L, D], so that the block
mask [n, 1, L, S] is shared by the heads (on CPU, SDPA is ~3x slower when a mask varies along its head axis), and
each block's keys are a strided window of the left-padded keys (``unfold``). The left padding (keys before
position 0) and the right padding (queries and keys after T, when L does not divide T) are masked: no real query
can see them, and the padded queries' outputs are dropped.

This is the SDPA path for windows that cut into the sequence; flash-attn's ``window_size`` does the same in its
kernel where it applies (no prefix, CUDA, half precision). ``naive.py`` beside this file is the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sliding_window_attention"]


def _block_mask(n_blocks: int, block: int, window: int, n_prefix: int, device: torch.device) -> torch.Tensor:
    """[n, L, N + W - 1 + L]: query i of block b may see key j of its span iff 0 <= delta < W and the key exists."""
    span = window - 1 + block
    i, j = torch.arange(block, device=device), torch.arange(span, device=device)
    delta_LS = i[:, None] + window - 1 - j[None, :]  # query position minus key position
    in_window_LS = (delta_LS >= 0) & (delta_LS < window)
    key_pos_nS = torch.arange(n_blocks, device=device)[:, None] * block - (window - 1) + j[None, :]
    allowed_nLS = in_window_LS[None] & (key_pos_nS >= 0)[:, None, :]  # no key before the sequence starts
    prefix_nLN = allowed_nLS.new_ones(n_blocks, block, n_prefix)
    return torch.cat([prefix_nLN, allowed_nLS], dim=-1)


def _windows(x_BHTD: torch.Tensor, n_blocks: int, block: int, window: int) -> torch.Tensor:
    """The keys (or values) each block reaches: [B, H, T, D] -> [B, H, n, W - 1 + L, D]."""
    T_pad = n_blocks * block
    padded = F.pad(x_BHTD, (0, 0, window - 1, T_pad - x_BHTD.shape[2]))  # [B, H, W - 1 + T_pad, D]
    return padded.unfold(2, window - 1 + block, block).transpose(-1, -2)  # [B, H, n, D, span] -> [.., span, D]


def sliding_window_attention(
    q_BHTD: torch.Tensor,
    k_BHTD: torch.Tensor,
    v_BHTD: torch.Tensor,
    window: int,
    prefix_k_BHND: torch.Tensor | None = None,
    prefix_v_BHND: torch.Tensor | None = None,
    scale: float | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Each query t attends the keys s in (t - window, t] and every prefix key; returns [B, H, T, Dv].

    q, k [B, H, T, D] and v [B, H, T, Dv] at the same positions 0..T-1; the prefix keys/values [B, H, N, D(v)] are
    position-free (None: no prefix); ``scale`` defaults to 1 / sqrt(D); ``block`` (queries per block) to
    min(window, 128).
    """
    B, H, T, D = q_BHTD.shape
    L = min(window, 128) if block is None else block
    n = -(-T // L)  # ceil
    blocks_first = lambda t: t.movedim(2, 0).flatten(0, 1)  # noqa: E731  [B, H, n, X, D] -> [n B, H, X, D]
    q_blocks = blocks_first(F.pad(q_BHTD, (0, 0, 0, n * L - T)).unflatten(2, (n, L)))
    k_blocks, v_blocks = (_windows(t, n, L, window) for t in (k_BHTD, v_BHTD))  # [B, H, n, span, D]
    n_prefix = 0
    if prefix_k_BHND is not None:
        n_prefix = prefix_k_BHND.shape[2]
        k_blocks = torch.cat([prefix_k_BHND[:, :, None].expand(-1, -1, n, -1, -1), k_blocks], dim=3)
        v_blocks = torch.cat([prefix_v_BHND[:, :, None].expand(-1, -1, n, -1, -1), v_blocks], dim=3)
    allowed_nB1LS = _block_mask(n, L, window, n_prefix, q_BHTD.device).repeat_interleave(B, dim=0)[:, None]
    y = F.scaled_dot_product_attention(
        q_blocks, blocks_first(k_blocks), blocks_first(v_blocks), attn_mask=allowed_nB1LS, scale=scale
    )
    return y.unflatten(0, (n, B)).movedim(0, 2).flatten(2, 3)[:, :, :T]  # [n B, H, L, Dv] -> [B, H, T, Dv]
