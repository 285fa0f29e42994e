"""Model-level speed and memory options of the memory ops change no number: ``memory_recompute`` (activation
checkpointing of the chunk loops) gives the same outputs and gradients as the plain loops, bit for bit, in
float64, for the Titans families and HOPE."""

import pytest
import torch

from hope.loss import next_token_loss
from hope.model import HopeLM
from tests.test_hope_model import small_model
from tests.test_titans_models import build, tokens


def loss_and_grads(model: HopeLM, idx: torch.Tensor):
    logits, _ = model(idx[:, :-1])
    loss = next_token_loss(logits, idx[:, 1:])
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True)
    return loss.detach(), dict(zip(names, torch.autograd.grad(loss, params), strict=True))


def assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


@pytest.mark.parametrize("family", ["titans-mac", "titans-mag", "titans-lmm"])
def test_titans_recompute_changes_nothing(family):
    idx = tokens(22)
    assert_same(loss_and_grads(build(family), idx), loss_and_grads(build(family, memory_recompute=True), idx))


def test_hope_recompute_changes_nothing():
    idx = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(0))
    plain = loss_and_grads(small_model("hope"), idx)
    assert_same(plain, loss_and_grads(small_model("hope", memory_recompute=True), idx))
