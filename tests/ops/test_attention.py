"""Attention kernels (hope.ops.attention) against the per-query reference of naive.py, in float64."""

import math

import pytest
import torch

from hope.ops.attention import (
    causal_attention,
    causal_mask,
    flash_attn_available,
    masked_attention,
    sliding_window_attention,
)
from hope.ops.attention.naive import causal_attention_naive, masked_attention_naive

F64 = torch.float64
WINDOWS = [None, 1, 3, 7, 50]


def qkv(T: int, S: int | None = None, D: int = 8, seed: int = 0, dtype=F64, device="cpu"):
    """Random q [2, 3, T, D] and k, v [2, 3, S, D]."""
    g = torch.Generator(device=device).manual_seed(seed)
    S = T if S is None else S
    return tuple(torch.randn(2, 3, n, D, dtype=dtype, device=device, generator=g) for n in (T, S, S))


def test_reference_sees_only_the_allowed_keys():
    """With all scores equal (q = 0) each query averages exactly the values it may see: the window's, up to t."""
    _, k, v = qkv(9)
    q = torch.zeros_like(k)
    for window in WINDOWS:
        out = causal_attention_naive(q, k, v, window)
        for t in range(9):
            first = 0 if window is None else max(0, t - window + 1)
            torch.testing.assert_close(out[..., t, :], v[..., first : t + 1, :].mean(dim=-2), rtol=0, atol=1e-15)
    torch.testing.assert_close(causal_attention_naive(*qkv(9), window=1), qkv(9)[2], rtol=0, atol=0)


def test_causal_mask():
    """The window table, the causal triangle, and the same pattern at stream positions over a cache."""
    positions = torch.arange(6)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(causal_mask(positions, positions, window=2), expected)
    assert torch.equal(causal_mask(positions, positions), torch.ones(6, 6, dtype=torch.bool).tril())
    # queries 10..11 of a stream over cached keys 8..11: the same pattern, shifted
    assert torch.equal(causal_mask(torch.arange(10, 12), torch.arange(8, 12), window=2), expected[4:, 2:])


@pytest.mark.parametrize("backend", ["sdpa", "naive", "auto"])
@pytest.mark.parametrize("window", WINDOWS)
def test_causal_attention_matches_reference(backend, window):
    """Every causal backend on CPU (SDPA, the explicit softmax, auto) equals the per-query loop."""
    q, k, v = qkv(19)
    reference = causal_attention_naive(q, k, v, window)
    torch.testing.assert_close(causal_attention(q, k, v, window, backend), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_masked_attention_matches_reference(backend):
    """Any mask (every query keeps at least one key), more keys than queries, a scale other than 1 / sqrt(D)."""
    q, k, v = qkv(7, S=12)
    allowed = torch.rand(7, 12, generator=torch.Generator().manual_seed(1)) < 0.4
    allowed[:, 3] = True  # e.g. a persistent token every query sees
    scale = 0.7 / math.sqrt(8)
    reference = masked_attention_naive(q, k, v, allowed, scale)
    torch.testing.assert_close(masked_attention(q, k, v, allowed, scale, backend), reference, rtol=1e-12, atol=1e-12)
    default = masked_attention_naive(q, k, v, allowed)
    torch.testing.assert_close(masked_attention(q, k, v, allowed, backend=backend), default, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("window", WINDOWS)
def test_masked_attention_with_the_causal_mask_is_causal_attention(backend, window):
    """The masked variant with the causal mask is causal attention (what a cache-less stream relies on)."""
    q, k, v = qkv(13)
    positions = torch.arange(13)
    masked = masked_attention(q, k, v, causal_mask(positions, positions, window), backend=backend)
    torch.testing.assert_close(masked, causal_attention_naive(q, k, v, window), rtol=1e-12, atol=1e-12)


def test_reference_keeps_the_input_dtype():
    """The reference computes in float64 but returns the inputs' dtype."""
    q, k, v = qkv(5, dtype=torch.float32)
    out = causal_attention_naive(q, k, v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, causal_attention(q, k, v, backend="sdpa"))


@pytest.mark.skipif(not flash_attn_available(), reason="flash-attn needs CUDA and the flash-attn package")
@pytest.mark.parametrize("window", [None, 64])
def test_flash_matches_reference(window):
    """flash-attn in bf16 against the float64 reference, with and without a window."""
    q, k, v = qkv(256, D=64, dtype=torch.bfloat16, device="cuda")
    reference = causal_attention_naive(q.double(), k.double(), v.double(), window)
    out = causal_attention(q, k, v, window, backend="flash")
    torch.testing.assert_close(out.double(), reference, rtol=2e-2, atol=2e-2)


SLIDING = [(19, 5, None, 0), (19, 5, 3, 2), (16, 4, None, 3), (7, 10, None, 1), (19, 1, 4, 2), (21, 7, 16, 4)]


@pytest.mark.parametrize(("T", "window", "block", "n_prefix"), SLIDING)
def test_sliding_window_attention_matches_reference(T, window, block, n_prefix):
    """The O(T W) blocked attention (any block size, T not a multiple of it, a window longer than T, a prefix every
    query sees) equals the per-query reference under the full mask, outputs and gradients, in float64."""
    q, k, v = (t.requires_grad_() for t in qkv(T))
    pk, pv = (t.requires_grad_() for t in qkv(n_prefix, seed=1)[1:])
    positions = torch.arange(T)
    allowed = torch.cat([torch.ones(T, n_prefix, dtype=torch.bool), causal_mask(positions, positions, window)], -1)
    keys, values = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
    reference = masked_attention_naive(q, keys, values, allowed, 0.3)
    prefix = (pk, pv) if n_prefix else (None, None)
    out = sliding_window_attention(q, k, v, window, *prefix, scale=0.3, block=block)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    inputs = (q, k, v, pk, pv) if n_prefix else (q, k, v)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(masked_attention(q, keys, values, allowed, 0.3), inputs, grad_out)
    for got, want in zip(torch.autograd.grad(out, inputs, grad_out), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
