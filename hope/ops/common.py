"""Helpers shared by the memory ops (naive references and chunk-parallel versions) and the memory layers.

Activations with their derivatives, the per-token gradient clip, the memory MLPs and the projection readout of the
self-modifying Titans. The math these implement is written out in ``hope.ops.titans.naive`` (Titans, arXiv
2501.00663v1 §3.1-3.2) and ``hope.ops.self_modifying.naive`` (Nested Learning, arXiv 2512.24695 §8). This module
imports only torch, so both a fast op and its naive twin can build on it without importing each other.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "PROJECTIONS",
    "K",
    "V",
    "ETA",
    "ALPHA",
    "Q",
    "Weights",
    "Gates",
    "MemoryState",
    "MemoryRule",
    "Memory",
    "clip_scale",
    "clip_grads",
    "safe_step_scale",
    "level_step",
    "memory_mlp",
    "residual_mlp",
    "read_projections",
    "project",
    "self_modifying_titans",
]

Weights = tuple[torch.Tensor, ...]  # Titans memory MLP weights W_1..W_L, each [B, H, d_in, d_out]
Gates = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # Titans theta, eta, alpha [B, H, T] in (0, 1) (Eqs. 13-14)
MemoryState = tuple[Weights, Weights]  # Titans (weights, momentum): the memory M and its surprise S


class MemoryRule(NamedTuple):
    """The static settings of the Titans memory's inner loop (Titans §3.1-3.2), the same for every op."""

    chunk_size: int = 1
    """tokens per chunk; every gradient of a chunk is taken at its start weights (1: the exact recurrence)"""
    residual: bool = True
    """M(x) = x + MLP(x) (True) or MLP(x)"""
    activation: str = "silu"
    """hidden activation of the memory MLP: ``silu`` or ``gelu``"""
    max_grad_norm: float | None = None
    """clip each token's inner gradient (all layers together) to this norm; None: no clipping"""


Memory = tuple[torch.Tensor, torch.Tensor]  # (W1, W2) of a self-modifying residual MLP (Eq. 91)

PROJECTIONS = ("k", "v", "eta", "alpha", "q")  # order on the memory axis N; q only when it is adaptive
K, V, ETA, ALPHA, Q = range(5)


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))  # d/dz [z sigmoid(z)]


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    # d/dz [z Phi(z)] = Phi(z) + z phi(z)
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


# name -> (act, act'); the chunked ops need the derivative for their hand-written backward
ACTIVATIONS = {"silu": (F.silu, _silu_grad), "gelu": (F.gelu, _gelu_grad)}


def clip_scale(sq_norm: torch.Tensor, max_norm: float | None) -> torch.Tensor | None:
    """min(1, max_norm / sqrt(sq_norm)), elementwise; None when there is no clipping.

    Written as max_norm / sqrt(max(sq_norm, max_norm^2)) so that no sqrt is ever taken of zero: its gradient
    would be 0 * inf = NaN even where the clamp has cut it.
    """
    if max_norm is None:
        return None
    return max_norm / sq_norm.clamp_min(max_norm**2).sqrt()


def clip_grads(grads: Weights, max_norm: float | None) -> Weights:
    """One token's per-layer gradients [.., d_in, d_out], scaled together to a norm of at most max_norm."""
    scale = clip_scale(sum(G.pow(2).sum((-2, -1)) for G in grads), max_norm)
    return grads if scale is None else tuple(G * scale[..., None, None] for G in grads)


