"""ContinuumMemory: forward, in-context learning against a per-token loop, update periods, consolidation."""

import pytest
import torch
import torch.nn.functional as F

from hope.layers.cms import CMSState, ContinuumMemory

D, HIDDEN, PERIODS, LRS = 8, 16, (2, 3), (0.1, 0.05)
F64 = torch.float64


def make(objective="teach", seed=0, **kw):
    torch.manual_seed(seed)
    return ContinuumMemory(D, HIDDEN, PERIODS, inner_lr=LRS, objective=objective, **kw).double()


def randn(*shape, seed=1):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def effective_weights(cms, state):
    """Per level, the (gate, up, down) a stream of ``state`` reads: stored weights plus its in-context change."""
    return [cms._weights(lv, d) for lv, d in enumerate(state.delta)]


def swiglu(v, gate, up, down):
    return (F.silu(v @ gate.mT) * (v @ up.mT)) @ down.mT


def per_token_reference(cms, x, teach):
    """Eq. 31 literally: token by token, each token's gradient at the current weights, summed per level, and
    applied when the number of tokens seen reaches a multiple of the level's period."""
    B, T, _ = x.shape
    weights = [[W.detach().expand(B, *W.shape).clone() for W in lv.weights()] for lv in cms.levels]
    sums = [[torch.zeros_like(W) for W in ws] for ws in weights]
    ys = []
    for t in range(T):
        ws = [[W.clone().requires_grad_() for W in lw] for lw in weights]
        h, objective = x[:, t : t + 1], 0.0
        for level, (gate, up, down) in zip(cms.levels, ws, strict=True):
            u = level.norm(h).detach()
            objective = objective + (swiglu(u, gate, up, down) - u).pow(2).mean(-1).sum()
            h = h + swiglu(level.norm(h), gate, up, down)
        ys.append(h.detach())
        if cms.objective == "teach":
            objective = (h * teach[:, t : t + 1]).sum()
        grads = torch.autograd.grad(objective, [W for lw in ws for W in lw])
        for lv, C in enumerate(PERIODS):
            sums[lv] = [s + g for s, g in zip(sums[lv], grads[3 * lv : 3 * lv + 3], strict=True)]
            if (t + 1) % C == 0:
                weights[lv] = [W - LRS[lv] * s for W, s in zip(weights[lv], sums[lv], strict=True)]
                sums[lv] = [torch.zeros_like(s) for s in sums[lv]]
    return torch.cat(ys, dim=1), weights


def test_forward_without_learning():
    cms, x = make(), randn(2, 5, D)
    y, state = cms(x)
    assert y.shape == x.shape and state is None
    h = x
    for level in cms.levels:
        h = h + level.mlp(level.norm(h))  # the chain of residual SwiGLUs, Eq. 30
    torch.testing.assert_close(y, h)
    y.sum().backward()
    assert all(p.grad is not None for p in cms.parameters())


@pytest.mark.parametrize("objective", ["teach", "reconstruction"])
def test_in_context_learning_equals_the_per_token_loop(objective):
    """Two calls split inside both periods (5 + 8 tokens) against the per-token reference on all 13."""
    cms, x, teach = make(objective), randn(2, 13, D), randn(2, 13, D, seed=2)
    y_ref, weights_ref = per_token_reference(cms, x, teach)
    y1, state = cms(x[:, :5], learn=True, teach=teach[:, :5])
    y2, state = cms(x[:, 5:], state, learn=True, teach=teach[:, 5:])
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_ref, rtol=1e-12, atol=1e-12)
    assert state.position == 13
    for ws, ws_ref in zip(effective_weights(cms, state), weights_ref, strict=True):
        for W, W_ref in zip(ws, ws_ref, strict=True):
            torch.testing.assert_close(W.detach(), W_ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y_ref[:, 6:], cms(x)[0][:, 6:])  # learning changed the outputs


def test_learning_in_every_forward_equals_the_per_token_loop():
    """learn_in_context: a plain call (no learn flag) learns, level by level, as the per-token reference does, and
    streams exactly (5 + 8 tokens); its outputs and new state backpropagate to every stored parameter."""
    cms, x = make("reconstruction", learn_in_context=True), randn(2, 13, D)
    y_ref, weights_ref = per_token_reference(cms, x, None)
    y, state = cms(x)
    y1, half = cms(x[:, :5])
    y2, state_split = cms(x[:, 5:], half)
    for actual in (y, torch.cat([y1, y2], dim=1)):
        torch.testing.assert_close(actual, y_ref, rtol=1e-12, atol=1e-12)
    for s in (state, state_split):
        for ws, ws_ref in zip(effective_weights(cms, s), weights_ref, strict=True):
            for W, W_ref in zip(ws, ws_ref, strict=True):
                torch.testing.assert_close(W.detach(), W_ref, rtol=1e-12, atol=1e-12)
    (y.sum() + sum(t.sum() for d in state.delta for t in d)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cms.parameters())


