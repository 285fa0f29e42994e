"""Titans' linear memory without momentum, per token, through flash-linear-attention's gated delta rule.

With ``memory_linear`` (M(x) = x W), no momentum (eta = 0), chunks of one token and no clip, Eqs. 12-14 are

    W_t = (1 - alpha_t) W_{t-1} - 2 theta_t k_t^T (k_t W_{t-1} - v_t)

(Titans App. C: Gated DeltaNet). fla's ``chunk_gated_delta_rule`` computes, per head, h_t = g_t h_{t-1} +
beta_t k_t (v'_t - g_t h_{t-1}^T k_t)^T, i.e. W_t = g_t (I - beta_t k_t^T k_t) W_{t-1} + beta_t k_t^T v'_t, in
chunk-parallel Triton kernels (forward and backward). The two are equal with

    g_t = 1 - alpha_t,   beta_t = 2 theta_t / (1 - alpha_t),   v'_t = (1 - alpha_t) v_t.

fla reads after the write (o_t = q_t W_t) and Titans before it (y_t = q_t W_{t-1}), so fla runs on tokens 0..T-2
with the queries shifted by one (its o_t is our y_{t+1}); y_0 = q_0 W_0 and the last token's write (which also
gives the returned momentum S_T = -theta_T grad_T) are computed here. ``tests/ops/test_titans_gated_delta.py``
checks the result against the per-token reference ``naive.titans_memory_recurrent``.
"""

import torch
from fla.ops.gated_delta_rule import chunk_gated_delta_rule

from hope.ops.common import Gates, MemoryRule, MemoryState
from hope.ops.titans.chunked import titans_memory

__all__ = ["titans_linear_memory_fla"]


def titans_linear_memory_fla(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Gates,
    state: MemoryState,
    rule: MemoryRule,
    compile: bool = False,
    recompute: bool = False,
    gated_delta_rule=chunk_gated_delta_rule,
) -> tuple[torch.Tensor | None, MemoryState]:
    """``titans_memory`` for a linear memory, eta = 0, chunks of 1, no clip (``ModelConfig.validate`` checks these),
    through ``gated_delta_rule`` (fla's kernel; tests pass fla's naive recurrence) on CUDA; the PyTorch op (with
    ``compile`` and ``recompute``) elsewhere, for a single token, and for write-only calls."""
    (theta, _, alpha), ((W,), _) = gates, state
    if not k.is_cuda and gated_delta_rule is chunk_gated_delta_rule or q is None or k.shape[2] < 2:
        return titans_memory(q, k, v, gates, state, rule, compile, recompute)
    assert len(state[0]) == 1 and not rule.residual and rule.chunk_size == 1 and rule.max_grad_norm is None
    decay = 1 - alpha
    fla_layout = lambda t: t[:, :, :-1].transpose(1, 2)  # noqa: E731  tokens 0..T-2, [B, H, T-1, ..] -> [B, T-1, H, ..]
    y_rest, W_last = gated_delta_rule(
        q=q[:, :, 1:].transpose(1, 2),  # fla's o_t = q_{t+1} W_t = y_{t+1}
        k=fla_layout(k),
        v=fla_layout(v * decay[..., None]),
        g=fla_layout(torch.log1p(-alpha)),
        beta=fla_layout(2 * theta / decay),
        scale=1.0,
        initial_state=W,
        output_final_state=True,
    )
    y = torch.cat([q[:, :, :1] @ W, y_rest.transpose(1, 2).to(q.dtype)], dim=2)  # y_0 = q_0 W_0
    k_T, v_T = k[:, :, -1:], v[:, :, -1:]  # the last token's write, Eqs. 12-14 with eta = 0
    S = -theta[..., -1, None, None] * 2 * k_T.mT @ (k_T @ W_last.to(W.dtype) - v_T)
    return y, ((decay[..., -1, None, None] * W_last.to(W.dtype) + S,), (S,))
