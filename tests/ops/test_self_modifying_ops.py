"""Chunk-parallel self-modifying Titans op against its literal references, in float64."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from hope.ops.common import project, residual_mlp, self_modifying_titans
from hope.ops.self_modifying import chunked, naive

B, H, D, E = 2, 2, 4, 8
F64 = torch.float64
MAX_LR = 0.5
# the two loops run one after the other, with the chunk-parallel ops or with the literal references
self_modifying_chunked = partial(
    self_modifying_titans, projections_op=chunked.self_modifying_projections, memory_op=chunked.dgd_memory
)
self_modifying_naive = partial(
    self_modifying_titans, projections_op=naive.self_modifying_projections, memory_op=naive.dgd_memory
)


def _gen(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, dtype=F64, generator=g)


def make_inputs(T, adaptive_q=False, seed=0):
    """Inputs of ``self_modifying_titans`` at scales where the inner loop stays bounded."""
    randn = _gen(seed)
    N = 5 if adaptive_q else 4
    return dict(
        x=randn(B, H, T, D),
        q=None if adaptive_q else F.normalize(randn(B, H, T, D), dim=-1),
        projections=(randn(B, H, N, D, E) / D**0.5, randn(B, H, N, E, D) / E**0.5),
        memory=(randn(B, H, D, E) / D**0.5, randn(B, H, E, D) / E**0.5),
        gate_w=0.5 * randn(H, 2, D),
        gate_b=torch.tensor([0.0, 1.0], dtype=F64).repeat(H, 1),  # eta ~ 0.25, alpha ~ 0.73: both matter
    )


def make_memory_inputs(T, seed=0):
    """Inputs of ``dgd_memory`` with gates drawn directly."""
    randn = _gen(seed)
    g = torch.Generator().manual_seed(seed + 1)
    return dict(
        q=F.normalize(randn(B, H, T, D), dim=-1),
        k=F.normalize(randn(B, H, T, D), dim=-1),
        v=randn(B, H, T, D),
        eta=MAX_LR * torch.rand(B, H, T, dtype=F64, generator=g),
        alpha=0.5 + 0.5 * torch.rand(B, H, T, dtype=F64, generator=g),
        W1=randn(B, H, D, E) / D**0.5,
        W2=randn(B, H, E, D) / E**0.5,
    )


def leaves(inputs):
    """Every tensor input (tuples flattened), made to require grad in place."""
    out = []
    for x in inputs.values():
        for t in x if isinstance(x, tuple) else (x,):
            if isinstance(t, torch.Tensor):
                out.append(t.requires_grad_())
    return tuple(out)


def flat(result):
    return tuple(t for r in result for t in (r if isinstance(r, tuple) else (r,)))


def outputs_and_grads(fn, inputs, **kw):
    """The flattened outputs and grads of a fixed random functional of them w.r.t. every input tensor."""
    xs = leaves(inputs)
    outs = flat(fn(**inputs, **kw))
    randn = _gen(123)
    loss = sum((o * randn(*o.shape)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, xs)


def assert_rel_close(actual, expected, rel=1e-10):
    for a, e in zip(actual, expected, strict=True):
        err = ((a - e).norm() / e.norm().clamp_min(1e-300)).item()
        assert err < rel, f"relative error {err:.2e} for tensor of shape {tuple(e.shape)}"


@pytest.mark.parametrize(
    "T, C, Cm, activation, adaptive_q",
    [
        (13, 3, 5, "silu", False),
        (13, 4, 4, "gelu", False),
        (16, 4, 8, "silu", True),  # T a multiple of both
        (5, 8, 8, "silu", False),  # one short chunk
        (11, 1, 3, "silu", True),
    ],
)
def test_chunked_matches_naive_chunk_loop(T, C, Cm, activation, adaptive_q):
    kw = dict(max_lr=MAX_LR, chunk_size=C, memory_chunk_size=Cm, activation=activation)
    out, grads = outputs_and_grads(self_modifying_chunked, make_inputs(T, adaptive_q), **kw)
    out_ref, grads_ref = outputs_and_grads(self_modifying_naive, make_inputs(T, adaptive_q), **kw)
    assert max(o.abs().max() for o in out) < 10  # a bounded inner loop, so the comparison means something
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)


@pytest.mark.parametrize("T, C", [(37, 8), (9, 4), (3, 1)])
def test_dgd_memory_chunked_matches_naive(T, C):
    out, grads = outputs_and_grads(chunked.dgd_memory, make_memory_inputs(T), chunk_size=C)
    out_ref, grads_ref = outputs_and_grads(naive.dgd_memory, make_memory_inputs(T), chunk_size=C)
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)


@pytest.mark.parametrize("adaptive_q", [False, True])
def test_chunk_size_one_is_the_per_token_recurrence(adaptive_q):
    out_ref, grads_ref = outputs_and_grads(
        naive.self_modifying_titans_recurrent, make_inputs(7, adaptive_q), max_lr=MAX_LR
    )
    for fn in (self_modifying_naive, self_modifying_chunked):
        kw = dict(max_lr=MAX_LR, chunk_size=1, memory_chunk_size=1)
        out, grads = outputs_and_grads(fn, make_inputs(7, adaptive_q), **kw)
        assert_rel_close(out, out_ref)
        assert_rel_close(grads, grads_ref)


def test_one_token_update_by_hand():
    """Eq. 88 for one token, written out: W1 <- (a I - e k^T k) W1 - e k^T d1, W2 <- a W2 - e h^T d2."""
    x = make_memory_inputs(1)
    y, (W1_out, W2_out) = chunked.dgd_memory(**x, chunk_size=1)
    k, v, W1, W2 = x["k"], x["v"], x["W1"], x["W2"]
    e, a = x["eta"][..., None], x["alpha"][..., None]
    M = lambda z: z + F.silu(z @ W1) @ W2  # noqa: E731
    torch.testing.assert_close(y, M(x["q"]), rtol=1e-13, atol=1e-13)
    z = k @ W1
    d2 = 2 * (M(k) - M(v))
    d1 = (d2 @ W2.mT) * torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))
    eye = torch.eye(D, dtype=F64)
    torch.testing.assert_close(W1_out, (a * eye - e * k.mT @ k) @ W1 - e * k.mT @ d1, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(W2_out, a * W2 - e * F.silu(z).mT @ d2, rtol=1e-12, atol=1e-13)


def test_gate_products():
    alpha = torch.rand(3, 6, dtype=F64)
    P = chunked.gate_products(alpha)
    a = [1.0, *alpha[1].tolist()]
    for i in range(7):
        for j in range(7):
            expected = math.prod(a[j + 1 : i + 1]) if j <= i else 0.0
            assert P[1, i, j].item() == pytest.approx(expected, rel=1e-14)


def test_gate_products_backward_equals_autograd_of_the_products():
    """The hand-written backward against autograd through the literal products, alpha = 0 included."""
    alpha = torch.rand(2, 3, 7, dtype=F64)
    alpha[0, 1, 2] = 0.0
    grad_P = torch.randn(2, 3, 8, 8, dtype=F64)

    def literal(alpha):
        a = torch.cat([torch.ones_like(alpha[..., :1]), alpha], dim=-1)
        rows = []
        for i in range(8):
            rows.append([a[..., j + 1 : i + 1].prod(-1) if j <= i else torch.zeros_like(a[..., 0]) for j in range(8)])
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    (expected,) = torch.autograd.grad(literal(alpha.requires_grad_()), alpha, grad_P)
    (actual,) = torch.autograd.grad(chunked.gate_products(alpha), alpha, grad_P)
    torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-14)
    assert actual[0, 1, 2] != 0  # d/d alpha at alpha = 0 is a product of the others, not 0 / 0
    assert torch.autograd.gradcheck(chunked.gate_products, (torch.rand(2, 5, dtype=F64, requires_grad=True),))


def test_vanishing_and_saturated_gates_stay_exact():
    """Gate products are never divided: alpha = 0 or 1e-300, alpha = 1 and eta = 0 stay finite and exact."""
    inputs, ref = make_memory_inputs(13), make_memory_inputs(13)
    for x in (inputs, ref):
        x["alpha"][..., 3] = 0.0
        x["alpha"][..., 5:9] = 1e-300
        x["alpha"][..., 10] = 1.0
        x["eta"][..., 11] = 0.0
    out, grads = outputs_and_grads(chunked.dgd_memory, inputs, chunk_size=4)
    out_ref, grads_ref = outputs_and_grads(naive.dgd_memory, ref, chunk_size=4)
    assert all(torch.isfinite(t).all() for t in (*out, *grads))
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)


@pytest.mark.parametrize("fn", [self_modifying_chunked, self_modifying_naive])
def test_streaming_halves_at_a_common_chunk_boundary(fn):
    """Chunks are relative to the call: a split at a multiple of both chunk sizes (here 12) changes nothing."""
    x = make_inputs(19)
    kw = dict(gate_w=x["gate_w"], gate_b=x["gate_b"], max_lr=MAX_LR, chunk_size=3, memory_chunk_size=4)
    y, P, M = fn(x["x"], x["q"], x["projections"], x["memory"], **kw)
    y1, P1, M1 = fn(x["x"][:, :, :12], x["q"][:, :, :12], x["projections"], x["memory"], **kw)
    y2, P2, M2 = fn(x["x"][:, :, 12:], x["q"][:, :, 12:], P1, M1, **kw)
    assert_rel_close((torch.cat([y1, y2], dim=2), *P2, *M2), (y, *P, *M), rel=1e-13)


def test_reads_use_the_chunk_start_weights():
    """y of a memory chunk depends on the keys of earlier chunks only, never on those of its own chunk."""
    x = make_memory_inputs(12)
    k = x["k"].requires_grad_()
    y, _ = chunked.dgd_memory(**x, chunk_size=4)
    dk = torch.autograd.grad(y[:, :, 4:8].sum(), k)[0]
    assert dk[:, :, :4].abs().sum() > 0
    assert dk[:, :, 4:].abs().sum() == 0


def test_projection_memories_learn_in_context():
    """The projections of a later chunk differ from those at the initial weights (the self-modification)."""
    x = make_inputs(12)
    (k, v, eta, alpha, _), (W1, W2) = chunked.self_modifying_projections(
        x["x"], *x["projections"], x["gate_w"], x["gate_b"], MAX_LR, chunk_size=4
    )
    k0, v0, eta0, alpha0, _ = project(*x["projections"], x["x"], x["gate_w"], x["gate_b"], MAX_LR)
    for a, b in ((k, k0), (v, v0), (eta, eta0), (alpha, alpha0)):
        torch.testing.assert_close(a[:, :, :4], b[:, :, :4], rtol=1e-13, atol=1e-15)
        assert not torch.allclose(a[:, :, 4:], b[:, :, 4:])


@pytest.mark.parametrize("T, C, Cm, adaptive_q", [(13, 3, 5, False), (16, 4, 8, True)])
def test_clipped_chunked_matches_naive_chunk_loop(T, C, Cm, adaptive_q):
    """Per-token inner gradient clipping: norms from |k| |d1| and |h| |d2| equal the literal clip of each gradient."""
    kw = dict(max_lr=MAX_LR, chunk_size=C, memory_chunk_size=Cm, max_grad_norm=0.3)
    out, grads = outputs_and_grads(self_modifying_chunked, make_inputs(T, adaptive_q), **kw)
    out_ref, grads_ref = outputs_and_grads(self_modifying_naive, make_inputs(T, adaptive_q), **kw)
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)
    unclipped, _ = outputs_and_grads(self_modifying_chunked, make_inputs(T, adaptive_q), **kw | {"max_grad_norm": None})
    assert (unclipped[0] - out[0]).norm() > 1e-3 * out[0].norm(), "max_grad_norm=0.3 should clip these inputs"


def test_clipped_dgd_memory_and_recurrence():
    kw = dict(chunk_size=4, max_grad_norm=0.5)
    out, grads = outputs_and_grads(chunked.dgd_memory, make_memory_inputs(13), **kw)
    out_ref, grads_ref = outputs_and_grads(naive.dgd_memory, make_memory_inputs(13), **kw)
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)
    ref = outputs_and_grads(naive.self_modifying_titans_recurrent, make_inputs(7), max_lr=MAX_LR, max_grad_norm=0.3)
    kw = dict(max_lr=MAX_LR, chunk_size=1, memory_chunk_size=1, max_grad_norm=0.3)
    for actual, expected in zip(outputs_and_grads(self_modifying_chunked, make_inputs(7), **kw), ref, strict=True):
        assert_rel_close(actual, expected)


def test_chunk_maps_batched_equal_the_per_chunk_solve():
    """g W1 - Psi (G K W1 + D1) from one batched inverse over all chunks equals each chunk's own triangular solve."""
    n, C = 3, 5
    randn = _gen(7)
    g = torch.Generator().manual_seed(8)
    k = F.normalize(randn(n, B, H, C, D), dim=-1)
    eta = MAX_LR * torch.rand(n, B, H, C, dtype=F64, generator=g)
    alpha = 0.5 + 0.5 * torch.rand(n, B, H, C, dtype=F64, generator=g)
    W1, D1 = randn(n, B, H, D, E), randn(n, B, H, C, E)
    Psi, G_n, g_n, er = chunked.chunk_maps(k, eta, alpha)
    for c in range(n):
        P = chunked.gate_products(alpha[c])
        G, S, r, g_c = P[..., :C, 0], P[..., :C, 1:], P[..., C, 1:], P[..., C, 0, None, None]
        A = eta[c, ..., :, None] * (k[c] @ k[c].mT) * S
        U = torch.linalg.solve_triangular(
            A, eta[c, ..., None] * (G[..., None] * (k[c] @ W1[c]) + D1[c]), upper=False, unitriangular=True
        )
        expected = g_c * W1[c] - (k[c] * r[..., None]).mT @ U
        actual = g_n[c] * W1[c] - Psi[c] @ (G_n[c] * (k[c] @ W1[c]) + D1[c])
        assert_rel_close([actual, g_n[c], er[c]], [expected, g_c, eta[c] * r], rel=1e-13)