def safe_step_scale(grad_sq: torch.Tensor, jvp_sq: torch.Tensor, eta: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """min(1, tau / (C eta)), elementwise, with tau = |g|^2 / (2 |J g|^2) (NL §8.2's chunked DGD, our safeguard).

    g is a token's inner gradient of ||M(k) - vhat||^2 (any positive multiple of it: the ratio is scale-free) and
    J g the change of M(k) along it; tau is the step along -g that lands on the minimum of the token's Gauss-Newton
    quadratic, so a chunk of C tokens whose steps eta <= tau / C all add up cannot overshoot even when all C are the
    same token. For a linear memory with unit keys tau = 1/2 and this is ``max_lr = 1/(2C)``; for an MLP memory
    tau shrinks as the weights grow. Written as |g|^2 / max(|g|^2, 2 C eta |J g|^2): exactly 1 where inactive.
    """
    bound = (2 * chunk_size) * eta * jvp_sq
    return grad_sq / torch.maximum(grad_sq, bound).clamp_min(torch.finfo(grad_sq.dtype).tiny)


def level_step(grad_sum: Weights, lr: float, stored: Weights, max_step: float | None = None) -> Weights:
    """A CMS level's in-context step (NL Eq. 31): -lr times the period's summed gradient, per matrix.

    With ``max_step`` (our safeguard, ``ModelConfig.cms_max_step``) each stream's step of each matrix is scaled to a
    Frobenius norm of at most ``max_step`` times the stored matrix's: the sum of a period's gradients has no bound
    of its own, and one overshooting step is read by every later token, so it compounds along the stream.
    """
    steps = tuple(-lr * g for g in grad_sum)
    if max_step is None:
        return steps
    scales = (clip_scale(S.pow(2).sum((-2, -1)), max_step * W.norm()) for S, W in zip(steps, stored, strict=True))
    return tuple(S * c[..., None, None] for S, c in zip(steps, scales, strict=True))


def memory_mlp(weights: Weights, x: torch.Tensor, residual: bool = True, activation: str = "silu") -> torch.Tensor:
    """Titans' M(x) for x: [B, H, T, d_in] with weights W_l: [B, H, d_in, d_out]; returns [B, H, T, d_out]."""
    act = ACTIVATIONS[activation][0]
    h = x
    for W in weights[:-1]:
        h = act(h @ W)
    out = h @ weights[-1]
    return x + out if residual else out


def residual_mlp(W1: torch.Tensor, W2: torch.Tensor, x: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """M(x) = x + act(x W1) W2 (Eq. 91) for x [.., T, D], W1 [.., D, E], W2 [.., E, D]; returns [.., T, D]."""
    return x + ACTIVATIONS[activation][0](x @ W1) @ W2


def read_projections(out_BHNTD: torch.Tensor, gate_w: torch.Tensor, gate_b: torch.Tensor, max_lr: float):
    """Eqs. 84-86 from the projection memories' outputs [B, H, N, T, D]: (k, v, eta, alpha, q or None).

    k, v (and q with N = 5) are l2-normalised [B, H, T, D]; eta, alpha [B, H, T] are the squashed readouts
    <M(x), w> + b of gate_w [H, 2, D], gate_b [H, 2].
    """
    logits = torch.einsum("bhntd,hnd->bhnt", out_BHNTD[:, :, ETA : ALPHA + 1], gate_w) + gate_b[None, :, :, None]
    eta, alpha = max_lr * torch.sigmoid(logits[:, :, 0]), torch.sigmoid(logits[:, :, 1])
    k, v = F.normalize(out_BHNTD[:, :, K : V + 1], dim=-1).unbind(2)
    q = F.normalize(out_BHNTD[:, :, Q], dim=-1) if out_BHNTD.shape[2] > Q else None
    return k, v, eta, alpha, q


def project(W1, W2, x, gate_w, gate_b, max_lr: float, activation: str = "silu"):
    """Eqs. 84-86 at fixed weights: x [B, H, T, D] -> (k, v [B, H, T, D], eta, alpha [B, H, T], q or None).

    W1 [B, H, N, D, E], W2 [B, H, N, E, D] are the stacked projection memories (N = 4, or 5 with adaptive q);
    gate_w [H, 2, D] and gate_b [H, 2] are the (eta, alpha) readouts.
    """
    out_BHNTD = residual_mlp(W1, W2, x[:, :, None], activation)  # every memory on the same x
    return read_projections(out_BHNTD, gate_w, gate_b, max_lr)


def self_modifying_titans(
    x,
    q,
    projections: Memory,
    memory: Memory,
    gate_w,
    gate_b,
    max_lr: float,
    chunk_size: int,
    memory_chunk_size: int,
    activation: str = "silu",
    max_grad_norm: float | None = None,
    safe_step: bool = False,
    *,
    projections_op: Callable,
    memory_op: Callable,
):
    """Projection loop, then memory loop (they decouple, see ``hope.ops.self_modifying.naive``).

    ``projections_op`` and ``memory_op`` are a pair ``self_modifying_projections`` and ``dgd_memory`` of
    ``hope.ops.self_modifying.chunked`` (or of the naive references). x: [B, H, T, D] (the memories' input);
    q: [B, H, T, D] l2-normalised queries, or None for adaptive q (needs N = 5 projection memories).
    Returns y [B, H, T, D], final projection memories, final M_memory.
    """
    (k, v, eta, alpha, q_mem), projections = projections_op(
        x, *projections, gate_w, gate_b, max_lr, chunk_size, activation, max_grad_norm, safe_step
    )
    q = q_mem if q is None else q
    y, memory = memory_op(q, k, v, eta, alpha, *memory, memory_chunk_size, activation, max_grad_norm, safe_step)
    return y, projections, memory
