"""Chunk-parallel Titans memory update: same math, signature and result as ``naive.titans_memory``.

See ``naive.py`` for the model (memory MLP, Eqs. 12-14, chunk-start reads). Inside a chunk of C tokens every
gradient is taken at the chunk-start weights M_0, so the C per-token gradients of the chunk come from one
batched forward and one hand-written backward of the MLP over all C keys at once:

    z_l = h_{l-1} W_l,  h_l = act(z_l),  out = [k +] h_{L-1} W_L
    delta_L = 2 (out - v)                               (d l / d z_L, Eq. 12)
    delta_l = (delta_{l+1} W_{l+1}^T) * act'(z_l)
    grad_{W_l} l(M_0; k_t, v_t) = h_{l-1,t}^T delta_{l,t}  (an outer product per token)

Unrolling Eqs. 13-14 over the chunk (beta = 1 - alpha, P^x_{i} = prod_{i<j<=C} x_j, an empty product is 1):

    S_C = P^eta_0 S_0 - sum_i theta_i P^eta_i G_i
    M_C = gamma M_0 + rho S_0 - sum_i theta_i r_i G_i,    gamma = P^beta_0,  rho = eta_1 r_1,
    r_i = sum_{t>=i} P^beta_t prod_{i<j<=t} eta_j,   i.e.  r_i = eta_{i+1} r_{i+1} + P^beta_i,  r_C = 1

so with c_i = theta_i r_i the whole momentum-and-decay sweep is  sum_i c_i h_i^T delta_i = (h * c)^T delta,
one matmul per layer, and the per-token weights M_t are never built. The coefficients are suffix products and a
first-order linear recurrence over the chunk, evaluated with the parallel scan of ``hope.ops.scan`` in products
and sums only: there is no division by a cumulative product, so a vanishing gate (eta -> 0) costs no precision.

Only the Python loop over chunks (T / C steps) is sequential. Autograd through these tensor ops gives the
outer-loop (second-order) gradients; nothing here calls autograd itself.
"""

import torch
import torch.nn.functional as F

from hope.ops.common import ACTIVATIONS, Gates, MemoryRule, MemoryState, clip_scale
from hope.ops.compile import compiled
from hope.ops.recompute import recomputed
from hope.ops.scan import linear_scan

__all__ = ["titans_memory"]


