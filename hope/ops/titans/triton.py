"""Fused Triton chunk kernels for the Titans deep memory (depth 2): the whole chunk loop in one launch each way.

Same math, signature and result as ``chunked.titans_memory`` (see ``chunked.py`` for the unrolled Eqs. 12-14 and
``naive.py`` for the model); ``tests/ops/test_titans_triton.py`` checks both against the naive reference. One
program per (batch, head) runs every chunk of the call in order:

- **forward**: read y = M_0(q) and the chunk's (k, v) at the chunk-start weights, the per-token gradients by hand
  (delta_2 = 2 (M(k) - v), delta_1 = (delta_2 W_2^T) * act'(z)), the per-token clip, and the unrolled
  momentum/decay update W <- gamma W + rho S - sum_t c_M[t] G_t, S <- eta_prod S - sum_t c_S[t] G_t. A head's
  weights and momentum (4 D E floats: 256 KiB at D 64, E 256) do not fit in one SM's registers, so the kernel
  streams them in tiles of BE hidden units (``[D, BE]`` of W_1, ``[BE, D]`` of W_2) through the L2 cache, three
  passes per chunk (M(k) and M(q); the clip's norms; the update), and no [C, E] activation of a chunk is ever
  written to memory. The state at the start of every chunk is stored: that and the inputs are all backward keeps
  (n_chunks x 4 D E floats per head, the same boundary states ``memory_recompute`` keeps).
- **backward**: the chunks in reverse, each recomputed from its stored start state, carrying the gradient of the
  state (dW, dS) from chunk end to chunk start in place. The gradient of a chunk needs sums over all hidden units
  before per-unit terms can be finished (the output M(k), the clip's norms, the gradient of delta_2), so it makes
  four passes over the tiles: (A) M(k), (B) the clip norms and d loss / d (c * s), (C) d loss / d delta_2, (D)
  everything per tile, written back.

The coefficients gamma, rho, eta_prod, c_M, c_S come from ``chunked.chunk_coefficients`` (PyTorch, batched over all
chunks), and their gradients flow back through it to the gates with autograd. Computation is in the state's dtype
(float32 for a model; float64 in tests) whatever the dtype of q, k, v; with half-precision inputs (autocast) the
matmuls use TF32, otherwise exact float32 ("ieee").

Where the kernels cannot run (a CPU tensor outside ``TRITON_INTERPRET=1``, a memory depth other than 2, a head
dim, hidden width or chunk size that is not a power of two >= 16) ``titans_memory_triton`` is the PyTorch op. A
last chunk shorter than the others is written by the PyTorch op too. Triton decides at import whether kernels are
interpreted: set ``TRITON_INTERPRET=1`` before importing this module to run them on CPU.
"""

import torch
import triton
import triton.language as tl

from hope.ops.common import Gates, MemoryRule, MemoryState
from hope.ops.titans.chunked import chunk_coefficients, titans_memory

__all__ = ["INTERPRETED", "supported", "titans_memory_triton"]

INTERPRETED = bool(triton.knobs.runtime.interpret)  # the kernels below were built for the interpreter (CPU)
# hidden units per tile; the backward holds about twice as many tiles at once. Not tuned on a GPU yet.
FORWARD_TILE, BACKWARD_TILE = 64, 32


@triton.jit
def _act(z, GELU: tl.constexpr):
    if GELU:
        return 0.5 * z * (1 + tl.math.erf(z * 0.7071067811865476))
    return z * tl.sigmoid(z)


