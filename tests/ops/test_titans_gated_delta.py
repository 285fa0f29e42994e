"""flash-linear-attention's gated delta rule is Titans' linear memory without momentum, per token, without clip
(hope.ops.titans.gated_delta): outputs, final state and gradients equal the per-token reference. On CPU through
fla's own naive recurrence (its Triton kernels need a GPU), on a GPU through its chunk kernel. Skipped without fla."""

import pytest
import torch
import torch.nn.functional as F

from hope.ops.common import MemoryRule
from hope.ops.titans import naive

CUDA = torch.cuda.is_available()
RULE = MemoryRule(chunk_size=1, residual=False, max_grad_norm=None)


def make_inputs(T, D, B=2, H=2, seed=0):
    """Leaves q, k (unit), v, theta, alpha, W; eta and the momentum are zero (no momentum), so not leaves."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    rand = lambda *s: torch.rand(*s, dtype=torch.float64, generator=g)  # noqa: E731
    device = "cuda" if CUDA else "cpu"
    leaves = dict(
        q=F.normalize(randn(B, H, T, D), dim=-1),
        k=F.normalize(randn(B, H, T, D), dim=-1),
        v=randn(B, H, T, D),
        theta=0.5 * rand(B, H, T),
        alpha=0.3 * rand(B, H, T),
        W=randn(B, H, D, D) / D**0.5,
    )
    return {name: t.to(device, torch.float32 if CUDA else torch.float64).requires_grad_() for name, t in leaves.items()}


def run(fn, x):
    zeros = torch.zeros_like(x["theta"])
    gates, state = (x["theta"], zeros, x["alpha"]), ((x["W"],), (torch.zeros_like(x["W"]),))
    y, ((W,), (S,)) = fn(x["q"], x["k"], x["v"], gates, state, RULE)
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, dtype=torch.float64, generator=g).to(o)).sum() for o in (y, W, S))
    return [y, W, S], torch.autograd.grad(loss, list(x.values()))


@pytest.mark.slow  # importing fla takes 20-40 s on 2 CPU cores
def test_gated_delta_rule_is_the_linear_memory_without_momentum():
    pytest.importorskip("fla.ops.gated_delta_rule")
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    from hope.ops.titans.gated_delta import titans_linear_memory_fla

    fla_op = titans_linear_memory_fla
    if not CUDA:  # fla's kernels need a GPU; its naive recurrence is the same math in float32
        fla_op = lambda *a: titans_linear_memory_fla(*a, gated_delta_rule=naive_recurrent_gated_delta_rule)  # noqa: E731
    D = 64 if CUDA else 16
    out, grads = run(fla_op, make_inputs(37, D))
    out_ref, grads_ref = run(naive.titans_memory_recurrent, make_inputs(37, D))
    for a, b in zip([*out, *grads], [*out_ref, *grads_ref], strict=True):
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        assert err < 1e-5, err
