"""The SRWM (``naive.py`` has the math) as one autograd Function: a loop over chunks with a hand-written backward
that recomputes the weights backwards instead of storing them.

The self-reference makes the recurrence sequential: k_t, q_t and beta_t are read from W_{t-1} through a softmax
and a sigmoid, so no parallel form is exact; with ``chunk_size`` C = 1 this op is the exact per-token recurrence,
with C > 1 the chunk approximation of ``naive.py`` (every read of a chunk at its start weights). What it saves
is memory and per-op overhead: autograd would keep every W_t ([B, H, D, 3D+4] per token: 20 GB per layer for
srwm-170m at batch 8 x 4K tokens), and build a graph node per op and token. This op keeps, per token and head,
only (phi(k), phi(q), sigma(beta), v - vbar), 5D + 8 numbers, and in the backward walks the chunks in
reverse, undoing each update exactly as it was made, W_{c-1} = W_c - phi(K)^T (rates * (V - Vbar)), as the
IDSIA fast-weight kernels do. In float32 the rebuilt weights drift by about sqrt(T) roundings of |W|.

Per chunk, rows are tokens, X [C, D], W [D, O], O = 3D + 4:

    Z = X W;  Y, Kz, Qz, Bz = split(Z);  K = softmax(Kz), Q = softmax(Qz), S = sigmoid(Bz)      (Eq. 2)
    U = Q - K;  Delta = U W;  A = rates(S) * Delta;  W' = W + K^T A                                (Eqs. 3-4)

and the backward, given dW' and dY:

    dA = K dW',  dK = A dW'^T,  dDelta = rates(S) * dA,  dS = group sums of (dA * Delta)
    dU = dDelta W^T,  dK -= dU,  dQ = dU,  then the softmax and sigmoid backwards give dZ = [dY, dKz, dQz, dBz]
    dX = dZ W^T,  dW = dW' + [U; X]^T [dDelta; dZ]

Under CUDA autocast the op runs in float32 (a low-precision running W would lose the small updates).
"""

import torch
from torch.amp import custom_bwd, custom_fwd

__all__ = ["srwm"]


def _rate_columns(D: int, like: torch.Tensor) -> torch.Tensor:
    """R [4, 3D + 4] of zeros and ones: S R gives each column its learning rate (y's, k's, q's, then beta's four),
    and g R^T sums a column gradient back into the four rates."""
    group = torch.arange(4, device=like.device).repeat_interleave(torch.tensor([D, D, D, 4], device=like.device))
    return (torch.arange(4, device=like.device)[:, None] == group).to(like.dtype)


def _add_outer(W, a, b, alpha: float = 1.0):
    """W += alpha a^T b in place, for a [BH, C, D], b [BH, C, O]; an outer product (addcmul, 1.5x faster) when C = 1."""
    return W.addcmul_(a.mT, b, value=alpha) if a.shape[1] == 1 else W.baddbmm_(a.mT, b, alpha=alpha)


def _chunk_forward(X, W, R):
    """One chunk of the flattened [BH, ..] tensors: Y, the saved (KQ, S, Delta); W is updated in place."""
    D = X.shape[-1]
    Z = torch.bmm(X, W)
    KQ = torch.softmax(Z[..., D : 3 * D].unflatten(-1, (2, D)), dim=-1)  # [BH, C, 2, D]: phi(k), phi(q)
    K, Q = KQ.unbind(-2)
    S = torch.sigmoid(Z[..., 3 * D :])
    Delta = torch.bmm(Q - K, W)  # v - vbar (Eq. 3)
    _add_outer(W, K, (S @ R) * Delta)  # Eq. 4, the chunk's updates summed
    return Z[..., :D], KQ, S, Delta


def _chunk_backward(X, KQ, S, Delta, W, dW, dY, R):
    """One chunk in reverse: W (the chunk-end weights) is rebuilt in place to the chunk start, dW becomes the
    gradient w.r.t. it, in place; returns the gradient w.r.t. X."""
    K, Q = KQ.unbind(-2)
    rates = S @ R
    A = rates * Delta
    _add_outer(W, K, A, alpha=-1)  # undo Eq. 4
    dA = torch.bmm(K, dW)
    dK = torch.bmm(A, dW.mT)
    dDelta = rates * dA
    dS = (dA * Delta) @ R.mT
    U = Q - K
    dU = torch.bmm(dDelta, W.mT)
    g = torch.stack([dK - dU, dU], dim=-2)  # gradients w.r.t. phi(k), phi(q)
    dKQz = KQ * (g - (g * KQ).sum(-1, keepdim=True))  # softmax backward
    dZ = torch.cat([dY, dKQz.flatten(-2), dS * S * (1 - S)], dim=-1)
    dX = torch.bmm(dZ, W.mT)
    _add_outer(_add_outer(dW, U, dDelta), X, dZ)
    return dX


class _SRWM(torch.autograd.Function):
    """``srwm`` with the backward of the module docstring (once differentiable)."""

    @staticmethod
    @custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, W, chunk_size: int):
        B, H, T, D = x.shape
        n_cols = W.shape[-1]
        x = x.reshape(B * H, T, D)
        W = W.reshape(B * H, D, n_cols).clone()  # this op's own running weights, updated in place
        R = _rate_columns(D, x)
        y = x.new_empty(B * H, T, D)
        KQ, S, Delta = x.new_empty(B * H, T, 2, D), x.new_empty(B * H, T, 4), x.new_empty(B * H, T, n_cols)
        for start in range(0, T, chunk_size):
            c = slice(start, start + chunk_size)
            y[:, c], KQ[:, c], S[:, c], Delta[:, c] = _chunk_forward(x[:, c], W, R)
        ctx.chunk_size, ctx.shapes = chunk_size, ((B, H, T, D), (B, H, D, n_cols))
        ctx.save_for_backward(x, W, KQ, S, Delta, R)
        return y.view(B, H, T, D), W.view(B, H, D, n_cols)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @custom_bwd(device_type="cuda")
    def backward(ctx, dy, dW):
        x, W, KQ, S, Delta, R = ctx.saved_tensors
        (BH, T, D), n_cols = x.shape, W.shape[-1]
        W = W.clone()  # rebuilt backwards in place; the saved one is the caller's final state
        dW = W.new_zeros(BH, D, n_cols) if dW is None else dW.reshape(BH, D, n_cols).clone()
        dy = x.new_zeros(BH, T, D) if dy is None else dy.reshape(BH, T, D)
        dx = torch.empty_like(x)
        for start in reversed(range(0, T, ctx.chunk_size)):
            c = slice(start, start + ctx.chunk_size)
            dx[:, c] = _chunk_backward(x[:, c], KQ[:, c], S[:, c], Delta[:, c], W, dW, dy[:, c], R)
        return dx.view(ctx.shapes[0]), dW.view(ctx.shapes[1]), None


def srwm(x, W, chunk_size: int = 1):
    """The SRWM over a sequence; arguments and result exactly as ``naive.srwm``.

    x [B, H, T, D] (T >= 1), W [B, H, D, 3D+4]. Returns y [B, H, T, D] and the final weights.
    """
    if chunk_size < 1 or x.shape[2] < 1:
        raise ValueError(f"srwm needs chunk_size >= 1 and at least one token, got {chunk_size=}, T={x.shape[2]}")
    return _SRWM.apply(x, W, chunk_size)
