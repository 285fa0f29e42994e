"""Self-modifying Titans op (Nested Learning §8): chunk-parallel ``self_modifying_titans`` and its two loops.

The naive references (per-token recurrence and literal chunk loops) live in ``hope.ops.self_modifying.naive``.
"""

from hope.ops.self_modifying.chunked import dgd_memory, self_modifying_projections, self_modifying_titans
from hope.ops.self_modifying.naive import PROJECTIONS, project, residual_mlp

__all__ = [
    "self_modifying_titans",
    "self_modifying_projections",
    "dgd_memory",
    "project",
    "residual_mlp",
    "PROJECTIONS",
]
