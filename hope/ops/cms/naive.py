"""Literal reference for ``hope.ops.cms.chunked.learn_level``: token by token, gradients by autograd.

Each token reads the level's weights current at its arrival (stored + the stream's delta), its objective
||f(u_t) - u_t||^2 / d is differentiated by ``torch.autograd.grad`` with the graph kept (so the outer loss can
differentiate through the updates), and the level steps whenever the stream position reaches a multiple of
``period``. Only tests import this module.
"""

import torch
import torch.nn.functional as F

from hope.ops.common import level_step

__all__ = ["learn_level"]


def _swiglu(u, gate, up, down):
    return (F.silu(u @ gate.mT) * (u @ up.mT)) @ down.mT


def learn_level(u, weights, delta, grad_sum, position: int, period: int, lr: float, max_step=None):
    """Same arguments and results as ``hope.ops.cms.chunked.learn_level``."""
    outer = torch.is_grad_enabled()
    B = u.shape[0]
    ys = []
    for t in range(u.shape[1]):
        read = weights if delta is None else tuple(W + d for W, d in zip(weights, delta, strict=True))
        with torch.enable_grad():
            # per-stream weights, so that each stream's gradient is its own
            ws = tuple(W.expand(B, *W.shape[-2:]).clone() for W in read)
            ws = tuple(W if outer and W.requires_grad else W.detach().requires_grad_() for W in ws)
            u_t = u[:, t : t + 1]
            y = _swiglu(u_t, *ws)
            grads = torch.autograd.grad((y - u_t).pow(2).mean(-1).sum(), ws, create_graph=outer)
        ys.append(y if outer else y.detach())
        grad_sum = grads if grad_sum is None else tuple(s + g for s, g in zip(grad_sum, grads, strict=True))
        if (position + t + 1) % period == 0:
            step = level_step(grad_sum, lr, weights, max_step)
            delta = step if delta is None else tuple(d + s for d, s in zip(delta, step, strict=True))
            grad_sum = None
    return torch.cat(ys, dim=1), delta, grad_sum
