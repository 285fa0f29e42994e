"""Chunk-parallel Titans memory op against its literal references, in float64."""

import pytest
import torch
import torch.nn.functional as F

from hope.ops.common import MemoryRule
from hope.ops.titans import chunked, naive

B, H, D = 2, 2, 8
F64 = torch.float64


def make_inputs(T, depth, seed=0, expansion=4):
    """Random op inputs at scales where the inner loop stays bounded (unit q/k, small steps)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, dtype=F64, generator=g)

    def rand(*shape, hi=1.0):
        return hi * torch.rand(*shape, dtype=F64, generator=g)

    dims = [D] + [expansion * D] * (depth - 1) + [D]
    weights = tuple(randn(B, H, i, o) / i**0.5 for i, o in zip(dims[:-1], dims[1:], strict=True))
    return dict(
        q=F.normalize(randn(B, H, T, D), dim=-1),
        k=F.normalize(randn(B, H, T, D), dim=-1),
        v=randn(B, H, T, D),
        theta=rand(B, H, T, hi=0.3),
        eta=rand(B, H, T),
        alpha=rand(B, H, T, hi=0.3),
        weights=weights,
        momentum=tuple(0.1 * randn(*W.shape) for W in weights),
    )


def leaves(inputs):
    """All input tensors as a flat tuple, made to require grad (the dict is updated in place)."""
    for name, x in inputs.items():
        inputs[name] = tuple(t.requires_grad_() for t in x) if isinstance(x, tuple) else x.requires_grad_()
    return tuple(t for x in inputs.values() for t in (x if isinstance(x, tuple) else (x,)))


def call(fn, x, **rule):
    """``fn`` on the named inputs of ``make_inputs``, with a ``MemoryRule`` of the keyword settings."""
    gates, state = (x["theta"], x["eta"], x["alpha"]), (x["weights"], x["momentum"])
    return fn(x["q"], x["k"], x["v"], gates, state, MemoryRule(**rule))


def outputs_and_grads(fn, inputs, **kw):
    """(y, final weights, final momentum) flattened, and grads of a fixed random functional w.r.t. every input."""
    xs = leaves(inputs)
    y, (W, S) = call(fn, inputs, **kw)
    outs = (y, *W, *S)
    g = torch.Generator().manual_seed(123)
    loss = sum((o * torch.randn(o.shape, dtype=F64, generator=g)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, xs)


def assert_rel_close(actual, expected, rel=1e-10):
    for a, e in zip(actual, expected, strict=True):
        err = ((a - e).norm() / e.norm().clamp_min(1e-300)).item()
        assert err < rel, f"relative error {err:.2e} for tensor of shape {tuple(e.shape)}"


@pytest.mark.parametrize(
    "T, C, depth, residual, activation",
    [
        (13, 4, 1, True, "silu"),
        (13, 4, 1, False, "silu"),
        (13, 4, 2, True, "silu"),
        (37, 8, 2, True, "silu"),
        (37, 8, 2, False, "gelu"),
        (13, 4, 3, True, "silu"),
        (16, 4, 2, True, "silu"),  # T a multiple of C
        (5, 8, 2, True, "silu"),  # one short chunk
    ],
)
def test_chunked_matches_naive_chunk_loop(T, C, depth, residual, activation):
    kw = dict(chunk_size=C, residual=residual, activation=activation)
    out, grads = outputs_and_grads(chunked.titans_memory, make_inputs(T, depth), **kw)
    out_ref, grads_ref = outputs_and_grads(naive.titans_memory, make_inputs(T, depth), **kw)
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)


@pytest.mark.parametrize("depth", [1, 2])
def test_chunk_size_one_is_the_per_token_recurrence(depth):
    out_ref, grads_ref = outputs_and_grads(naive.titans_memory_recurrent, make_inputs(9, depth))
    for fn in (naive.titans_memory, chunked.titans_memory):
        out, grads = outputs_and_grads(fn, make_inputs(9, depth), chunk_size=1)
        assert_rel_close(out, out_ref)
        assert_rel_close(grads, grads_ref)


def test_vanishing_and_saturated_gates_stay_exact():
    """No division by cumulative gate products: eta = 0 or 1e-300 and alpha = 1 must not produce nan/inf."""
    inputs = make_inputs(13, 2)
    inputs["eta"][..., 3] = 0.0
    inputs["eta"][..., 5:9] = 1e-300
    inputs["alpha"][..., 10] = 1.0
    ref = make_inputs(13, 2)
    ref["eta"], ref["alpha"] = inputs["eta"].clone(), inputs["alpha"].clone()
    out, grads = outputs_and_grads(chunked.titans_memory, inputs, chunk_size=4)
    out_ref, grads_ref = outputs_and_grads(naive.titans_memory, ref, chunk_size=4)
    assert all(torch.isfinite(t).all() for t in (*out, *grads))
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)


def test_linear_memory_is_the_momentum_delta_rule():
    """Depth 1, no residual, chunk 1: W <- (1-a) W + S, S <- eta S - theta * 2 k^T (k W - v), by hand."""
    x = make_inputs(7, 1)
    y, (W_out, S_out) = call(chunked.titans_memory, x, chunk_size=1, residual=False)
    (W,), (S,) = x["weights"], x["momentum"]
    for t in range(7):
        k, v = x["k"][:, :, t : t + 1], x["v"][:, :, t : t + 1]  # [B, H, 1, D]
        torch.testing.assert_close(y[:, :, t : t + 1], x["q"][:, :, t : t + 1] @ W, rtol=1e-12, atol=1e-12)
        grad = 2 * k.mT @ (k @ W - v)
        th, et, al = (x[n][..., t, None, None] for n in ("theta", "eta", "alpha"))
        S = et * S - th * grad
        W = (1 - al) * W + S
    torch.testing.assert_close(W_out[0], W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S_out[0], S, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [chunked.titans_memory, naive.titans_memory])
def test_streaming_halves_at_chunk_boundary(fn):
    x = make_inputs(20, 2)
    y, (W, S) = call(fn, x, chunk_size=4)
    first = {n: (t[:, :, :12] if not isinstance(t, tuple) else t) for n, t in x.items()}
    second = {n: t[:, :, 12:] for n, t in x.items() if not isinstance(t, tuple)}
    y1, (W1, S1) = call(fn, first, chunk_size=4)
    y2, (W2, S2) = call(fn, {**second, "weights": W1, "momentum": S1}, chunk_size=4)
    assert_rel_close((torch.cat([y1, y2], dim=2), *W2, *S2), (y, *W, *S), rel=1e-13)


def test_split_inside_a_chunk_starts_a_new_chunk():
    """Chunks are relative to the call: splitting at 6 with C = 4 gives chunks [0,4) [4,6) [6,10) [10,13)."""
    x = make_inputs(13, 2)
    y, _ = call(chunked.titans_memory, x, chunk_size=4)
    first = {n: (t[:, :, :6] if not isinstance(t, tuple) else t) for n, t in x.items()}
    second = {n: t[:, :, 6:] for n, t in x.items() if not isinstance(t, tuple)}
    y1, (W1, S1) = call(chunked.titans_memory, first, chunk_size=4)
    y2, _ = call(chunked.titans_memory, {**second, "weights": W1, "momentum": S1}, chunk_size=4)
    torch.testing.assert_close(y1, y[:, :, :6], rtol=1e-13, atol=0)  # up to the split nothing differs
    # tokens 6, 7 read at the weights after token 5 instead of after token 3: a different (documented) result
    assert not torch.allclose(y2[:, :, :2], y[:, :, 6:8])


def test_write_only_gives_the_same_state():
    x = make_inputs(13, 2)
    _, (W, S) = call(chunked.titans_memory, x, chunk_size=4)
    y_none, (W2, S2) = call(chunked.titans_memory, {**x, "q": None}, chunk_size=4)
    assert y_none is None
    assert_rel_close((*W2, *S2), (*W, *S), rel=1e-14)


def test_reads_use_the_chunk_start_weights():
    """y of chunk n depends on the keys of earlier chunks only, never on those of its own chunk."""
    x = make_inputs(12, 2)
    k = x["k"].requires_grad_()
    y, _ = call(chunked.titans_memory, x, chunk_size=4)
    dk = torch.autograd.grad(y[:, :, 4:8].sum(), k)[0]  # second chunk
    assert dk[:, :, :4].abs().sum() > 0
    assert dk[:, :, 4:].abs().sum() == 0


@pytest.mark.parametrize("gate", ["theta", "eta", "alpha"])
def test_every_gate_changes_the_result(gate):
    x = make_inputs(12, 2)
    y, (W, _) = call(chunked.titans_memory, x, chunk_size=4)
    x[gate] = x[gate].clone()
    x[gate][..., 2] *= 0.5
    y2, (W2, _) = call(chunked.titans_memory, x, chunk_size=4)
    torch.testing.assert_close(y2[:, :, :4], y[:, :, :4], rtol=0, atol=0)  # its own chunk reads older weights
    assert not torch.allclose(y2[:, :, 4:], y[:, :, 4:])
    assert not torch.allclose(W2[0], W[0])


@pytest.mark.parametrize("T, C, depth", [(13, 4, 1), (13, 4, 2), (37, 8, 3)])
def test_clipped_chunked_matches_naive_chunk_loop(T, C, depth):
    """Per-token inner gradient clipping: the chunked form (norms from |a_t| |delta_t|) equals the literal clip."""
    kw = dict(chunk_size=C, max_grad_norm=2.0)
    out, grads = outputs_and_grads(chunked.titans_memory, make_inputs(T, depth), **kw)
    out_ref, grads_ref = outputs_and_grads(naive.titans_memory, make_inputs(T, depth), **kw)
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)
    unclipped, _ = outputs_and_grads(chunked.titans_memory, make_inputs(T, depth), chunk_size=C)
    assert (unclipped[-1] - out[-1]).norm() > 1e-3 * out[-1].norm(), "max_grad_norm=2 should clip these inputs"


def test_clipped_chunk_size_one_is_the_clipped_recurrence():
    out_ref, grads_ref = outputs_and_grads(naive.titans_memory_recurrent, make_inputs(9, 2), max_grad_norm=2.0)
    out, grads = outputs_and_grads(chunked.titans_memory, make_inputs(9, 2), chunk_size=1, max_grad_norm=2.0)
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)


def test_clipping_bounds_the_step_of_each_token():
    """Linear memory, no momentum or decay, chunk 1: each write moves W by at most theta * max_grad_norm."""
    x = make_inputs(7, 1)
    x["v"] = 100 * x["v"]  # huge errors: every token is clipped
    x["eta"], x["alpha"] = torch.zeros_like(x["eta"]), torch.zeros_like(x["alpha"])
    x["momentum"] = tuple(torch.zeros_like(S) for S in x["momentum"])
    W = x["weights"][0]
    for t in range(7):
        tokens = {n: x[n][:, :, t : t + 1] for n in ("q", "k", "v", "theta", "eta", "alpha")}
        step = {**x, **tokens, "weights": (W,)}
        _, ((W_next,), _) = call(chunked.titans_memory, step, chunk_size=1, residual=False, max_grad_norm=0.5)
        moved = (W_next - W).flatten(-2).norm(dim=-1)  # [B, H]
        torch.testing.assert_close(moved, 0.5 * x["theta"][..., t], rtol=1e-12, atol=0)
        W = W_next
