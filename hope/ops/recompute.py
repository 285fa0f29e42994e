"""Activation checkpointing for the chunk steps of the memory ops (``memory_recompute``).

A chunk loop of T / C steps keeps, for backward, every step's intermediates: the forward and hand-written backward
of the memory MLP over the chunk's tokens ([C, E] per layer, several of them) besides the chunk-start weights.
Wrapped by ``recomputed``, a step keeps only its inputs (the chunk-boundary weights and momentum, and the chunk's
tokens and gates) and runs again, under autograd, when backward reaches it: about one more forward of the loop, for
the memory of one chunk's intermediates instead of all of them. The recomputation repeats the same ops on the same
inputs, so the gradients are the same as without it (``tests/ops/test_recompute.py`` checks them bit for bit).
"""

import functools
from collections.abc import Callable

from torch.utils.checkpoint import checkpoint

__all__ = ["recomputed"]


def recomputed(step: Callable) -> Callable:
    """``step`` that saves only its inputs for backward and recomputes its intermediates there."""
    return functools.partial(checkpoint, step, use_reentrant=False)
