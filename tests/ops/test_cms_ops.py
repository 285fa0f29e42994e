"""hope.ops.cms: the chunk-by-chunk level learner against its literal token-by-token reference, in float64."""

import pytest
import torch

from hope.ops.cms import chunked, naive

B, T, D, H = 2, 23, 6, 5
F64 = torch.float64
LR = 0.01


def make_inputs(seed=0, with_state=False):
    """u [B, T, D], stored (gate, up, down), and an initial (delta, grad_sum) or None."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, dtype=F64, generator=g)  # noqa: E731
    weights = (randn(H, D) / D**0.5, randn(H, D) / D**0.5, randn(D, H) / H**0.5)
    state = tuple(tuple(0.1 * randn(B, *W.shape) for W in weights) for _ in range(2)) if with_state else (None, None)
    return randn(B, T, D), weights, *state


def leaves(inputs):
    u, weights, delta, grad_sum = inputs
    tensors = [u, *weights, *(delta or ()), *(grad_sum or ())]
    return [t.requires_grad_() for t in tensors]


def run(fn, inputs, position, period, lr=LR, max_step=None):
    """Outputs (y, delta, grad_sum flattened) and the gradients of a fixed random functional of them."""
    xs = leaves(inputs)
    y, delta, grad_sum = fn(*inputs, position, period, lr, max_step)
    outs = [y, *(delta or ()), *(grad_sum or ())]
    g = torch.Generator().manual_seed(9)
    loss = sum((o * torch.randn(o.shape, dtype=F64, generator=g)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, xs), (delta is None, grad_sum is None)


@pytest.mark.parametrize(
    "position, period, with_state",
    [(0, 4, False), (3, 4, True), (5, 1, False), (0, 30, True), (7, 8, True)],
)
def test_chunked_matches_naive(position, period, with_state):
    """Outputs, final (delta, grad_sum), and the gradients w.r.t. u, the stored weights and the initial state, which
    run through every in-context step (the meta-gradient)."""
    out, grads, nones = run(chunked.learn_level, make_inputs(with_state=with_state), position, period)
    out_ref, grads_ref, nones_ref = run(naive.learn_level, make_inputs(with_state=with_state), position, period)
    assert nones == nones_ref
    for a, b in zip([*out, *grads], [*out_ref, *grads_ref], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("position, period, with_state", [(0, 4, False), (3, 4, True)])
def test_capped_steps_match_naive(position, period, with_state):
    """With a cap that binds (a step of lr 10 is far above 2 % of the weights' norm), the same comparison."""
    inputs = lambda: make_inputs(with_state=with_state)  # noqa: E731
    out, grads, _ = run(chunked.learn_level, inputs(), position, period, lr=10.0, max_step=0.02)
    out_ref, grads_ref, _ = run(naive.learn_level, inputs(), position, period, lr=10.0, max_step=0.02)
    for a, b in zip([*out, *grads], [*out_ref, *grads_ref], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_cap_bounds_every_step_and_leaves_small_steps_alone():
    u, weights, _, _ = make_inputs()
    _, delta, _ = chunked.learn_level(u[:, :4], weights, None, None, 0, 4, 10.0, 0.02)  # one step, capped
    _, free, _ = chunked.learn_level(u[:, :4], weights, None, None, 0, 4, 10.0)
    for d, f, W in zip(delta, free, weights, strict=True):
        norms = d.flatten(1).norm(dim=1)  # per stream
        assert torch.all(norms <= 0.02 * W.norm() * (1 + 1e-12)) and torch.all(f.flatten(1).norm(dim=1) > norms)
        torch.testing.assert_close(d / norms[:, None, None], f / f.flatten(1).norm(dim=1)[:, None, None])  # direction
    _, small, _ = chunked.learn_level(u[:, :4], weights, None, None, 0, 4, 1e-4, 0.02)  # far under the cap
    _, small_free, _ = chunked.learn_level(u[:, :4], weights, None, None, 0, 4, 1e-4)
    for a, b in zip(small, small_free, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_steps_change_the_weights_and_no_grad_gives_the_same_values():
    u, weights, _, _ = make_inputs()
    y, delta, grad_sum = chunked.learn_level(u, weights, None, None, 0, 4, LR)
    assert delta is not None and grad_sum is not None  # 5 steps at 4, 8, .., 20; tokens 21-23 still summed
    y_frozen, _, _ = chunked.learn_level(u, weights, None, None, 0, 4, 0.0)
    torch.testing.assert_close(y[:, :4], y_frozen[:, :4], rtol=0, atol=0)  # the first chunk reads the stored weights
    assert not torch.allclose(y[:, 4:], y_frozen[:, 4:])
    with torch.no_grad():
        y_nograd, *_ = chunked.learn_level(u, weights, None, None, 0, 4, LR)
    torch.testing.assert_close(y_nograd, y, rtol=0, atol=0)