def test_learning_keeps_the_outer_graph():
    """y of a learning call still backpropagates to every stored parameter (the updates themselves do not)."""
    cms, x = make(), randn(2, 7, D)
    y, state = cms(x, learn=True, teach=randn(2, 7, D, seed=2))
    y.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cms.parameters())
    assert not any(t.requires_grad for d in state.delta for t in d)


def test_a_level_changes_only_every_period_tokens():
    cms, x = make("reconstruction"), randn(1, 13, D)
    state, changes = None, {0: [], 1: []}
    for t in range(13):
        before = effective_weights(cms, state or cms.init_state())
        _, state = cms(x[:, t : t + 1], state, learn=True)
        after = effective_weights(cms, state)
        for lv in changes:
            if not torch.equal(before[lv][0], after[lv][0]):
                changes[lv].append(state.position)
    assert changes == {0: [2, 4, 6, 8, 10, 12], 1: [3, 6, 9, 12]}


def test_learn_false_reads_the_state_and_leaves_it():
    cms, x = make("reconstruction"), randn(2, 6, D)
    _, state = cms(x, learn=True)
    y, same = cms(x, state)
    assert same is state
    y_learned, _ = cms(x, state, learn=True)
    torch.testing.assert_close(y[:, :2], y_learned[:, :2])  # until the fastest level's next update (period 2)
    assert not torch.allclose(y[:, 2:], y_learned[:, 2:])
    assert not torch.allclose(y, cms(x)[0])


def test_consolidate_writes_the_fast_weights_into_the_module():
    cms, x = make("reconstruction"), randn(1, 12, D)
    _, state = cms(x, learn=True)
    y_fast, _ = cms(x, state)
    expected = [[W.detach().clone() for W in ws] for ws in effective_weights(cms, state)]
    state = cms.consolidate(state)
    assert state.delta == (None, None) and state.position == 12
    torch.testing.assert_close(cms(x)[0], y_fast)
    for level, ws in zip(cms.levels, expected, strict=True):
        for W, W_exp in zip(level.weights(), ws, strict=True):
            torch.testing.assert_close(W.detach(), W_exp[0])


def test_reconstruction_learning_lowers_its_objective():
    cms = ContinuumMemory(D, HIDDEN, (4,), inner_lr=0.08, objective="reconstruction").double()  # 0.01 x d
    x = randn(1, 8, D)
    state, losses = None, []
    for _ in range(20):
        _, state = cms(x, state, learn=True)
        (gate, up, down) = effective_weights(cms, state)[0]
        u = cms.levels[0].norm(x)
        losses.append((swiglu(u, gate, up, down) - u).pow(2).sum().item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("learn_in_context", [False, True])
def test_max_step_caps_every_in_context_step(learn_in_context):
    """A step size far too large (inner lr 100) over 30 tokens, through the test-time (teach) and the in-forward
    (reconstruction) paths: with max_step the outputs stay finite and each level's change is at most its number of
    steps x max_step x the stored matrix's norm (each step's own bound, summed); without it the fast weights run
    away (beyond that bound, or to inf/NaN)."""
    objective = "reconstruction" if learn_in_context else "teach"
    x, teach = randn(2, 30, D), randn(2, 30, D, seed=2)
    outputs, changes = [], []
    for max_step in (0.01, None):
        torch.manual_seed(0)
        cms = ContinuumMemory(
            D, HIDDEN, PERIODS, 100.0, objective, learn_in_context=learn_in_context, max_step=max_step
        )
        y, state = cms.double()(x, learn=not learn_in_context, teach=None if learn_in_context else teach)
        outputs.append(y)
        changes.append([[d.flatten(1).norm(dim=1).max() for d in delta] for delta in state.delta])
    assert torch.isfinite(outputs[0]).all()
    for lv, (level, C) in enumerate(zip(cms.levels, PERIODS, strict=True)):
        for capped, free, W in zip(changes[0][lv], changes[1][lv], level.weights(), strict=True):
            bound = (30 // C) * 0.01 * W.norm()
            assert capped <= bound * (1 + 1e-9)
            assert not free <= bound  # larger, or NaN


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        ContinuumMemory(D, HIDDEN, (2, 0))
    with pytest.raises(ValueError):
        make()(randn(1, 3, D), learn=True)  # "teach" needs the teach signal
    cms = make()
    assert [len(ps) for ps in cms.level_parameters()] == [4, 4]  # norm gain + gate, up, down
    assert isinstance(cms.init_state(), CMSState)
