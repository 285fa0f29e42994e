"""The fused Triton kernels of the Titans memory (hope.ops.titans.triton) against the references: outputs, final
state and every gradient. On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1), in float64 and
float32 at small sizes; on a GPU they are compiled and also run at a preset's sizes, in float32 and under bf16
autocast. Skipped without triton."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from hope.ops.common import MemoryRule
from hope.ops.titans import chunked, memory_op, naive

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture(scope="module")
def kernels():
    """hope.ops.titans.triton: compiled on a GPU, interpreted on CPU (tests/conftest.py sets TRITON_INTERPRET=1)."""
    module = importlib.import_module("hope.ops.titans.triton")
    if not CUDA and not module.INTERPRETED:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (see tests/conftest.py)")
    return module


def make_inputs(T, D=16, E=32, B=1, H=2, dtype=torch.float64, seed=0):
    """Unit q, k; gates in (0, 1); depth-2 weights; every tensor a leaf that requires grad."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731  (the same draws in any dtype)
    rand = lambda *s: torch.rand(*s, dtype=torch.float64, generator=g)  # noqa: E731
    x = dict(
        q=F.normalize(randn(B, H, T, D), dim=-1),
        k=F.normalize(randn(B, H, T, D), dim=-1),
        v=randn(B, H, T, D),
        gates=(0.3 * rand(B, H, T), rand(B, H, T), 0.3 * rand(B, H, T)),
        weights=(randn(B, H, D, E) / D**0.5, randn(B, H, E, D) / E**0.5),
        momentum=(0.1 * randn(B, H, D, E), 0.1 * randn(B, H, E, D)),
    )
    return {
        name: tuple(t.to(DEVICE, dtype).requires_grad_() for t in value)
        if isinstance(value, tuple)
        else value.to(DEVICE, dtype).requires_grad_()
        for name, value in x.items()
    }


def run(fn, x, rule, with_q=True):
    """Outputs (y, final weights and momentum) and the gradients of a fixed random functional of them."""
    leaves = [x["q"], x["k"], x["v"], *x["gates"], *x["weights"], *x["momentum"]]
    y, (W, S) = fn(x["q"] if with_q else None, x["k"], x["v"], x["gates"], (x["weights"], x["momentum"]), rule)
    outs = ([y] if with_q else []) + [*W, *S]
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, dtype=torch.float64, generator=g).to(o.device, o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)  # q is unused when only written
    return [o.detach() for o in outs], [
        torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads, strict=True)
    ]


def assert_rel_close(actual, expected, rel):
    for a, e in zip(actual, expected, strict=True):
        err = ((a.double() - e.double()).norm() / e.double().norm().clamp_min(1e-300)).item()
        assert err < rel, f"relative error {err:.2e} for a tensor of shape {tuple(e.shape)}"


CASES = [  # T, chunk, residual, activation, clip, with q
    (48, 16, True, "silu", 0.5, True),  # three chunks, the clip active on most tokens
    (56, 16, True, "gelu", None, True),  # a shorter last chunk (the PyTorch op writes it)
    (32, 16, False, "silu", 0.5, False),  # write only (MAC's write), no residual
    (32, 16, True, "silu", 100.0, True),  # clip on, never reached
]


@pytest.mark.parametrize(("T", "C", "residual", "activation", "clip", "with_q"), CASES)
def test_kernels_match_the_chunked_op(kernels, T, C, residual, activation, clip, with_q):
    rule = MemoryRule(C, residual, activation, clip)
    dtype = torch.float64 if not CUDA else torch.float32
    out, grads = run(kernels.titans_memory_triton, make_inputs(T, dtype=dtype), rule, with_q)
    out_ref, grads_ref = run(chunked.titans_memory, make_inputs(T, dtype=dtype), rule, with_q)
    rel = 1e-10 if dtype == torch.float64 else 1e-4
    assert_rel_close(out, out_ref, rel)
    assert_rel_close(grads, grads_ref, rel)


def test_kernels_match_the_naive_reference(kernels):
    """The literal chunk loop of naive.py (per-token autograd gradients), float64 on CPU, float32 on a GPU."""
    rule = MemoryRule(16, True, "silu", 0.5)
    dtype = torch.float64 if not CUDA else torch.float32
    out, grads = run(kernels.titans_memory_triton, make_inputs(32, dtype=dtype), rule)
    out_ref, grads_ref = run(naive.titans_memory, make_inputs(32, dtype=dtype), rule)
    assert_rel_close(out, out_ref, 1e-10 if dtype == torch.float64 else 1e-4)
    assert_rel_close(grads, grads_ref, 1e-10 if dtype == torch.float64 else 1e-4)


def test_float32_kernels_match_float64(kernels):
    """float32 inputs and state (what a model trains in) against the float64 op: float32 round-off only."""
    rule = MemoryRule(16, True, "silu", 0.5)
    out, grads = run(kernels.titans_memory_triton, make_inputs(48, dtype=torch.float32), rule)
    out_ref, grads_ref = run(chunked.titans_memory, make_inputs(48, dtype=torch.float64), rule)
    assert_rel_close(out, out_ref, 1e-5)
    assert_rel_close(grads, grads_ref, 1e-5)


def test_unsupported_calls_take_the_pytorch_op(kernels):
    """Depth 3 and a head dim below 16 take the PyTorch op: the same numbers."""
    x = make_inputs(32, D=8, E=16)
    rule = MemoryRule(16, True, "silu", 0.5)
    assert not kernels.supported(x["k"], x["weights"], rule)
    assert not kernels.supported(x["k"], (*x["weights"], x["weights"][1].mT), rule)
    out, grads = run(kernels.titans_memory_triton, x, rule)
    out_ref, grads_ref = run(chunked.titans_memory, make_inputs(32, D=8, E=16), rule)
    assert_rel_close(out, out_ref, 1e-15)
    assert_rel_close(grads, grads_ref, 1e-15)


@pytest.mark.skipif(not CUDA, reason="the preset's sizes and bf16 autocast need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_at_a_presets_sizes_on_cuda(kernels, dtype):
    """titans-*-170m's memory (head dim 64, hidden 256, chunks of 64, clip 10) on 4 chunks, float32 inputs or bf16
    inputs (autocast), against the float64 PyTorch op."""
    rule = MemoryRule(64, True, "silu", 10.0)
    x = make_inputs(256, D=64, E=256, B=2, H=3, dtype=torch.float32)
    x_low = {**x, "q": x["q"].detach().to(dtype).requires_grad_(), "k": x["k"].detach().to(dtype).requires_grad_()}
    x_low["v"] = x["v"].detach().to(dtype).requires_grad_()
    out, grads = run(kernels.titans_memory_triton, x_low, rule)
    out_ref, grads_ref = run(chunked.titans_memory, make_inputs(256, D=64, E=256, B=2, H=3), rule)
    rel = 2e-3 if dtype == torch.float32 else 3e-2
    assert_rel_close(out, out_ref, rel)
    assert_rel_close(grads, grads_ref, rel)


def test_memory_op_chooses_the_kernel():
    assert memory_op("torch").func is chunked.titans_memory
    assert memory_op("triton", recompute=True).keywords == {"compile": False, "recompute": True}
    with pytest.raises(ValueError, match="memory kernel 'cuda' is unknown"):
        memory_op("cuda")
