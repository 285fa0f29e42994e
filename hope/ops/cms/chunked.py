"""One CMS level learning in context on its layer-local objective (NL Eq. 31 with C^(l) in tokens), chunk by chunk,
differentiable end to end, so that the outer loss trains the level's stored weights through its in-context updates.

The level's SwiGLU branch f(u) = (silu(u Wg^T) * (u Wu^T)) Wd^T is an associative memory with key = value = its
normalised input u (``hope.layers.cms``' ``reconstruction`` objective): o_t = ||f(u_t) - u_t||^2 / d, u held as
the target. Every ``period`` tokens of the stream (counted across calls by ``position``) the level steps on the
gradients summed since its last step, each taken at the weights its token read, per stream:

    delta <- delta - lr * sum_{t in chunk} grad_W o_t(W_stored + delta)

Tokens read the weights current when they arrive, so a chunk's tokens read the weights its start had, and a token
never reads an update made with its own or a later token's input (causal). A chunk's C gradients come from one
batched forward and a hand-written backward (no ``autograd.grad``): with r = f(u) - u, a = u Wg^T, b = u Wu^T,
s = silu(a), m = s b,

    dWd = (2/d) r^T m,   dm = (2/d) r Wd,   dWg = (dm * b * silu'(a))^T u,   dWu = (dm * s)^T u,

all ordinary tensor ops, so autograd of the outer loss differentiates through the updates (the second-order
meta-gradient to the stored weights and to u) at about twice the backward of the level's own forward. Only the
loop over the level's chunks is sequential (its weights at chunk i depend on chunks < i through a nonlinear
gradient); levels are independent loops, so level l costs T / C^(l) steps, not T / min C.
"""

import torch
import torch.nn.functional as F

from hope.ops.common import ACTIVATIONS, level_step

__all__ = ["learn_level", "reconstruction_grads"]

Weights = tuple[torch.Tensor, ...]  # (gate [h, d], up [h, d], down [d, h]), shared or per stream [B, ., .]


def reconstruction_grads(u: torch.Tensor, gate, up, down) -> tuple[torch.Tensor, Weights]:
    """y = f(u) [B, C, d] and the per-stream gradients (gate, up, down) [B, ., .] of sum_t ||f(u_t) - u_t||^2 / d."""
    a, b = u @ gate.mT, u @ up.mT
    s = F.silu(a)
    m = s * b
    y = m @ down.mT
    r2 = (2 / u.shape[-1]) * (y - u)  # d objective / dy; u is the target (no derivative through it)
    dm = r2 @ down
    da = dm * b * ACTIVATIONS["silu"][1](a)
    return y, (da.mT @ u, (dm * s).mT @ u, r2.mT @ m)


def learn_level(
    u: torch.Tensor,
    weights: Weights,
    delta: Weights | None,
    grad_sum: Weights | None,
    position: int,
    period: int,
    lr: float,
    max_step: float | None = None,
) -> tuple[torch.Tensor, Weights | None, Weights | None]:
    """The level's branch output y [B, T, d] for its normalised input u [B, T, d], learning as it reads.

    ``weights``: the stored (gate, up, down); ``delta``: the stream's in-context change of them, [B, ., .] each,
    or None; ``grad_sum``: gradients summed since the last step, or None; ``position``: tokens of the stream
    before u; ``max_step``: the cap of ``hope.ops.common.level_step``. Returns y and the new (delta, grad_sum).
    """
    ys, start, T = [], 0, u.shape[1]
    while start < T:
        end = min(T, start + period - (position + start) % period)  # never across a step
        read = weights if delta is None else tuple(W + d for W, d in zip(weights, delta, strict=True))
        y, grads = reconstruction_grads(u[:, start:end], *read)
        ys.append(y)
        grad_sum = grads if grad_sum is None else tuple(s + g for s, g in zip(grad_sum, grads, strict=True))
        if (position + end) % period == 0:  # Eq. 31: step on the period's summed gradient
            step = level_step(grad_sum, lr, weights, max_step)
            delta, grad_sum = (step if delta is None else tuple(d + s for d, s in zip(delta, step, strict=True))), None
        start = end
    return torch.cat(ys, dim=1), delta, grad_sum
