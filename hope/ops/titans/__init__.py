"""Titans neural long-term memory op: ``titans_memory`` (chunk-parallel) and ``memory_op`` (the kernel choice).

The memory MLP ``memory_mlp`` lives in ``hope.ops.common``; the naive references (per-token recurrence and literal
chunk loop), which only tests and benchmarks import, in ``hope.ops.titans.naive``; the fused Triton kernels, which
need the optional ``triton``, in ``hope.ops.titans.triton``; the linear memory through flash-linear-attention's gated
delta rule (optional ``fla-core``) in ``hope.ops.titans.gated_delta``.
"""

from collections.abc import Callable
from functools import partial

from hope.ops.titans.chunked import titans_memory

__all__ = ["KERNELS", "memory_op", "titans_memory"]

KERNELS = ("torch", "triton", "fla")


def memory_op(kernel: str = "torch", compile: bool = False, recompute: bool = False) -> Callable:
    """The Titans memory op, called like ``titans_memory(q, k, v, gates, state, rule)``, of a ``memory_kernel``.

    ``torch``: the chunk-parallel PyTorch op (``compile`` and ``recompute`` as in ``titans_memory``). ``triton``: the
    fused chunk kernels where they run (CUDA, or ``TRITON_INTERPRET=1``) and that PyTorch op elsewhere. ``fla``: the
    linear memory without momentum, per token, through fla's gated delta rule on CUDA (``ModelConfig`` checks that
    the memory is that one), that PyTorch op elsewhere.
    """
    if kernel not in KERNELS:
        raise ValueError(f"memory kernel {kernel!r} is unknown; choose one of {KERNELS}")
    if kernel == "triton":
        from hope.ops.titans.triton import titans_memory_triton  # needs the optional triton

        return partial(titans_memory_triton, compile=compile, recompute=recompute)
    if kernel == "fla":
        from hope.ops.titans.gated_delta import titans_linear_memory_fla  # needs the optional fla-core

        return partial(titans_linear_memory_fla, compile=compile, recompute=recompute)
    return partial(titans_memory, compile=compile, recompute=recompute)
