"""Titans neural long-term memory op: ``titans_memory`` (chunk-parallel) and the memory MLP ``memory_mlp``.

The naive references (per-token recurrence and literal chunk loop) live in ``hope.ops.titans.naive``.
"""

from hope.ops.titans.chunked import titans_memory
from hope.ops.titans.naive import memory_mlp

__all__ = ["titans_memory", "memory_mlp"]
