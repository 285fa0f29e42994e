"""Model-level speed and memory options of the memory ops change no number, in float64: ``memory_recompute``
(activation checkpointing of the chunk loops) gives the plain loops' outputs and gradients bit for bit, for the
Titans families and HOPE; ``memory_kernel: triton`` gives the PyTorch op's to round-off."""

import importlib

import pytest
import torch

from hope.config import ModelConfig
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


@pytest.mark.parametrize("family", ["titans-mac", "titans-lmm"])
def test_triton_memory_kernel_equals_the_pytorch_op(family):
    """``memory_kernel: triton`` (interpreted on CPU, see tests/ops/test_titans_triton.py) gives the PyTorch op's
    loss and gradients at sizes the kernels take (head dim 16, hidden 32, chunks of 16), MAC's write-only calls
    and a pending partial chunk included."""
    pytest.importorskip("triton")
    kernels = importlib.import_module("hope.ops.titans.triton")
    assert kernels.INTERPRETED or torch.cuda.is_available()  # the kernels run, not the fallback
    sizes = dict(n_embd=32, memory_chunk_size=16, segment_len=32)
    idx = tokens(45)
    plain = loss_and_grads(build(family, **sizes), idx)
    loss, grads = loss_and_grads(build(family, memory_kernel="triton", **sizes), idx)
    torch.testing.assert_close(loss, plain[0], rtol=1e-12, atol=0)
    for name, grad in plain[1].items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-9, atol=1e-12)


def test_memory_kernel_errors_name_the_fields():
    with pytest.raises(ValueError, match=r"memory_kernel='cuda' is unknown"):
        ModelConfig.from_preset("titans-lmm-debug", memory_kernel="cuda")
    with pytest.raises(ValueError, match=r"memory_kernel='fla' is the gated delta rule.*'memory_chunk_size': 16"):
        ModelConfig.from_preset("titans-lmm-debug", memory_kernel="fla", memory_linear=True, memory_momentum=False)
