"""Chunk-parallel self-modifying Titans: same math, signatures and results as ``naive.py``.

See ``naive.py`` for the model (Eqs. 83-93). Inside a chunk of C tokens every gradient is taken at the chunk-start
weights (W1_0, W2_0), so all C per-token gradients come from one batched forward and one hand-written backward:

    z = k W1_0,  h = act(z),  M(k) = k + h W2_0
    d2_t = 2 (M(k_t) - vhat_t)                  (dL/dM(k), Eq. 88)
    d1_t = (d2_t W2_0^T) * act'(z_t)            grad_W1 = k_t^T d1_t,  grad_W2 = h_t^T d2_t

The output side is a gated sum, as in Titans: W2_C = g W2_0 - sum_i eta_i r_i h_i^T d2_i, with g the product of
all alpha of the chunk and r_i the product of the alpha after i. One matmul.

The input side is the delta rule. Because (alpha I - eta k^T k) W1 - eta k^T d1 = alpha W1 - k^T u with
u = eta (k W1 + d1), every token changes W1 by a rank-one term along its own key:

    W1_t = alpha_t W1_{t-1} - k_t^T u_t,    u_t = eta_t (k_t W1_{t-1} + d1_t)

This is the gated delta rule (Gated DeltaNet) with value -d1_t, so the WY/UT form used for DeltaNet applies
exactly: k_i W1_{i-1} = G_i k_i W1_0 - sum_{j<i} S_ij (k_i . k_j) u_j, with G_i the product of alpha before i and
S_ij the product of alpha strictly between j and i. Hence all u of a chunk solve one unit-lower-triangular system

    (I + A) U = eta * (G * (K W1_0) + D1),    A_ij = eta_i S_ij (k_i . k_j)  for j < i,

and W1_C = g W1_0 - sum_i r_i k_i^T u_i. The (alpha I - eta k k^T) products do not commute with the gradient
terms, but they never need to be formed: the solve is O(C^2 E) per memory and A (which depends on k, eta, alpha
only) is shared by all memories of a group. All gate products come from one (C+1) x (C+1) cumulative product, with
no division, so a vanishing alpha costs no precision. Only the loop over chunks (T / C steps) is sequential;
autograd through these tensor ops (the triangular solve included) gives the outer-loop gradients.

At small widths the loop costs per-op overhead and memory traffic rather than FLOPs, so what does not need the
chunk-start weights leaves it. The solve is linear in its right-hand side, and K W1_0 is the z_k the chunk's forward
computes anyway, so W1_C = g W1_0 - Psi (G * z_k + D1) with Psi [D, C] built from k, eta, alpha alone
(``chunk_maps``): no D x D map and no D x D x E matmul. For M_memory, k, eta, alpha are inputs: the maps of all
chunks come from one batched call before the loop. The N projection memories share k, eta, alpha (one map per
chunk) and their input, so their W1 are kept side by side, [D, N E]: one matmul and one map for the whole group.

The inner-step guard (``safe_step``, see ``naive.py``) is one more per-token scalar beside the clip's: for the
gradient g = (k^T d1, h_k^T d2), J g = |h_k|^2 d2 + |k|^2 (act'(z_k) d1) W2_0 (one [C, E] x [E, D] matmul).
"""

import torch

from hope.ops.common import ACTIVATIONS, clip_scale, read_projections, safe_step_scale
from hope.ops.compile import compiled
from hope.ops.recompute import recomputed

__all__ = ["dgd_memory", "self_modifying_projections", "gate_products", "chunk_maps"]


