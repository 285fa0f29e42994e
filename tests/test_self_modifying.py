"""SelfModifyingTitans layer: shapes, naive == chunked (outputs and every parameter's gradient), exact streaming."""

import pytest
import torch
import torch.nn.functional as F

from hope.layers.self_modifying import SelfModifyingState, SelfModifyingTitans
from hope.ops.self_modifying import naive
from hope.tokenizer import Tokenizer

D_MODEL, H, C, CM = 16, 2, 3, 4


def make(seed=0, **kw):
    """A float64 layer with large inner steps and a visible retention, so that the inner loop matters."""
    torch.manual_seed(seed)
    kw = {"expansion": 2, "chunk_size": C, "memory_chunk_size": CM, "max_lr": 0.5, **kw}
    layer = SelfModifyingTitans(D_MODEL, H, **kw).double()
    with torch.no_grad():
        layer.gate_b[:, 1] = 1.0  # alpha ~ 0.73
        layer.gate_w.normal_(std=0.5)  # data-dependent gates from the start
    return layer


def tokens(T, seed=1, B=2):
    return torch.randn(B, T, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def stream(layer, x, splits):
    ys, state = [], None
    for a, b in zip([0, *splits], [*splits, x.shape[1]], strict=True):
        y, state = layer(x[:, a:b], state)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def flat_state(state: SelfModifyingState):
    return [t for field in state if field is not None for t in (field if isinstance(field, tuple) else (field,))]


@pytest.mark.parametrize("adaptive_q", [False, True])
def test_shapes(adaptive_q):
    layer = make(adaptive_q=adaptive_q)
    y, state = layer(tokens(10))
    N, D = (5 if adaptive_q else 4), D_MODEL // H
    assert y.shape == (2, 10, D_MODEL)
    assert state.projections[0].shape == (2, H, N, D, 2 * D)
    assert state.memory[1].shape == (2, H, 2 * D, D)
    assert state.pending_x.shape == (2, H, 10 % C, D)
    assert state.pending[0].shape == (2, H, 10 % CM, D)
    assert state.conv_cache.shape == (2, D_MODEL, 3)
    assert (layer.q_proj is None) == adaptive_q


@pytest.mark.parametrize("adaptive_q", [False, True])
def test_chunked_matches_naive_outputs_and_parameter_gradients(adaptive_q):
    """Gradients w.r.t. every outer parameter: initial memories, readouts, W_q, conv, output layers."""
    x = tokens(13)
    results = []
    for ops in ({}, {"projections_op": naive.self_modifying_projections, "memory_op": naive.dgd_memory}):
        layer = make(adaptive_q=adaptive_q, **ops)
        y, state = layer(x)
        loss = (y * tokens(13, seed=5)).sum() + sum(t.sum() for t in flat_state(state))
        names, params = zip(*layer.named_parameters(), strict=True)
        results.append((y.detach(), names, torch.autograd.grad(loss, params)))
    (y, names, grads), (y_ref, _, grads_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    assert {"conv.weight", "projections_W1", "memory_W2", "gate_w"} <= set(names)
    assert ("q_proj.weight" in names) != adaptive_q
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        assert g_ref.abs().sum() > 0, name
        err = ((g - g_ref).norm() / g_ref.norm()).item()
        assert err < 1e-10, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("splits", [[6], [5, 6, 11], list(range(1, 13))])
def test_streaming_equals_one_call_at_any_split(splits):
    """Partial chunks of both clocks are buffered, so splits inside chunks (and token-by-token) change nothing."""
    layer, x = make(), tokens(13)
    y, state = layer(x)
    y_s, state_s = stream(layer, x, splits)
    torch.testing.assert_close(y_s, y, rtol=1e-12, atol=1e-13)
    for a, b in zip(flat_state(state_s), flat_state(state), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_memory_changes_the_output_in_context():
    """Tokens after the first memory chunk read learned weights: different from a layer that cannot learn."""
    learning, frozen = make(), make(max_lr=0.0)
    with torch.no_grad():
        frozen.gate_b[:, 1] = 50.0  # alpha = 1: keep everything, learn nothing
    x = tokens(12)
    y, y_frozen = learning(x)[0], frozen(x)[0]
    torch.testing.assert_close(y[:, :CM], y_frozen[:, :CM], rtol=1e-12, atol=1e-13)
    assert not torch.allclose(y[:, CM:], y_frozen[:, CM:])


def test_state_detach_and_variants():
    layer = make(use_conv=False, output_norm=False, output_gate=False, activation="gelu")
    y, state = layer(tokens(7))
    assert state.conv_cache is None and torch.isfinite(y).all()
    assert all(not t.requires_grad for t in flat_state(state.detach()))
    assert any(t.requires_grad for t in flat_state(state))


def _growth_on_a_repeated_token(**kw):
    """max ||W|| / ||W(init)|| of M_memory after 2K copies of one token, with inits 3x the default scale."""
    torch.manual_seed(0)
    layer = SelfModifyingTitans(64, 1, chunk_size=16, memory_chunk_size=64, **kw)
    with torch.no_grad():
        for W in (layer.projections_W1, layer.projections_W2, layer.memory_W1, layer.memory_W2):
            W.mul_(3.0)
        x = F.rms_norm(torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0)), (64,)).expand(1, 2048, 64)
        _, state = layer(x)
    initial = (layer.memory_W1, layer.memory_W2)
    return max((W.norm() / W0.norm()).item() for W, W0 in zip(state.memory, initial, strict=True))


def test_gradient_clipping_keeps_a_repeated_token_finite():
    assert _growth_on_a_repeated_token() < 2
    assert not _growth_on_a_repeated_token(max_grad_norm=None) < 1e3  # nan or huge


@pytest.mark.slow
def test_compiled_chunk_steps_match_eager():
    """memory_compile: both loops through torch.compile give the eager outputs, state and gradients (float32)."""
    x = tokens(2 * CM + 3).float()
    results = []
    for compile in (False, True):
        layer = make(compile=compile).float()
        y, state = layer(x)
        loss = y.square().sum() + sum(t.sum() for t in flat_state(state))
        results.append((y, *flat_state(state), *torch.autograd.grad(loss, list(layer.parameters()))))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def _locale_like_stream(T, d):
    """Embeddings [1, T, d] of real tokens with long runs of near-repeats: glibc-locale-style ``<U0041>;<U0042>``
    lines, the text on which a trained HOPE model's memories diverged (README "HOPE", float32 split invariance)."""
    text = "\n".join(f"        <U{i:04X}>;<U{i + 1:04X}>" for i in range(0x20, 0x20 + T // 8))
    ids = torch.tensor(Tokenizer.default().encode(text)[:T])
    table = torch.randn(
        Tokenizer.default().vocab_size, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    return F.rms_norm(table, (d,))[ids][None]


def _trained_scale_layer(safe_step, dtype):
    """One head of width 32 as measured in the diverging head of a trained hope-debug: eta at max_lr, alpha ~ 1
    (gate biases 4 and 12), memories 4x their init scale."""
    torch.manual_seed(0)
    layer = SelfModifyingTitans(32, 1, chunk_size=16, memory_chunk_size=16, safe_step=safe_step)
    with torch.no_grad():
        for W in (layer.projections_W1, layer.projections_W2, layer.memory_W1, layer.memory_W2):
            W.mul_(4.0)
        layer.gate_b.copy_(torch.tensor([[4.0, 12.0]]))
    return layer.to(dtype)


def test_float32_stream_stays_with_float64_on_repeated_runs():
    """safe_step keeps float32 within 1e-3 of float64 over 1K tokens at two splits (so any two splits agree);
    without it the memory diverges in context and float32 drifts from float64 (the test's sensitivity)."""
    x = _locale_like_stream(1024, 32)
    windows = lambda w: list(range(w, x.shape[1], w))  # noqa: E731
    errors = {}
    for safe_step in (True, False):
        with torch.no_grad():
            reference = stream(_trained_scale_layer(safe_step, torch.float64), x, windows(256))[0]
            for w in (16, 256) if safe_step else (16,):
                y = stream(_trained_scale_layer(safe_step, torch.float32), x.float(), windows(w))[0]
                errors[safe_step, w] = (y.double() - reference).abs().max().item()
    assert max(errors[True, 16], errors[True, 256]) < 1e-3, errors
    assert errors[False, 16] > 3e-3, errors
