"""The SRWM op (hope.ops.srwm.chunked: hand-written backward, weights rebuilt in reverse) against its literal
reference (naive.py, autograd), in float64; and the reference against the paper's equations in column form."""

import pytest
import torch

from hope.ops.srwm import chunked, naive

B, H, D = 2, 3, 4
COLS = 3 * D + 4
F64 = torch.float64


def inputs(T, seed=0, dtype=F64):
    """x [B, H, T, D] and W [B, H, D, 3D+4] at the authors' init scale, both requiring grad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, T, D, dtype=dtype, generator=g)
    W = torch.randn(B, H, D, COLS, dtype=dtype, generator=g) / D**0.5
    return x.requires_grad_(), W.requires_grad_()


def outputs_and_grads(op, x, W, chunk_size, use=("y", "W")):
    """(y, final W, dL/dx, dL/dW) for a fixed random functional L of the outputs named in ``use``."""
    y, W_final = op(x, W, chunk_size)
    g = torch.Generator().manual_seed(123)
    loss = 0
    if "y" in use:
        loss = loss + (y * torch.randn(y.shape, dtype=F64, generator=g).to(y.dtype)).sum()
    if "W" in use:
        loss = loss + (W_final * torch.randn(W_final.shape, dtype=F64, generator=g).to(y.dtype)).sum()
    return (y.detach(), W_final.detach(), *torch.autograd.grad(loss, (x, W)))


@pytest.mark.parametrize(("T", "chunk_size"), [(13, 1), (13, 3), (12, 4), (5, 8)])
def test_chunked_matches_naive(T, chunk_size):
    """Outputs, final weights and gradients w.r.t. inputs and initial weights; chunk 1 is the exact recurrence,
    and a last chunk may be shorter (13 = 4 x 3 + 1) or the only one (5 < 8)."""
    x, W = inputs(T)
    for got, ref in zip(
        outputs_and_grads(chunked.srwm, x, W, chunk_size), outputs_and_grads(naive.srwm, x, W, chunk_size), strict=True
    ):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("use", [("y",), ("W",)])
def test_gradient_through_one_output_only(use):
    """The backward also runs when only y or only the final weights reach the loss (a None incoming gradient)."""
    x, W = inputs(7)
    for got, ref in zip(
        outputs_and_grads(chunked.srwm, x, W, 1, use), outputs_and_grads(naive.srwm, x, W, 1, use), strict=True
    ):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_reference_is_the_papers_equations():
    """naive.srwm with chunk 1 against Eqs. 2-4 written out in the paper's column form for one stream and head:
    W_t in R^{(3D+4) x D}, [y, k, q, beta] = W x, v = W softmax(q), vbar = W softmax(k),
    W += sigmoid(beta)_group * (v - vbar) softmax(k)^T, with beta's four rates for the y, k, q and beta rows."""
    x, W = inputs(9)
    y, W_final = naive.srwm(x, W, 1)
    b, h = 1, 2
    Wc = W[b, h].detach().T.clone()  # column form
    for t in range(9):
        out = Wc @ x[b, h, t].detach()
        y_t, k, q, beta = out[:D], out[D : 2 * D], out[2 * D : 3 * D], out[3 * D :]
        k, q, rate = torch.softmax(k, 0), torch.softmax(q, 0), torch.sigmoid(beta)
        v, v_bar = Wc @ q, Wc @ k
        rows = torch.cat([rate[0].repeat(D), rate[1].repeat(D), rate[2].repeat(D), rate[3].repeat(4)])
        Wc = Wc + torch.outer(rows * (v - v_bar), k)
        torch.testing.assert_close(y[b, h, t].detach(), y_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(W_final[b, h].detach().T, Wc, rtol=1e-12, atol=1e-12)


def test_chunks_are_an_approximation():
    """Chunk 4 reads stale weights, so it differs from the exact recurrence after the first chunk only."""
    x, W = inputs(12)
    y_exact, _ = naive.srwm(x, W, 1)
    y_chunk, _ = chunked.srwm(x, W, 4)
    torch.testing.assert_close(y_chunk[:, :, :1], y_exact[:, :, :1])  # the first token reads W_0 in both
    assert (y_chunk[:, :, 4:] - y_exact[:, :, 4:]).abs().max() > 1e-3


def test_float32_weights_rebuilt_backwards_stay_accurate():
    """Over 256 tokens the float32 op's outputs and gradients (weights rebuilt by undoing the updates) are within
    5e-5 of the float64 reference's, relative to their norms (measured: 1.2e-5 for dW_0, against 7e-6 when
    autograd stores every W in float32)."""
    x, W = inputs(256)
    ref = outputs_and_grads(naive.srwm, x, W, 1)
    x32, W32 = (t.detach().float().requires_grad_() for t in (x, W))
    for got, r in zip(outputs_and_grads(chunked.srwm, x32, W32, 1), ref, strict=True):
        assert (got.double() - r).norm() / r.norm() < 5e-5


def test_bad_arguments_are_clear():
    x, W = inputs(3)
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        chunked.srwm(x, W, 0)