def chunk_coefficients(theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Coefficients of the unrolled Eqs. 13-14 over chunks: gates [..., C] -> (gamma, rho, eta_prod, c_M, c_S).

    M_C = gamma M_0 + rho S_0 - sum_i c_M[i] G_i and S_C = eta_prod S_0 - sum_i c_S[i] G_i;
    gamma, rho, eta_prod: [...]; c_M, c_S: [..., C].
    """
    beta = 1 - alpha
    # inclusive suffix products prod_{j>=i} of beta and eta in one reverse scan: x_i = a_i x_{i+1}, x_{C+1} = 1
    a = torch.stack([beta, eta])  # [2, ..., C]
    Qb, Qe = linear_scan(a, torch.zeros_like(a), x0=torch.ones_like(a[..., 0]), reverse=True).unbind(0)
    Pb = F.pad(Qb[..., 1:], (0, 1), value=1.0)  # exclusive: prod_{j>i} beta_j
    Pe = F.pad(Qe[..., 1:], (0, 1), value=1.0)
    eta_next = F.pad(eta[..., 1:], (0, 1), value=0.0)  # eta_{i+1}; its last entry multiplies x_{C+1} = 0
    r = linear_scan(eta_next, Pb, reverse=True)  # r_i = eta_{i+1} r_{i+1} + P^beta_i
    return Qb[..., 0], eta[..., 0] * r[..., 0], Qe[..., 0], theta * r, theta * Pe


def _per_chunk_coefficients(theta, eta, alpha, chunk_size: int) -> list[tuple[torch.Tensor, ...]]:
    """chunk_coefficients for every chunk of [B, H, T] gates: full chunks in one batched call, then the tail."""
    T = theta.shape[-1]
    n_full = T // chunk_size
    gates = (theta, eta, alpha)
    coefs = []
    if n_full:
        # [B, H, n_full * C] -> [B, H, n_full, C]
        full = chunk_coefficients(*(g[..., : n_full * chunk_size].unflatten(-1, (n_full, chunk_size)) for g in gates))
        coefs += [tuple(c[:, :, n] for c in full) for n in range(n_full)]
    if n_full * chunk_size < T:
        coefs.append(chunk_coefficients(*(g[..., n_full * chunk_size :] for g in gates)))
    return coefs


def _chunk_step(weights, momentum, q, k, v, coefs, residual: bool, activation: str, max_grad_norm: float | None):
    """Read q at the chunk-start weights and write the chunk of (k, v); q, k, v: [B, H, C, D] (q may be None)."""
    act, act_grad = ACTIVATIONS[activation]
    gamma, rho, eta_prod, c_M, c_S = coefs
    C = k.shape[2]
    # queries and keys share the chunk-start weights: one forward over [B, H, 2C, D]
    h = k if q is None else torch.cat([q, k], dim=2)
    x, hs, zs = h, [], []
    for W in weights[:-1]:
        hs.append(h)
        zs.append(h @ W)
        h = act(zs[-1])
    hs.append(h)
    out = h @ weights[-1]
    if residual:
        out = out + x
    y = None if q is None else out[:, :, :C]

    delta = 2 * (out[:, :, -C:] - v)  # d l / d z_L of Eq. 12, for the keys only
    inputs, deltas = [], []  # per layer, last layer first
    for layer in range(len(weights) - 1, -1, -1):
        inputs.append(hs[layer][:, :, -C:])  # input of this layer for each key
        deltas.append(delta)
        if layer:
            delta = (delta @ weights[layer].mT) * act_grad(zs[layer - 1][:, :, -C:])
    # ||a_t^T delta_t||_F = |a_t| |delta_t|, so each token's gradient norm needs no [d_in, d_out] matrix
    if max_grad_norm is not None:
        sq_norm = sum(a.pow(2).sum(-1) * d.pow(2).sum(-1) for a, d in zip(inputs, deltas, strict=True))  # [B, H, C]
        scale = clip_scale(sq_norm, max_grad_norm)
        c_M, c_S = c_M * scale, c_S * scale
    # sum_t c_t a_t^T delta_t per layer, back in first-layer-first order
    layers = list(zip(inputs[::-1], deltas[::-1], strict=True))
    grads_M = [torch.einsum("bhtd,bhte->bhde", a * c_M[..., None], d) for a, d in layers]
    grads_S = [torch.einsum("bhtd,bhte->bhde", a * c_S[..., None], d) for a, d in layers]
    gamma, rho, eta_prod = (c[..., None, None] for c in (gamma, rho, eta_prod))
    new_weights = tuple(gamma * W + rho * S - G for W, S, G in zip(weights, momentum, grads_M, strict=True))
    new_momentum = tuple(eta_prod * S - G for S, G in zip(momentum, grads_S, strict=True))
    return y, new_weights, new_momentum


def titans_memory(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState,
    rule: MemoryRule,
    compile: bool = False,
    recompute: bool = False,
) -> tuple[torch.Tensor | None, MemoryState]:
    """Chunk-parallel Titans memory; arguments and result exactly as ``hope.ops.titans.naive.titans_memory``.

    ``compile=True`` runs each chunk step through torch.compile (same math; needs a working inductor backend);
    ``recompute=True`` keeps only the chunk-boundary states for backward and recomputes each step there
    (``hope.ops.recompute``; same gradients, less memory).

    q, k, v: [B, H, T, D] (q may be None: write only, y is None); gates = (theta, eta, alpha): [B, H, T] in
    (0, 1); state = (weights, momentum): tuples of [B, H, d_in, d_out]; rule: chunk size, MLP form and clipping.
    Returns y: [B, H, T, D] and the final (weights, momentum).
    """
    (weights, momentum), (chunk_size, residual, activation, max_grad_norm) = state, rule
    coefs = _per_chunk_coefficients(*gates, chunk_size)
    step = compiled(_chunk_step) if compile else _chunk_step
    step = recomputed(step) if recompute else step
    ys = []
    for n, cf in enumerate(coefs):
        chunk = slice(n * chunk_size, (n + 1) * chunk_size)
        q_c = None if q is None else q[:, :, chunk]
        k_c, v_c = k[:, :, chunk], v[:, :, chunk]
        y, weights, momentum = step(weights, momentum, q_c, k_c, v_c, cf, residual, activation, max_grad_norm)
        ys.append(y)
    y = None if q is None else torch.cat(ys, dim=2)
    return y, (weights, momentum)