class _GateProducts(torch.autograd.Function):
    """P = gate_products(alpha) with a hand-written backward: autograd's cumprod backward is ~25 small ops, and the
    projection loop runs it once per chunk. With P[i, j] = prod_{j < l <= i} a_l, dP[i, j]/da_m = P[m-1, j] P[i, m]
    for j < m <= i (else 0), so, since P is zero above its diagonal,

        dL/da_m = sum_i P[i, m] sum_j gP[i, j] P[m-1, j] = sum_i P[i, m] (gP P^T)[i, m-1]

    (one matmul, no division: exact for a vanishing alpha too). Not twice differentiable.
    """

    @staticmethod
    def forward(alpha):
        C = alpha.shape[-1]
        a = torch.cat([torch.ones_like(alpha[..., :1]), alpha], dim=-1)  # [..., C+1]
        i = torch.arange(C + 1, device=alpha.device)
        below = i[:, None] > i[None, :]
        P = torch.where(below, a[..., :, None], torch.ones_like(a[..., :, None])).cumprod(dim=-2)
        return P * (below | (i[:, None] == i[None, :]))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_P):
        (P,) = ctx.saved_tensors
        Q = grad_P @ P.mT  # [..., C+1, C+1]
        return (P[..., :, 1:] * Q[..., :, :-1]).sum(-2)


def gate_products(alpha: torch.Tensor) -> torch.Tensor:
    """P [..., C+1, C+1] with P[i, j] = prod_{j < m <= i} a_m for j <= i (else 0), where a = (1, alpha_0, ...).

    Row/column 0 stand for the chunk start, so P[i, 0] is the product of the first i alphas, P[i, j+1] that of the
    alphas strictly between tokens j and i, and P[C, j+1] that of the alphas after token j. Built by a cumulative
    product down each column (products only, no division), backward by :class:`_GateProducts`.
    """
    return _GateProducts.apply(alpha)


