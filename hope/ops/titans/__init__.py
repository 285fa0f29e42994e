"""Titans neural long-term memory op: ``titans_memory`` (chunk-parallel).

The memory MLP ``memory_mlp`` lives in ``hope.ops.common``; the naive references (per-token recurrence and literal
chunk loop), which only tests and benchmarks import, in ``hope.ops.titans.naive``.
"""

from hope.ops.titans.chunked import titans_memory

__all__ = ["titans_memory"]
