"""Titans neural long-term memory (LMM): the model and two literal references for its update.

Notation follows Titans (arXiv 2501.00663v1) §3.1-3.2; everything is per batch element b and head h, and every
tensor carries both as its leading dims [B, H, ...].

Memory M (the inner-loop state is its weights W_1..W_L, W_l: [B, H, d_in, d_out]):
    h_0 = x,  h_l = act(h_{l-1} W_l) for l < L,  M(x) = x + h_{L-1} W_L   (``residual=True``)
    M(x) = h_{L-1} W_L                                                    (``residual=False``)
  L = 1 with ``residual=False`` is the plain linear memory x W_1 (Titans App. C: with eta = 0 the LMM is then
  Gated DeltaNet up to the factor 2 of the squared loss). The residual form forgets towards the identity map
  instead of towards zero; it is the default because the deep memory of §5.5 is a residual MLP.
  act = SiLU (default, the activation Titans uses on q/k/v) or exact GELU. (``hope.ops.common.memory_mlp``)

Associative loss (Eq. 12), summed over the feature dim, not averaged:
    l(M; k_t, v_t) = ||M(k_t) - v_t||^2
Momentum and forgetting (Eqs. 13-14), with per-token, per-head gates theta, eta, alpha in (0, 1):
    S_t = eta_t S_{t-1} - theta_t grad l(M_{t'}; k_t, v_t)
    M_t = (1 - alpha_t) M_{t-1} + S_t
  where t' is the start of t's chunk (§3.2: all gradients of a chunk are taken at the weights the chunk starts
  with). Chunks are counted from the start of each call: [0, C), [C, 2C), ..., and the last one may be shorter.
  With C = 1 this is the exact per-token recurrence (t' = t - 1).
Inner gradient clipping (optional, ``max_grad_norm`` = tau): each token's gradient, all layers together, is
scaled by min(1, tau / ||grad l_t||) before it enters Eq. 13 (``hope.ops.common.clip_scale``). It bounds how far
one chunk can move the memory, whatever the curvature of the data (see hope.layers.neural_memory for why this is
needed).
Retrieval: y_t = M_{t'}(q_t), i.e. the weights at the start of t's chunk, before any write of that chunk.
  With C = 1 this is y_t = M_{t-1}(q_t): read, then write. Reading the chunk-start weights is what lets the
  chunk-parallel form (chunked.py) answer every query of a chunk with one batched forward pass and never build
  the per-token weights M_t inside a chunk; reading M_t would need those T weight matrices.

Streaming: the functions return the final (weights, momentum), so a stream can continue. Because chunks are
relative to the call, calling on a sequence equals calling on its two halves with the state carried whenever
the split is at a multiple of C. A split inside a chunk starts a new chunk at the split (exact per-token
semantics are kept only for C = 1); ``hope.layers.neural_memory`` buffers partial chunks so that it can be
streamed at any split.

This module is the reference: per-token gradients come from ``torch.autograd.grad(create_graph=True)`` so that
outer-loop gradients flow through the inner loop. ``chunked.py`` must match ``titans_memory`` here to float64
round-off, outputs, final state and gradients.
"""

import torch
from torch import Tensor

from hope.ops.common import Gates, MemoryRule, MemoryState, Weights, clip_grads, memory_mlp

__all__ = ["titans_memory", "titans_memory_recurrent"]


def _token_grads(weights: Weights, k: torch.Tensor, v: torch.Tensor, residual: bool, activation: str) -> Weights:
    """grad_W ||M(k) - v||^2 for one token per (b, h): k, v [B, H, 1, D] -> one [B, H, d_in, d_out] per layer.

    Summing the loss over b and h is harmless: each (b, h) slice of the weights sees only its own term.
    """
    outer = torch.is_grad_enabled()  # keep the graph of the gradient only when the caller wants outer gradients
    with torch.enable_grad():
        ws = tuple(W if W.requires_grad else W.detach().requires_grad_() for W in weights)
        loss = (memory_mlp(ws, k, residual, activation) - v).pow(2).sum()  # Eq. 12
        return torch.autograd.grad(loss, ws, create_graph=outer)


def _momentum_step(weights, momentum, grads, theta, eta, alpha):
    """One token of Eqs. 13-14; theta, eta, alpha: [B, H] -> broadcast over each weight matrix."""
    th, et, al = (g[..., None, None] for g in (theta, eta, alpha))
    momentum = tuple(et * S - th * G for S, G in zip(momentum, grads, strict=True))  # Eq. 13
    weights = tuple((1 - al) * W + S for W, S in zip(weights, momentum, strict=True))  # Eq. 14
    return weights, momentum


def titans_memory_recurrent(q: Tensor, k: Tensor, v: Tensor, gates: Gates, state: MemoryState, rule: MemoryRule):
    """Exact per-token recurrence: for each t, y_t = M_{t-1}(q_t), then S_t, M_t from grad l(M_{t-1}; k_t, v_t).

    Equals ``titans_memory`` with ``rule.chunk_size`` 1 (this function ignores it). Shapes as in
    :func:`titans_memory`.
    """
    (theta, eta, alpha), (weights, momentum) = gates, state
    residual, activation, max_grad_norm = rule.residual, rule.activation, rule.max_grad_norm
    ys = []
    for t in range(q.shape[2]):
        tok = slice(t, t + 1)
        ys.append(memory_mlp(weights, q[:, :, tok], residual, activation))  # read before the write
        grads = clip_grads(_token_grads(weights, k[:, :, tok], v[:, :, tok], residual, activation), max_grad_norm)
        weights, momentum = _momentum_step(weights, momentum, grads, theta[..., t], eta[..., t], alpha[..., t])
    return torch.cat(ys, dim=2), (weights, momentum)


def titans_memory(q: Tensor | None, k: Tensor, v: Tensor, gates: Gates, state: MemoryState, rule: MemoryRule):
    """Chunk-wise Titans memory, literally as in §3.2: per-token gradients at the chunk-start weights, then a
    per-token loop of the momentum/decay updates.

    q, k, v: [B, H, T, D] (q may be None: write only, y is None); gates = (theta, eta, alpha): [B, H, T] each;
    state = (weights, momentum): tuples of [B, H, d_in, d_out] (momentum is zero at the start of a stream); rule:
    chunk size, MLP form and clipping. Returns y: [B, H, T, D] (or None) and the final (weights, momentum).
    """
    (theta, eta, alpha), (weights, momentum) = gates, state
    chunk_size, residual, activation, max_grad_norm = rule
    ys = []
    for start in range(0, k.shape[2], chunk_size):
        chunk = range(start, min(start + chunk_size, k.shape[2]))
        W0 = weights  # every read and every gradient of this chunk uses the chunk-start weights
        if q is not None:
            ys.append(memory_mlp(W0, q[:, :, start : chunk.stop], residual, activation))
        grads = [
            clip_grads(_token_grads(W0, k[:, :, t : t + 1], v[:, :, t : t + 1], residual, activation), max_grad_norm)
            for t in chunk
        ]
        for t, G in zip(chunk, grads, strict=True):
            weights, momentum = _momentum_step(weights, momentum, G, theta[..., t], eta[..., t], alpha[..., t])
    y = torch.cat(ys, dim=2) if q is not None else None
    return y, (weights, momentum)
