"""``recompute`` (activation checkpointing of the chunk steps) changes no number: outputs and gradients of the
memory ops with it equal those without it, bit for bit, in float64."""

from functools import partial

import pytest
import torch

from hope.ops.common import self_modifying_titans
from hope.ops.self_modifying import chunked as self_modifying
from hope.ops.titans import chunked as titans
from tests.ops import test_self_modifying_ops as sm
from tests.ops import test_titans_ops as tt


def assert_identical(plain, recomputed):
    """(outputs, grads) pairs equal bit for bit."""
    for xs, ys in zip(plain, recomputed, strict=True):
        assert len(xs) == len(ys)
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize(("T", "C", "depth", "clip"), [(37, 8, 2, 1.0), (13, 4, 1, None), (16, 4, 3, 0.5)])
def test_titans_memory_recompute_changes_nothing(T, C, depth, clip):
    rule = dict(chunk_size=C, max_grad_norm=clip)
    plain = tt.outputs_and_grads(titans.titans_memory, tt.make_inputs(T, depth), **rule)
    recomputed = partial(titans.titans_memory, recompute=True)
    assert_identical(plain, tt.outputs_and_grads(recomputed, tt.make_inputs(T, depth), **rule))


@pytest.mark.parametrize(("T", "C", "Cm", "adaptive_q"), [(37, 8, 4, False), (16, 4, 8, True)])
def test_self_modifying_recompute_changes_nothing(T, C, Cm, adaptive_q):
    """Both loops (projection memories and M_memory) recomputed, a shorter last chunk included."""
    kw = dict(max_lr=sm.MAX_LR, chunk_size=C, memory_chunk_size=Cm, max_grad_norm=1.0)
    recomputed = partial(
        self_modifying_titans,
        projections_op=partial(self_modifying.self_modifying_projections, recompute=True),
        memory_op=partial(self_modifying.dgd_memory, recompute=True),
    )
    plain = sm.outputs_and_grads(sm.self_modifying_chunked, sm.make_inputs(T, adaptive_q), **kw)
    assert_identical(plain, sm.outputs_and_grads(recomputed, sm.make_inputs(T, adaptive_q), **kw))


def saved_numel(fn, inputs, **kw) -> int:
    """Elements autograd saves for backward during the forward of ``fn`` (what recompute is there to cut)."""
    total = [0]

    def pack(t):
        total[0] += t.numel()
        return t

    tt.leaves(inputs)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tt.call(fn, inputs, **kw)
    return total[0]


def test_recompute_saves_only_the_chunk_boundaries():
    """With recompute, backward keeps about the chunk inputs and boundary states: under a third of the plain op's."""
    rule = dict(chunk_size=8, max_grad_norm=1.0)
    plain = saved_numel(titans.titans_memory, tt.make_inputs(64, 2), **rule)
    recomputed = saved_numel(partial(titans.titans_memory, recompute=True), tt.make_inputs(64, 2), **rule)
    assert recomputed < plain / 3, (recomputed, plain)
