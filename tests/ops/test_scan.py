import pytest
import torch

from hope.ops.scan import linear_scan, linear_scan_naive


@pytest.mark.parametrize("T", [1, 2, 5, 16, 37])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_x0", [False, True])
def test_scan_matches_loop(T, reverse, with_x0):
    g = torch.Generator().manual_seed(T)
    a = torch.rand(3, 2, T, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, 2, T, dtype=torch.float64, generator=g, requires_grad=True)
    x0 = torch.randn(3, 2, dtype=torch.float64, generator=g, requires_grad=True) if with_x0 else None
    inputs = (a, b) if x0 is None else (a, b, x0)
    out, ref = linear_scan(a, b, x0, reverse), linear_scan_naive(a, b, x0, reverse)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    grads, grads_ref = (torch.autograd.grad((y * w).sum(), inputs, materialize_grads=True) for y in (out, ref))
    for g_out, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g_out, g_ref, rtol=1e-12, atol=1e-14)


def test_scan_exact_with_zero_and_tiny_coefficients():
    a = torch.tensor([[0.5, 0.0, 1e-200, 2.0, 1e-200, 3.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=torch.float64)
    x0 = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b, x0), linear_scan_naive(a, b, x0), rtol=1e-15, atol=0)
    # products through a zero are exactly zero, and 1e-200 * 1e-200 underflows to 0 as in the loop (no division)
    prod = linear_scan(a, torch.zeros_like(a), x0)
    assert prod[0, 1] == 0 and prod[0, -1] == 0


def test_scan_is_a_recurrence():
    # fails if the scan ignored the coefficients or the order: x = [1, 2*1+1, 3*3+1] = [1, 3, 10]
    a = torch.tensor([5.0, 2.0, 3.0], dtype=torch.float64)
    b = torch.ones(3, dtype=torch.float64)
    assert linear_scan(a, b).tolist() == [1.0, 3.0, 10.0]
    assert linear_scan(a, b, reverse=True).tolist() == [5 * 3 + 1, 2 * 1 + 1, 1.0]