# -- the inner-step guard (safe_step) ------------------------------------------------------------------------------


def scaled(inputs, factor=3.0):
    """Inputs with every memory ``factor`` times its scale: curvature grows as the square, the guard acts."""
    for name in ("projections", "memory", "W1", "W2"):
        if name in inputs:
            x = inputs[name]
            inputs[name] = tuple(W * factor for W in x) if isinstance(x, tuple) else x * factor
    return inputs


@pytest.mark.parametrize("T, C, Cm, adaptive_q, clip", [(13, 3, 5, False, None), (16, 4, 8, True, 2.0)])
def test_safe_step_chunked_matches_naive_chunk_loop(T, C, Cm, adaptive_q, clip):
    """The per-token guard (|J g|^2 by hand in chunked.py, by forward-mode autodiff in naive.py): same outputs and
    gradients, with and without the clip; and it acts on these inputs."""
    kw = dict(max_lr=MAX_LR, chunk_size=C, memory_chunk_size=Cm, max_grad_norm=clip, safe_step=True)
    out, grads = outputs_and_grads(self_modifying_chunked, scaled(make_inputs(T, adaptive_q)), **kw)
    out_ref, grads_ref = outputs_and_grads(self_modifying_naive, scaled(make_inputs(T, adaptive_q)), **kw)
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)
    unguarded, _ = outputs_and_grads(
        self_modifying_chunked, scaled(make_inputs(T, adaptive_q)), **kw | {"safe_step": False}
    )
    assert (unguarded[0] - out[0]).norm() > 1e-3 * out[0].norm(), "safe_step should act on memories 3x their scale"