@triton.jit
def _act_grad(z, GELU: tl.constexpr):
    if GELU:  # Phi(z) + z phi(z)
        return 0.5 * (1 + tl.math.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    s = tl.sigmoid(z)
    return s * (1 + z * (1 - s))


@triton.jit
def _act_grad2(z, GELU: tl.constexpr):
    if GELU:  # phi(z) (2 - z^2)
        return tl.exp(-0.5 * z * z) * 0.3989422804014327 * (2 - z * z)
    s = tl.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _tile(ptr, base, e0, D: tl.constexpr, E: tl.constexpr, BE: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Offsets of a tile of hidden units [e0, e0 + BE): [D, BE] of a [D, E] matrix, or [BE, D] of an [E, D] one."""
    rd, re = tl.arange(0, D), e0 + tl.arange(0, BE)
    if TRANSPOSED:
        return ptr + base + re[:, None] * D + rd[None, :]
    return ptr + base + rd[:, None] * E + re[None, :]


@triton.jit
def _pair(A, B, base, e0, D: tl.constexpr, E: tl.constexpr, BE: tl.constexpr):
    """The tiles of hidden units [e0, e0 + BE) of a [D, E] matrix A and an [E, D] matrix B (W_1 and W_2)."""
    return tl.load(_tile(A, base, e0, D, E, BE, False)), tl.load(_tile(B, base, e0, D, E, BE, True))


@triton.jit
def _hidden(k, d2, w1, w2, GELU: tl.constexpr, PREC: tl.constexpr):
    """z = k W_1, h = act(z) and delta_1 = (delta_2 W_2^T) act'(z) on one tile of hidden units."""
    zk = _dot(k, w1, PREC)
    return zk, _act(zk, GELU), _dot(d2, tl.trans(w2), PREC) * _act_grad(zk, GELU)


@triton.jit
def _forward_kernel(
    Q, K, V, Y, GAM, RHO, ETP, CM, CS, W1, W2, S1, S2,
    n_chunks, T, max_norm,
    D: tl.constexpr, E: tl.constexpr, C: tl.constexpr, BE: tl.constexpr,
    HAS_Q: tl.constexpr, RESIDUAL: tl.constexpr, CLIP: tl.constexpr, GELU: tl.constexpr, SAVE: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    rc, rd = tl.arange(0, C), tl.arange(0, D)
    slots = n_chunks + 1 if SAVE else 2  # every chunk-start state for backward, or two that alternate
    state = bh * slots * D * E
    dt = W1.dtype.element_ty
    for n in range(n_chunks):
        src = state + (n if SAVE else n % 2) * D * E
        dst = state + (n + 1 if SAVE else (n + 1) % 2) * D * E
        tok = bh * T * D + (n * C + rc)[:, None] * D + rd[None, :]
        k, v = tl.load(K + tok).to(dt), tl.load(V + tok).to(dt)
        q = k
        if HAS_Q:
            q = tl.load(Q + tok).to(dt)
        out, y = tl.zeros((C, D), dt), tl.zeros((C, D), dt)
        hk_sq = tl.zeros((C,), dt)
        for e0 in range(0, E, BE):  # M(k), M(q) at the chunk-start weights
            w1, w2 = _pair(W1, W2, src, e0, D, E, BE)
            hk = _act(_dot(k, w1, PREC), GELU)
            out += _dot(hk, w2, PREC)
            hk_sq += tl.sum(hk * hk, axis=1)
            if HAS_Q:
                y += _dot(_act(_dot(q, w1, PREC), GELU), w2, PREC)
        if RESIDUAL:
            out += k
            y += q
        if HAS_Q:
            tl.store(Y + tok, y.to(Y.dtype.element_ty))
        d2 = 2 * (out - v)  # d l / d z_2 (Eq. 12)
        s = tl.full((C,), 1.0, dt)
        if CLIP:  # ||grad_t||^2 = |k|^2 |delta_1|^2 + |h|^2 |delta_2|^2
            d1_sq = tl.zeros((C,), dt)
            for e0 in range(0, E, BE):
                w1, w2 = _pair(W1, W2, src, e0, D, E, BE)
                d1 = _hidden(k, d2, w1, w2, GELU, PREC)[2]
                d1_sq += tl.sum(d1 * d1, axis=1)
            sq = tl.sum(k * k, axis=1) * d1_sq + hk_sq * tl.sum(d2 * d2, axis=1)
            s = max_norm / tl.sqrt(tl.maximum(sq, max_norm * max_norm))
        chunk = bh * n_chunks + n
        aM = tl.load(CM + bh * T + n * C + rc).to(dt) * s
        aS = tl.load(CS + bh * T + n * C + rc).to(dt) * s
        gam, rho, etp = tl.load(GAM + chunk).to(dt), tl.load(RHO + chunk).to(dt), tl.load(ETP + chunk).to(dt)
        for e0 in range(0, E, BE):  # the unrolled Eqs. 13-14, one tile of hidden units at a time
            t1, t2 = _tile(W1, src, e0, D, E, BE, False), _tile(W2, src, e0, D, E, BE, True)
            w1, w2 = tl.load(t1), tl.load(t2)
            s1, s2 = _pair(S1, S2, src, e0, D, E, BE)
            zk, hk, d1 = _hidden(k, d2, w1, w2, GELU, PREC)
            g1M = _dot(tl.trans(k), d1 * aM[:, None], PREC)
            g1S = _dot(tl.trans(k), d1 * aS[:, None], PREC)
            g2M = _dot(tl.trans(hk), d2 * aM[:, None], PREC)
            g2S = _dot(tl.trans(hk), d2 * aS[:, None], PREC)
            tl.store(_tile(W1, dst, e0, D, E, BE, False), gam * w1 + rho * s1 - g1M)
            tl.store(_tile(W2, dst, e0, D, E, BE, True), gam * w2 + rho * s2 - g2M)
            tl.store(_tile(S1, dst, e0, D, E, BE, False), etp * s1 - g1S)
            tl.store(_tile(S2, dst, e0, D, E, BE, True), etp * s2 - g2S)
        tl.debug_barrier()  # the next chunk reads what this one wrote


@triton.jit
def _backward_kernel(
    Q, K, V, GY, GAM, RHO, ETP, CM, CS, W1, W2, S1, S2, GW1, GW2, GS1, GS2,
    GQ, GK, GV, GCM, GCS, GGAM, GRHO, GETP,
    n_chunks, T, max_norm,
    D: tl.constexpr, E: tl.constexpr, C: tl.constexpr, BE: tl.constexpr,
    HAS_Q: tl.constexpr, RESIDUAL: tl.constexpr, CLIP: tl.constexpr, GELU: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    rc, rd = tl.arange(0, C), tl.arange(0, D)
    dt = W1.dtype.element_ty
    carry = bh * D * E  # GW*, GS*: d loss / d (state at the end of the chunk), turned into that at its start
    for i in range(n_chunks):
        n = n_chunks - 1 - i
        chunk = bh * n_chunks + n
        src = (bh * (n_chunks + 1) + n) * D * E
        tok = bh * T * D + (n * C + rc)[:, None] * D + rd[None, :]
        k, v = tl.load(K + tok).to(dt), tl.load(V + tok).to(dt)
        # (A) M(k) at the chunk-start weights
        out, hk_sq = tl.zeros((C, D), dt), tl.zeros((C,), dt)
        for e0 in range(0, E, BE):
            w1, w2 = _pair(W1, W2, src, e0, D, E, BE)
            hk = _act(_dot(k, w1, PREC), GELU)
            out += _dot(hk, w2, PREC)
            hk_sq += tl.sum(hk * hk, axis=1)
        if RESIDUAL:
            out += k
        d2 = 2 * (out - v)
        # (B) the clip's norms, and d loss / d a for a = c s from G_1 = k^T (a delta_1), G_2 = h^T (a delta_2):
        # d loss / d G = -(the carried gradient), since W' = gamma W + rho S - G_M and S' = eta_prod S - G_S
        d1_sq, gaM, gaS = tl.zeros((C,), dt), tl.zeros((C,), dt), tl.zeros((C,), dt)
        for e0 in range(0, E, BE):
            w1, w2 = _pair(W1, W2, src, e0, D, E, BE)
            (gw1, gw2), (gs1, gs2) = _pair(GW1, GW2, carry, e0, D, E, BE), _pair(GS1, GS2, carry, e0, D, E, BE)
            zk, hk, d1 = _hidden(k, d2, w1, w2, GELU, PREC)
            d1_sq += tl.sum(d1 * d1, axis=1)
            gaM -= tl.sum(_dot(k, gw1, PREC) * d1, axis=1) + tl.sum(_dot(hk, gw2, PREC) * d2, axis=1)
            gaS -= tl.sum(_dot(k, gs1, PREC) * d1, axis=1) + tl.sum(_dot(hk, gs2, PREC) * d2, axis=1)
        k_sq, d2_sq = tl.sum(k * k, axis=1), tl.sum(d2 * d2, axis=1)
        cM, cS = tl.load(CM + bh * T + n * C + rc).to(dt), tl.load(CS + bh * T + n * C + rc).to(dt)
        s, g_sq = tl.full((C,), 1.0, dt), tl.zeros((C,), dt)
        if CLIP:  # s = tau / sqrt(max(sq, tau^2)): ds / dsq = -s / (2 sq) above the threshold, 0 below
            sq = k_sq * d1_sq + hk_sq * d2_sq
            s = max_norm / tl.sqrt(tl.maximum(sq, max_norm * max_norm))
            g_sq = tl.where(sq > max_norm * max_norm, -0.5 * s / sq * (cM * gaM + cS * gaS), 0.0)
        tl.store(GCM + bh * T + n * C + rc, s * gaM)
        tl.store(GCS + bh * T + n * C + rc, s * gaS)
        aM, aS = (cM * s)[:, None], (cS * s)[:, None]
        # (C) d loss / d delta_2, summed over the hidden units, and the part of d loss / d k through G_1
        gd2 = 2 * (g_sq * hk_sq)[:, None] * d2
        gk = 2 * (g_sq * d1_sq)[:, None] * k
        for e0 in range(0, E, BE):
            w1, w2 = _pair(W1, W2, src, e0, D, E, BE)
            (gw1, gw2), (gs1, gs2) = _pair(GW1, GW2, carry, e0, D, E, BE), _pair(GS1, GS2, carry, e0, D, E, BE)
            zk, hk, d1 = _hidden(k, d2, w1, w2, GELU, PREC)
            gd1 = 2 * (g_sq * k_sq)[:, None] * d1 - aM * _dot(k, gw1, PREC) - aS * _dot(k, gs1, PREC)
            gd2 += _dot(gd1 * _act_grad(zk, GELU), w2, PREC) - aM * _dot(hk, gw2, PREC) - aS * _dot(hk, gs2, PREC)
            gk -= _dot(d1 * aM, tl.trans(gw1), PREC) + _dot(d1 * aS, tl.trans(gs1), PREC)
        gout = 2 * gd2  # delta_2 = 2 (out - v)
        if RESIDUAL:
            gk += gout
        q, gy, gq = k, tl.zeros((C, D), dt), tl.zeros((C, D), dt)
        if HAS_Q:
            q, gy = tl.load(Q + tok).to(dt), tl.load(GY + tok).to(dt)
            if RESIDUAL:
                gq = gy
        # (D) per tile: d loss / d z of keys and queries, and the state's gradient at the chunk start, in place
        gam, rho, etp = tl.load(GAM + chunk).to(dt), tl.load(RHO + chunk).to(dt), tl.load(ETP + chunk).to(dt)
        ggam, grho, getp = tl.zeros((D,), dt), tl.zeros((D,), dt), tl.zeros((D,), dt)
        for e0 in range(0, E, BE):
            w1, w2 = _pair(W1, W2, src, e0, D, E, BE)
            s1, s2 = _pair(S1, S2, src, e0, D, E, BE)
            t_gw1, t_gs1 = _tile(GW1, carry, e0, D, E, BE, False), _tile(GS1, carry, e0, D, E, BE, False)
            t_gw2, t_gs2 = _tile(GW2, carry, e0, D, E, BE, True), _tile(GS2, carry, e0, D, E, BE, True)
            gw1, gs1, gw2, gs2 = tl.load(t_gw1), tl.load(t_gs1), tl.load(t_gw2), tl.load(t_gs2)
            zk = _dot(k, w1, PREC)
            hk, ag = _act(zk, GELU), _act_grad(zk, GELU)
            d2w2 = _dot(d2, tl.trans(w2), PREC)
            gd1 = 2 * (g_sq * k_sq)[:, None] * d2w2 * ag - aM * _dot(k, gw1, PREC) - aS * _dot(k, gs1, PREC)
            ghk = 2 * (g_sq * d2_sq)[:, None] * hk + _dot(gout, tl.trans(w2), PREC)
            ghk -= _dot(d2 * aM, tl.trans(gw2), PREC) + _dot(d2 * aS, tl.trans(gs2), PREC)
            gzk = gd1 * d2w2 * _act_grad2(zk, GELU) + ghk * ag  # d1 = (delta_2 W_2^T) act'(z), h = act(z)
            gk += _dot(gzk, tl.trans(w1), PREC)
            new_gw1 = gam * gw1 + _dot(tl.trans(k), gzk, PREC)
            new_gw2 = gam * gw2 + _dot(tl.trans(gd1 * ag), d2, PREC) + _dot(tl.trans(hk), gout, PREC)
            if HAS_Q:  # y = [q +] act(q W_1) W_2
                zq = _dot(q, w1, PREC)
                gzq = _dot(gy, tl.trans(w2), PREC) * _act_grad(zq, GELU)
                gq += _dot(gzq, tl.trans(w1), PREC)
                new_gw1 += _dot(tl.trans(q), gzq, PREC)
                new_gw2 += _dot(tl.trans(_act(zq, GELU)), gy, PREC)
            ggam += tl.sum(w1 * gw1, axis=1) + tl.sum(w2 * gw2, axis=0)
            grho += tl.sum(s1 * gw1, axis=1) + tl.sum(s2 * gw2, axis=0)
            getp += tl.sum(s1 * gs1, axis=1) + tl.sum(s2 * gs2, axis=0)
            tl.store(t_gw1, new_gw1)
            tl.store(t_gw2, new_gw2)
            tl.store(t_gs1, rho * gw1 + etp * gs1)
            tl.store(t_gs2, rho * gw2 + etp * gs2)
        tl.store(GGAM + chunk, tl.sum(ggam, axis=0))
        tl.store(GRHO + chunk, tl.sum(grho, axis=0))
        tl.store(GETP + chunk, tl.sum(getp, axis=0))
        tl.store(GK + tok, gk.to(GK.dtype.element_ty))
        tl.store(GV + tok, (-gout).to(GV.dtype.element_ty))
        if HAS_Q:
            tl.store(GQ + tok, gq.to(GQ.dtype.element_ty))
        tl.debug_barrier()  # the next (earlier) chunk reads the carry this one wrote


def _launch_options(D: int, BE: int) -> dict:
    return {} if INTERPRETED else {"num_warps": 8 if D * BE >= 4096 else 4}


class _FusedChunks(torch.autograd.Function):
    """The full chunks of a call through the two kernels; inputs [B, H, ...], coefficients per chunk."""

    @staticmethod
    def forward(ctx, settings, q, k, v, gamma, rho, eta_prod, c_M, c_S, W1, W2, S1, S2):
        """y [B, H, T, D] (None without q) and the final (W1, W2, S1, S2)."""
        C, residual, gelu, max_norm = settings
        B, H, T, D = k.shape
        E, n, BH, dt = W1.shape[-1], T // C, B * H, W1.dtype
        save = any(ctx.needs_input_grad)
        slots = n + 1 if save else 2
        states = []
        for M in (W1, W2, S1, S2):
            buffer = M.new_empty(BH, slots, *M.shape[-2:], dtype=dt)
            buffer[:, 0] = M.reshape(BH, *M.shape[-2:])
            states.append(buffer)
        tokens = [None if t is None else t.reshape(BH, T, D).contiguous() for t in (q, k, v)]
        coefs = [c.reshape(BH, -1).to(dt).contiguous() for c in (gamma, rho, eta_prod, c_M, c_S)]
        y = None if q is None else torch.empty_like(tokens[0])
        BE = min(E, FORWARD_TILE)
        _forward_kernel[(BH,)](
            tokens[0] if q is not None else tokens[1], tokens[1], tokens[2], y if q is not None else tokens[1],
            *coefs, *states, n, T, 0.0 if max_norm is None else max_norm,
            D=D, E=E, C=C, BE=BE, HAS_Q=q is not None, RESIDUAL=residual, CLIP=max_norm is not None, GELU=gelu,
            SAVE=save, PREC="ieee" if k.dtype in (torch.float32, torch.float64) else "tf32",
            **_launch_options(D, BE),
        )  # fmt: skip
        last = n if save else n % 2
        final = [s[:, last].reshape(B, H, *s.shape[-2:]).clone() for s in states]
        if save:
            ctx.settings, ctx.heads, ctx.dtypes = settings, (B, H), (k.dtype, gamma.dtype, dt)
            ctx.save_for_backward(*tokens, *coefs, *states)
        return (None if y is None else y.view(B, H, T, D)), *final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, *g_final):
        """Gradients of every tensor input: the kernel walks the chunks back from the final state's gradient."""
        C, residual, gelu, max_norm = ctx.settings
        q, k, v, gamma, rho, eta_prod, c_M, c_S, *states = ctx.saved_tensors
        token_dtype, coef_dtype, state_dtype = ctx.dtypes
        (B, H), (BH, T, D) = ctx.heads, k.shape
        E, n = states[0].shape[-1], T // C
        carry = [
            torch.zeros(BH, *s.shape[-2:], dtype=state_dtype, device=k.device)
            if g is None
            else g.reshape(BH, *s.shape[-2:]).to(state_dtype).contiguous().clone()
            for g, s in zip(g_final, states, strict=True)
        ]
        gq, gk, gv = (torch.empty(BH, T, D, dtype=state_dtype, device=k.device) for _ in range(3))
        g_coefs = [torch.empty_like(c) for c in (gamma, rho, eta_prod, c_M, c_S)]
        gy = torch.zeros_like(gq) if gy is None or q is None else gy.reshape(BH, T, D).contiguous()
        BE = min(E, BACKWARD_TILE)
        _backward_kernel[(BH,)](
            k if q is None else q, k, v, gy, gamma, rho, eta_prod, c_M, c_S, *states, *carry,
            gq, gk, gv, g_coefs[3], g_coefs[4], *g_coefs[:3], n, T, 0.0 if max_norm is None else max_norm,
            D=D, E=E, C=C, BE=BE, HAS_Q=q is not None, RESIDUAL=residual, CLIP=max_norm is not None, GELU=gelu,
            PREC="ieee" if token_dtype in (torch.float32, torch.float64) else "tf32", **_launch_options(D, BE),
        )  # fmt: skip
        per_head = lambda t, dtype: t.view(B, H, *t.shape[1:]).to(dtype)  # noqa: E731  [B H, ..] -> [B, H, ..]
        g_tokens = [per_head(g, token_dtype) for g in (gq, gk, gv)]
        g_chunks = [per_head(g, coef_dtype) for g in g_coefs]
        g_chunks[3:] = [g.unflatten(2, (n, C)) for g in g_chunks[3:]]  # c_M, c_S: [B, H, T] -> [B, H, n, C]
        return (
            None,
            None if q is None else g_tokens[0],
            *g_tokens[1:],
            *g_chunks,
            *(per_head(c, state_dtype) for c in carry),
        )


def supported(k: torch.Tensor, weights: tuple[torch.Tensor, ...], rule: MemoryRule) -> bool:
    """Whether the kernels run this call: depth 2; CUDA (or CPU under the interpreter); power-of-two sizes >= 16."""
    on_device = k.is_cuda or (INTERPRETED and k.device.type == "cpu")
    power = lambda x: x >= 16 and x & (x - 1) == 0  # noqa: E731  tl.arange and tl.dot need powers of two >= 16
    sizes = (k.shape[-1], weights[0].shape[-1], rule.chunk_size) if len(weights) == 2 else (0,)
    dtypes = {W.dtype for W in weights} <= {torch.float32} or {W.dtype for W in weights} <= {torch.float64}
    return on_device and all(power(x) for x in sizes) and k.shape[-1] <= 128 and dtypes


def titans_memory_triton(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState,
    rule: MemoryRule,
    compile: bool = False,
    recompute: bool = False,
) -> tuple[torch.Tensor | None, MemoryState]:
    """``chunked.titans_memory`` through the fused kernels where ``supported``; the PyTorch op (with ``compile`` and
    ``recompute``) for the rest: other calls, and a last chunk shorter than ``rule.chunk_size``."""
    weights, momentum = state
    C = rule.chunk_size
    head = k.shape[2] // C * C
    if not head or not supported(k, weights, rule):
        return titans_memory(q, k, v, gates, state, rule, compile, recompute)
    coefs = chunk_coefficients(*(g[..., :head].unflatten(-1, (head // C, C)) for g in gates))  # [B, H, n(, C)]
    settings = (C, rule.residual, rule.activation == "gelu", rule.max_grad_norm)
    q_head = None if q is None else q[:, :, :head]
    y, *final = _FusedChunks.apply(settings, q_head, k[:, :, :head], v[:, :, :head], *coefs, *weights, *momentum)
    state = (tuple(final[:2]), tuple(final[2:]))
    if head == k.shape[2]:
        return y, state
    rest = slice(head, None)
    q_rest = None if q is None else q[:, :, rest]
    y_rest, state = titans_memory(
        q_rest, k[:, :, rest], v[:, :, rest], tuple(g[..., rest] for g in gates), state, rule, compile, recompute
    )
    return (None if q is None else torch.cat([y, y_rest], dim=2)), state
