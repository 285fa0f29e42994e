"""The attention module (hope.layers.attention): the written-out definition with a persistent prefix, streaming
through the KV cache at any split, the cache's window, RoPE's relative positions, in float64."""

import pytest
import torch

from hope.config import ModelConfig
from hope.layers.attention import CausalSelfAttention, KVCache
from hope.layers.rope import rope_at

F64 = torch.float64


def attention(window: int | None = None, output_proj: bool = True, backend: str = "auto") -> CausalSelfAttention:
    """A float64 two-head attention of width 16 (head dim 8)."""
    torch.manual_seed(0)
    config = ModelConfig(n_head=2, n_embd=16, max_seq_len=64, sliding_window=window, attn_backend=backend)
    return CausalSelfAttention(config, output_proj).double()


def stream(attn: CausalSelfAttention, x_BTC: torch.Tensor, splits: list[int], persistent=None):
    """x fed in pieces that carry the cache; the outputs concatenated and the last cache."""
    outputs, cache = [], None
    for a, b in zip([0, *splits], [*splits, x_BTC.shape[1]], strict=True):
        y, cache = attn(x_BTC[:, a:b], cache, persistent)
        outputs.append(y)
    return torch.cat(outputs, dim=1), cache


def test_attend_matches_written_out_reference():
    """Sequence keys are scored with RoPE at their positions; persistent keys with the un-rotated query; the mask
    is k_pos <= q_pos within the window; sdpa == naive."""
    torch.manual_seed(0)
    attn = attention(window=3, output_proj=False)
    persistent = torch.randn(2, 16, dtype=F64)
    q, k, v = (torch.randn(1, 2, 5, 8, dtype=F64) for _ in range(3))
    q_pos, k_pos = torch.arange(10, 15), torch.arange(10, 15)
    k_rot = rope_at(k, k_pos, attn.rope_base)
    out = attn.attend(q, q_pos, k_rot, v, k_pos, persistent).view(1, 5, 2, 8)
    attn.backend = "naive"
    torch.testing.assert_close(attn.attend(q, q_pos, k_rot, v, k_pos, persistent).view(1, 5, 2, 8), out)
    pk, pv = attn.project_kv(persistent[None])
    q_rot = rope_at(q, q_pos, attn.rope_base)
    for h in range(2):
        for t in range(5):
            keys = [s for s in range(5) if 0 <= t - s < 3]
            scores = [q[0, h, t] @ pk[0, h, j] for j in range(2)] + [q_rot[0, h, t] @ k_rot[0, h, s] for s in keys]
            probs = torch.softmax(torch.stack(scores) / 8**0.5, 0)
            values = torch.cat([pv[0, h], v[0, h, keys]])
            torch.testing.assert_close(out[0, t, h], probs @ values)


@pytest.mark.parametrize("window", [None, 1, 4])
@pytest.mark.parametrize("with_persistent", [False, True])
@pytest.mark.parametrize("backend", ["auto", "naive"])
def test_streaming_through_the_cache_equals_one_call(window, with_persistent, backend):
    """One call (the fused causal kernel when there is no prefix) == any split into calls that carry the cache
    (the masked kernel), and the cache keeps the last window - 1 keys (all of them without a window)."""
    attn = attention(window, backend=backend)
    persistent = torch.randn(3, 16, dtype=F64) if with_persistent else None
    x = torch.randn(2, 13, 16, dtype=F64)
    whole, cache = attn(x, None, persistent)
    for splits in ([5], [1, 2, 3, 9], list(range(1, 13))):
        pieces, streamed_cache = stream(attn, x, splits, persistent)
        torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-12)
        for a, b in zip(streamed_cache[:2], cache[:2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    kept = 13 if window is None else window - 1
    assert isinstance(cache, KVCache) and cache.keys.shape == (2, 2, kept, 8) and cache.position == 13


def test_cache_is_needed_for_streaming():
    """Sanity: without the cache the second piece sees neither the earlier tokens nor its true positions."""
    attn, x = attention(), torch.randn(1, 10, 16, dtype=F64)
    whole, _ = attn(x)
    assert not torch.allclose(attn(x[:, 6:])[0], whole[:, 6:])


def test_output_projection_is_optional():
    """Without ``proj`` the merged heads come out (the Titans blocks gate or project them themselves)."""
    x = torch.randn(1, 4, 16, dtype=F64)
    with_proj, without = attention(), attention(output_proj=False)
    assert without.proj is None and not any("proj" in name for name, _ in without.named_parameters())
    without.load_state_dict(with_proj.state_dict(), strict=False)
    torch.testing.assert_close(with_proj(x)[0], with_proj.proj(without(x)[0]), rtol=0, atol=0)


def test_rope_depends_only_on_relative_positions():
    """q . k after RoPE depends on t - s only, also 10^9 tokens into a stream (float64 angles)."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 3, 8, dtype=F64).unbind(0)
    pos = torch.arange(3)
    near = rope_at(q, pos, 1e4) @ rope_at(k, pos, 1e4).mT
    far = rope_at(q, pos + 10**9, 1e4) @ rope_at(k, pos + 10**9, 1e4).mT  # float64 angles: no loss far out
    torch.testing.assert_close(far, near, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_persistent", [False, True])
def test_windowed_call_equals_the_masked_path(with_persistent):
    """A cache-less call whose window cuts into it takes the O(T W) blocked kernel; it equals ``attend`` under the
    full mask (the masked path every streamed call takes), outputs and gradients."""
    attn = attention(window=4, output_proj=False)
    persistent = torch.randn(3, 16, dtype=F64, requires_grad=True) if with_persistent else None
    x = torch.randn(2, 11, 16, dtype=F64, requires_grad=True)
    assert attn._windowed(11)
    out, _ = attn(x, None, persistent)
    q, k, v = attn.project(x)
    positions = torch.arange(11)
    masked = attn.attend(q, positions, attn.rotate(k, positions), v, positions, persistent)
    torch.testing.assert_close(out, masked, rtol=1e-12, atol=1e-12)
    inputs = (x, persistent) if with_persistent else (x,)
    for a, b in zip(torch.autograd.grad(out.sum(), inputs), torch.autograd.grad(masked.sum(), inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