def test_safe_step_dgd_memory_and_recurrence():
    out, grads = outputs_and_grads(chunked.dgd_memory, scaled(make_memory_inputs(13)), chunk_size=4, safe_step=True)
    out_ref, grads_ref = outputs_and_grads(
        naive.dgd_memory, scaled(make_memory_inputs(13)), chunk_size=4, safe_step=True
    )
    assert_rel_close(out, out_ref)
    assert_rel_close(grads, grads_ref)
    kw = dict(max_lr=MAX_LR, safe_step=True)
    ref = outputs_and_grads(naive.self_modifying_titans_recurrent, scaled(make_inputs(7)), **kw)
    actual = outputs_and_grads(self_modifying_chunked, scaled(make_inputs(7)), chunk_size=1, memory_chunk_size=1, **kw)
    for a, e in zip(actual, ref, strict=True):
        assert_rel_close(a, e)


def test_safe_step_is_exact_where_inactive():
    """Small steps never reach the bound: the guarded op returns the unguarded result bit for bit."""
    kw = dict(max_lr=1e-3, chunk_size=4, memory_chunk_size=4)
    guarded = flat(self_modifying_chunked(**make_inputs(12), **kw, safe_step=True))
    plain = flat(self_modifying_chunked(**make_inputs(12), **kw))
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain, strict=True))