def _twice_clip_scale(half_sq_norm: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """2 * clip_scale(4 * half_sq_norm): the per-token factor of gradients computed as halves (d = 2 e)."""
    scale = clip_scale(4 * half_sq_norm, max_norm)
    return torch.full_like(half_sq_norm, 2.0) if scale is None else 2 * scale


def _jvp_sq(e, d1, ag, k_sq, hk_sq, W2):
    """|J g|^2 per token for its gradient g = (k^T d1, h_k^T e) (any common multiple of e and d1 = (e W2^T) act'):
    the change of M(k) = k + act(k W1) W2 along g is |h_k|^2 e + |k|^2 (act'(z_k) d1) W2. Layout [.., C, D | E]."""
    return (hk_sq[..., None] * e + k_sq[..., None] * ((ag * d1) @ W2)).pow(2).sum(-1)


def _write_chunk(W1, W2, k, v, eta, alpha, activation: str, q=None, max_grad_norm=None, safe_step=False):
    """Read M_0(q) (if q is given) and write a chunk. k, v, q [.., C, D]; eta, alpha [.., C]; W1 [.., D, E].

    Leading dims broadcast: the projection group passes k [B, H, 1, C, D] against W1 [B, H, N, D, E].
    """
    act, act_grad = ACTIVATIONS[activation]
    C = k.shape[-2]
    x = torch.cat([v, k] if q is None else [q, v, k], dim=-2)  # one forward at the chunk-start weights
    z = x @ W1
    h = act(z)
    out = x + h @ W2
    vhat, Mk = out[..., -2 * C : -C, :], out[..., -C:, :]  # Eq. 87 and M(k)
    zk, hk = z[..., -C:, :], h[..., -C:, :]

    d2 = 2 * (Mk - vhat)  # dL/dM(k) of Eq. 88; vhat is the target (no inner derivative through it)
    ag = act_grad(zk)
    d1 = (d2 @ W2.mT) * ag
    # per-token gradient norms from vector norms: ||k^T d1||_F = |k| |d1|, ||h^T d2||_F = |h| |d2|
    k_sq, hk_sq = k.pow(2).sum(-1), hk.pow(2).sum(-1)
    sq_norm = k_sq * d1.pow(2).sum(-1) + hk_sq * d2.pow(2).sum(-1)
    scale = clip_scale(sq_norm, max_grad_norm)
    if safe_step:
        step = safe_step_scale(sq_norm, _jvp_sq(d2, d1, ag, k_sq, hk_sq, W2), eta, C)
        scale = step if scale is None else scale * step
    if scale is not None:
        d1, d2 = d1 * scale[..., None], d2 * scale[..., None]

    P = gate_products(alpha)
    G, S, r, g = P[..., :C, 0], P[..., :C, 1:], P[..., C, 1:], P[..., C, 0, None, None]
    A = eta[..., :, None] * (k @ k.mT) * S  # strictly lower: S_ij = 0 for j >= i
    rhs = eta[..., None] * (G[..., None] * zk + d1)  # zk = k W1_0
    dtype = torch.promote_types(rhs.dtype, torch.float32)  # no half-precision triangular solve (and no need)
    U = torch.linalg.solve_triangular(A.to(dtype), rhs.to(dtype), upper=False, unitriangular=True)  # A broadcasts
    W1 = g * W1 - (k * r[..., None]).mT @ U  # Eq. 88 input side, unrolled over the chunk
    W2 = g * W2 - (hk * (eta * r)[..., None]).mT @ d2  # Eq. 88 output side (plain retention)
    y = None if q is None else out[..., :C, :]
    return y, W1, W2


def chunk_maps(k, eta, alpha):
    """The weight-free part of a chunk's write: W1_C = g W1_0 - Psi (G * Z_k + D1), W2_C = g W2_0 - (er * H_k)^T D2.

    k [.., C, D]; eta, alpha [.., C]. Returns Psi [.., D, C], G [.., C, 1], g [.., 1, 1] and er = eta * r [.., C].
    The solve of ``_write_chunk`` is linear in its right-hand side, so with T = (I + A)^{-1} (one unit-lower-
    triangular solve against the identity) U = T diag(eta) (diag(G) Z_k + D1), Z_k = K W1_0, and

        W1_C = g W1_0 - (r * K)^T U = g W1_0 - Psi (G * Z_k + D1),    Psi = (r * K)^T T diag(eta).

    Only k, eta and alpha enter, so for M_memory (whose k, eta, alpha are inputs) the maps of all chunks come from
    one batched call before the chunk loop.
    """
    C = k.shape[-2]
    P = gate_products(alpha)
    G, S, r, g = P[..., :C, 0, None], P[..., :C, 1:], P[..., C, 1:], P[..., C, 0, None, None]
    A = eta[..., :, None] * (k @ k.mT) * S  # strictly lower: S_ij = 0 for j >= i
    dtype = torch.promote_types(A.dtype, torch.float32)  # no half-precision triangular solve (and no need)
    eye_CC = torch.eye(C, dtype=dtype, device=k.device)
    T = torch.linalg.solve_triangular(A.to(dtype), eye_CC, upper=False, unitriangular=True).to(A.dtype)
    Psi = (k * r[..., None]).mT @ (T * eta[..., None, :])
    return Psi, G, g, eta * r


def _memory_step(W1, W2, X, Psi, G, g, er, k_sq, eta, activation: str, max_grad_norm, safe_step: bool):
    """One complete chunk of M_memory: X = [q; v; k] [B, H, 3C, D], the chunk's maps (:func:`chunk_maps`), |k|^2, eta.

    One forward at the chunk-start weights, the inner gradients by hand (no autograd) and W1 <- g W1 - Psi (G Z_k + D1),
    W2 <- g W2 - (er H_k)^T D2. Returns y = M_0(q) and the chunk-end (W1, W2).
    """
    act, act_grad = ACTIVATIONS[activation]
    C = X.shape[-2] // 3
    z = X @ W1
    h = act(z)
    y, vhat, Mk = (X + h @ W2).split(C, dim=-2)  # split: one cat in the backward
    zk, hk = z[..., 2 * C :, :], h[..., 2 * C :, :]
    e = Mk - vhat  # dL/dM(k) = 2 e, vhat the target
    ag = act_grad(zk)
    d1 = (e @ W2.mT) * ag  # half of dL/dz
    # the factor 2 and the clip ride on per-token scalars: |grad|^2 = 4 (|k|^2 |d1|^2 + |h_k|^2 |e|^2)
    hk_sq = hk.pow(2).sum(-1)
    half_sq = k_sq * d1.pow(2).sum(-1) + hk_sq * e.pow(2).sum(-1)
    s = _twice_clip_scale(half_sq, max_grad_norm)
    if safe_step:
        s = s * safe_step_scale(half_sq, _jvp_sq(e, d1, ag, k_sq, hk_sq, W2), eta, C)
    W1 = g * W1 - Psi @ torch.addcmul(d1 * s[..., None], G, zk)  # Eq. 88 input side (delta rule), unrolled
    W2 = g * W2 - (hk * (er * s)[..., None]).mT @ e  # Eq. 88 output side (plain retention)
    return y, W1, W2  # y: Eq. 83 at the chunk-start weights


def dgd_memory(
    q,
    k,
    v,
    eta,
    alpha,
    W1,
    W2,
    chunk_size: int,
    activation: str = "silu",
    max_grad_norm=None,
    safe_step: bool = False,
    compile: bool = False,
    recompute: bool = False,
):
    """Chunk-parallel M_memory; arguments and result exactly as ``naive.dgd_memory``.

    Everything that does not involve the weights is hoisted out of the chunk loop and batched over all complete
    chunks: the [q; v; k] inputs of each chunk's forward, |k|^2 for the clip, and the gate maps of
    :func:`chunk_maps` (gate products and triangular solve included); each step of the loop is
    :func:`_memory_step` (through torch.compile if ``compile``; recomputed in backward from its chunk-boundary
    weights if ``recompute``, see ``hope.ops.recompute``). A last, shorter chunk goes through ``_write_chunk``.
    """
    C = chunk_size
    n = k.shape[2] // C
    step = compiled(_memory_step) if compile else _memory_step
    step = recomputed(step) if recompute else step
    ys = []
    if n:
        # [B, H, n C, ..] -> [n, B, H, C, ..]: chunk-major, so that every chunk's slice is contiguous
        chunks = lambda t: t[:, :, : n * C].unflatten(2, (n, C)).movedim(2, 0)  # noqa: E731
        k_n, eta_n, alpha_n = chunks(k), chunks(eta), chunks(alpha)
        X_n = torch.cat([chunks(q), chunks(v), k_n], dim=-2)  # one forward per chunk reads q, writes (k, v)
        maps = chunk_maps(k_n, eta_n, alpha_n)
        per_chunk = (t.unbind(0) for t in (X_n, *maps, k_n.pow(2).sum(-1), eta_n))  # unbind: one stack in backward
        for X, *chunk in zip(*per_chunk, strict=True):
            y, W1, W2 = step(W1, W2, X, *chunk, activation, max_grad_norm, safe_step)
            ys.append(y)
    if k.shape[2] > n * C:
        tail = tuple(t[:, :, n * C :] for t in (k, v, eta, alpha))
        y, W1, W2 = _write_chunk(W1, W2, *tail, activation, q[:, :, n * C :], max_grad_norm, safe_step)
        ys.append(y)
    return torch.cat(ys, dim=2), (W1, W2)


def _project(W1, W2, x, gate_w, gate_b, max_lr: float, activation: str):
    """``common.project`` with the side-by-side W1 [B, H, D, N E]: one matmul gives every memory's hidden layer."""
    act = ACTIVATIONS[activation][0]
    N, E = W2.shape[2:4]
    h = act(x @ W1).unflatten(-1, (N, E)).transpose(2, 3)  # [B, H, C, N E] -> [B, H, N, C, E]
    out = x[:, :, None] + h @ W2  # every memory on the same x: [B, H, N, C, D]
    return read_projections(out, gate_w, gate_b, max_lr)


def _write_shared(W1, W2, k, v, eta, alpha, activation: str, max_grad_norm=None, safe_step=False):
    """``_write_chunk`` for the N projection memories, which share k, v, eta, alpha [B, H, C(, D)].

    W1 [B, H, D, N E] holds the input-side weights side by side: the forward of [v; k] is one matmul, and the N
    delta rules share their gates, so one :func:`chunk_maps` (a solve with C right-hand sides, not N E) gives
    W1_C = g W1_0 - Psi (G Z_k + D1) for all of them. The output side stays per memory: W2 [B, H, N, E, D]. As in
    :func:`dgd_memory`, only e = M(k) - vhat = (k - v) + (h_k - h_v) W2 is formed (dL/dM(k) = 2 e) and the
    factor 2 and the clip are applied to per-token scalars where possible.
    """
    act, act_grad = ACTIVATIONS[activation]
    C = k.shape[-2]
    N, E = W2.shape[2:4]
    z = torch.cat([v, k], dim=-2) @ W1  # [B, H, 2C, N E]
    zk = z[..., C:, :]
    hv, hk = act(z).split(C, dim=-2)
    per_memory = lambda t: t.unflatten(-1, (N, E)).transpose(2, 3)  # noqa: E731  [B, H, C, N E] -> [B, H, N, C, E]
    e = (k - v)[:, :, None] + per_memory(hk - hv) @ W2  # [B, H, N, C, D]: M_m(k) - vhat_m, vhat_m = M_m(v)
    ag = act_grad(zk).unflatten(-1, (N, E))  # [B, H, C, N, E]
    d1 = (e @ W2.mT).transpose(2, 3) * ag  # half of dL/dz: [B, H, C, N, E]
    # per token and memory, as in _write_chunk: |grad|^2 = 4 (|k|^2 |d1_m|^2 + |h_m|^2 |e_m|^2)
    k_sq, hk_sq = k.pow(2).sum(-1)[..., None], hk.unflatten(-1, (N, E)).pow(2).sum(-1)  # [B, H, C, 1 | N]
    sq = k_sq * d1.pow(2).sum(-1) + hk_sq * e.pow(2).sum(-1).mT
    s = _twice_clip_scale(sq, max_grad_norm)  # [B, H, C, N]
    if safe_step:  # per memory: [B, H, C, N] -> [B, H, N, C] for _jvp_sq and back
        jvp_sq = _jvp_sq(e, d1.transpose(2, 3), ag.transpose(2, 3), k_sq.mT, hk_sq.mT, W2).mT
        s = s * safe_step_scale(sq, jvp_sq, eta[..., None], C)

    Psi, G, g, er = chunk_maps(k, eta, alpha)  # shared by the N memories
    W1 = g * W1 - Psi @ torch.addcmul((d1 * s[..., None]).flatten(-2), G, zk)  # Eq. 88 input side, all N at once
    W2 = g[..., None] * W2 - (per_memory(hk) * (er[..., None] * s).mT[..., None]).mT @ e  # Eq. 88 output side
    return W1, W2


def _projection_step(W1, W2, x, gate_w, gate_b, max_lr: float, activation: str, max_grad_norm, safe_step: bool):
    """One projection chunk x [B, H, C, D]: (k, v, eta, alpha, q) at the chunk-start weights, and the chunk-end
    (W1, W2) of all N memories (W1 side by side, [B, H, D, N E])."""
    k, v, eta, alpha, q = _project(W1, W2, x, gate_w, gate_b, max_lr, activation)
    W1, W2 = _write_shared(W1, W2, k, v, eta, alpha, activation, max_grad_norm, safe_step)
    return (k, v, eta, alpha, q), W1, W2


def self_modifying_projections(
    x,
    W1,
    W2,
    gate_w,
    gate_b,
    max_lr: float,
    chunk_size: int,
    activation: str = "silu",
    max_grad_norm=None,
    safe_step: bool = False,
    compile: bool = False,
    recompute: bool = False,
):
    """Chunk-parallel projection memories; arguments and result exactly as ``naive.self_modifying_projections``.

    Here k, v, eta, alpha of a chunk come from its start weights, so only the layout helps: the N memories read
    the same input, so their input-side weights W1 [B, H, N, D, E] are kept side by side as [B, H, D, N E] inside
    the loop (see :func:`_write_shared`) and put back at the end. Each step is :func:`_projection_step` (through
    torch.compile if ``compile``; recomputed in backward if ``recompute``).
    """
    B, H, N, D, E = W1.shape
    W1 = W1.transpose(2, 3).reshape(B, H, D, N * E)
    step = compiled(_projection_step) if compile else _projection_step
    step = recomputed(step) if recompute else step
    outs = []
    for s in range(0, x.shape[2], chunk_size):
        chunk = x[:, :, s : s + chunk_size]
        out, W1, W2 = step(W1, W2, chunk, gate_w, gate_b, max_lr, activation, max_grad_norm, safe_step)
        outs.append(out)
    cat = [None if parts[0] is None else torch.cat(parts, dim=2) for parts in zip(*outs, strict=True)]
    return tuple(cat), (W1.unflatten(-1, (N, E)).transpose(2, 3), W2)
