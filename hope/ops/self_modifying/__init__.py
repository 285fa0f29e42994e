"""Self-modifying Titans op (Nested Learning §8): its two chunk-parallel loops.

``self_modifying_projections`` (the projection memories) and ``dgd_memory`` (the retrieval memory);
``hope.ops.common.self_modifying_titans`` runs one after the other, and holds the shared ``project`` and
``residual_mlp``. The naive references (per-token recurrence and literal chunk loops), which only tests and
benchmarks import, live in ``hope.ops.self_modifying.naive``.
"""

from hope.ops.self_modifying.chunked import dgd_memory, self_modifying_projections

__all__ = ["dgd_memory", "self_modifying_projections"]