@pytest.mark.parametrize("seed", range(3))
def test_safe_step_keeps_a_chunk_of_one_token_from_overshooting(seed):
    """The worst case the guard is built for: C copies of one token in a chunk, eta = max_lr = 1/(2C), alpha = 1,
    memories 3x their init scale. Unguarded, the C summed steps overshoot and the token's own loss grows (up to
    100x); guarded, the write lowers it for every memory."""
    C = 8
    x = scaled(make_memory_inputs(1, seed=seed))
    k, v = (t.expand(B, H, C, D) for t in (x["k"], F.normalize(x["v"], dim=-1)))
    eta, alpha = torch.full((B, H, C), 1 / (2 * C), dtype=F64), torch.ones(B, H, C, dtype=F64)
    vhat = residual_mlp(x["W1"], x["W2"], v[..., :1, :])  # the target, held at the chunk-start weights
    loss = lambda W1, W2: (residual_mlp(W1, W2, k[..., :1, :]) - vhat).pow(2).sum((-2, -1))  # noqa: E731
    before = loss(x["W1"], x["W2"])
    ratios = []
    for safe_step in (False, True):
        _, weights = chunked.dgd_memory(k, k, v, eta, alpha, x["W1"], x["W2"], C, safe_step=safe_step)
        ratios.append(loss(*weights) / before)
    assert ratios[0].max() > 2  # overshoot without the guard
    assert ratios[1].max() < 1  # descent with it
