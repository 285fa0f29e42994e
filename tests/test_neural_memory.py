"""NeuralMemory layer: shapes, exact streaming, naive == chunked, ablation switches, gradients, read/write."""

import pytest
import torch

from hope.layers.neural_memory import NeuralMemory, NeuralMemoryState
from hope.ops.common import memory_mlp
from hope.ops.titans import naive

D_MODEL, H, DH, C = 32, 2, 8, 4


def make(seed=0, **kw):
    """A float64 layer with large inner steps and a visible weight decay, so that the inner loop matters."""
    torch.manual_seed(seed)
    mem = NeuralMemory(D_MODEL, H, DH, **{"chunk_size": C, "max_lr": 0.5, **kw}).double()
    with torch.no_grad():
        mem.gate_proj.bias.view(3, H)[2] = -2.0
    return mem


def tokens(T, seed=1, B=2):
    return torch.randn(B, T, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def stream(mem, x, splits):
    """Run x through mem in pieces cut at `splits`, carrying the state; returns (y, state)."""
    ys, state = [], None
    for a, b in zip([0, *splits], [*splits, x.shape[1]], strict=True):
        y, state = mem(x[:, a:b], state)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def assert_states_close(s1: NeuralMemoryState, s2: NeuralMemoryState):
    for a, b in zip(s1.weights + s1.momentum + s1.pending, s2.weights + s2.momentum + s2.pending, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_shapes():
    mem = make(depth=3, expansion=2)
    y, s = mem(tokens(13))
    assert y.shape == (2, 13, D_MODEL)
    assert [W.shape for W in s.weights] == [(2, H, DH, 2 * DH), (2, H, 2 * DH, 2 * DH), (2, H, 2 * DH, DH)]
    assert [S.shape for S in s.momentum] == [W.shape for W in s.weights]
    assert [c.shape for c in s.conv_cache] == [(2, H * DH, 3), (2, 2 * H * DH, 3)]
    assert s.pending[0].shape == (2, H, 1, DH) and s.pending[2].shape == (2, H, 1)  # 13 = 3 chunks + 1 pending


@pytest.mark.parametrize("splits", [[8], [5], [1, 2, 3, 9, 12], list(range(1, 13))])
def test_streaming_equals_one_call(splits):
    """Chunk boundary, mid-chunk and token-by-token splits all equal one call (conv cache + pending tokens)."""
    mem, x = make(), tokens(13)
    y, s = mem(x)
    y2, s2 = stream(mem, x, splits)
    torch.testing.assert_close(y2, y, rtol=1e-12, atol=1e-13)
    assert_states_close(s2, s)


def test_detached_state_streams_the_same_values():
    mem, x = make(), tokens(13)
    y, _ = mem(x)
    _, s = mem(x[:, :6])
    s = s.detach()
    assert not any(t.requires_grad for field in s if field is not None for t in field)
    torch.testing.assert_close(mem(x[:, 6:], s)[0], y[:, 6:], rtol=1e-12, atol=1e-13)


def test_streaming_without_conv():
    mem, x = make(use_conv=False), tokens(13)
    y, s = mem(x)
    assert s.conv_cache is None
    torch.testing.assert_close(stream(mem, x, [6])[0], y, rtol=1e-12, atol=1e-13)


def test_conv_cache_is_needed_for_streaming():
    """Sanity: dropping the conv history at the split changes the output, so the streaming test can fail."""
    mem, x = make(), tokens(12)
    y, _ = mem(x)
    _, s = mem(x[:, :8])
    y2, _ = mem(x[:, 8:], s._replace(conv_cache=tuple(torch.zeros_like(c) for c in s.conv_cache)))
    assert not torch.allclose(y2, y[:, 8:])


@pytest.mark.parametrize("kw", [{}, {"linear_memory": True}, {"depth": 3, "use_conv": False}])
def test_naive_and_chunked_layers_agree(kw):
    x = tokens(13)
    results = []
    for memory_op in (None, naive.titans_memory):
        mem = make(memory_op=memory_op, **kw)
        y, s = mem(x)
        loss = (y * torch.linspace(-1, 1, D_MODEL, dtype=torch.float64)).sum() + sum(W.sum() for W in s.weights)
        grads = torch.autograd.grad(loss, list(mem.parameters()))
        results.append((y, s, grads))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-12)
    assert_states_close(s1, s2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradients_reach_every_parameter():
    mem = make()
    y, s = mem(tokens(13))
    (y.square().sum() + sum(W.square().sum() for W in s.weights)).backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("switch, gate", [("use_momentum", 1), ("use_weight_decay", 2)])
def test_ablation_switch_equals_a_zero_gate(switch, gate):
    """use_momentum=False == eta gate forced to exactly 0 (bias -inf); likewise alpha for use_weight_decay."""
    x = tokens(13)
    ablated, full = make(**{switch: False}), make()
    y_ablated, _ = ablated(x)
    assert not torch.allclose(y_ablated, full(x)[0])
    with torch.no_grad():
        full.gate_proj.weight.view(3, H, D_MODEL)[gate] = 0.0
        full.gate_proj.bias.view(3, H)[gate] = -float("inf")  # sigmoid(-inf) = 0 exactly
    torch.testing.assert_close(full(x)[0], y_ablated, rtol=1e-13, atol=1e-14)


def test_no_momentum_keeps_only_the_last_chunks_step():
    """With eta = 0 the momentum after a chunk holds only that chunk's (scaled) gradients: S0 has no effect."""
    mem, x = make(use_momentum=False), tokens(8)
    s0 = mem.init_state(2)
    _, s = mem(x, s0)
    bumped = s0._replace(momentum=tuple(S + 1.0 for S in s0.momentum))
    _, s_bumped = mem(x, bumped)
    for a, b in zip(s.momentum, s_bumped.momentum, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


def test_linear_memory_is_linear():
    mem = make(linear_memory=True)
    assert [tuple(W.shape) for W in mem.memory_init] == [(H, DH, DH)]
    _, s = mem(tokens(8))
    q = torch.randn(2, H, 5, DH, dtype=torch.float64)
    torch.testing.assert_close(memory_mlp(s.weights, 2 * q, False), 2 * memory_mlp(s.weights, q, False))


def test_read_then_write_equals_forward_on_one_chunk():
    """MAC API: on one aligned chunk, forward == read (chunk-start weights) then write."""
    mem, x = make(), tokens(C)
    y, s = mem(x)
    s0 = mem.init_state(2)
    y_read, s_read = mem.read(x, s0)
    assert all(W1 is W0 for W1, W0 in zip(s_read.weights, s0.weights, strict=True))  # read never writes
    s_written = mem.write(x, s_read)
    torch.testing.assert_close(y_read, y, rtol=1e-13, atol=1e-14)
    assert_states_close(s_written, s)
    for a, b in zip(s_written.conv_cache, s.conv_cache, strict=True):
        torch.testing.assert_close(a, b)


def test_write_changes_what_is_read():
    mem, x = make(), tokens(2 * C)
    s0 = mem.init_state(2)
    y0, _ = mem.read(x, s0)
    y1, _ = mem.read(x, mem.write(x, s0))
    assert not torch.allclose(y0, y1)


def _weight_norm_after(mem, T=1024):
    with torch.no_grad():
        mem.gate_proj.bias.view(3, mem.n_head)[1] = 4.0  # eta ~ 0.98, the hardest momentum for stability
        _, s = mem(torch.randn(1, T, 64, generator=torch.Generator().manual_seed(0)))
    return max(W.norm() / W0.norm() for W, W0 in zip(s.weights, mem.memory_init, strict=True)).item()


def test_default_step_size_is_stable():
    """Default max_lr = 1/(2C) keeps a deep memory bounded over 1K random tokens; the per-token bound 0.5 does not."""
    torch.manual_seed(0)
    assert _weight_norm_after(NeuralMemory(64, 2, 32)) < 3
    torch.manual_seed(0)
    assert not _weight_norm_after(NeuralMemory(64, 2, 32, max_lr=0.5)) < 3  # grows far from init (or diverges)


def _weight_growth_on_a_repeated_token(**kw):
    """max_l ||W_l|| / ||W_l(init)|| after 1K copies of one token with eta ~ 0.98 (equal keys in every chunk)."""
    torch.manual_seed(0)
    mem = NeuralMemory(32, 1, 32, **kw)
    with torch.no_grad():
        mem.gate_proj.bias.view(3, 1)[1] = 4.0
        _, s = mem(torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(0)).expand(1, 1024, 32))
    return max(W.norm() / W0.norm() for W, W0 in zip(s.weights, mem.memory_init, strict=True)).item()


def test_safeguards_keep_a_repeated_token_bounded():
    """A run of one repeated token sent titans-mac-170m's memory to NaN (module docstring). Literal Eq. 13 without
    clipping diverges here too; EMA momentum keeps the weights near their init; clipping alone keeps them finite."""
    assert _weight_growth_on_a_repeated_token() < 2
    assert not _weight_growth_on_a_repeated_token(ema_momentum=False, max_grad_norm=None) < 1e6  # nan or huge
    assert 2 < _weight_growth_on_a_repeated_token(ema_momentum=False) < 1e3


@pytest.mark.slow
def test_compiled_chunk_step_matches_eager():
    """memory_compile: the torch.compile'd chunk step gives the eager outputs and gradients (float32)."""
    x = tokens(3 * C + 1).float()
    results = []
    for compile in (False, True):
        mem = make(compile=compile).float()
        y, s = mem(x)
        grads = torch.autograd.grad(y.square().sum() + sum(W.sum() for W in s.weights), list(mem.parameters()))
        results.append((y, *s.weights, *grads))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
