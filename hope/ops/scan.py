"""First-order linear recurrence x_t = a_t * x_{t-1} + b_t, as a parallel scan and as a loop.

The pair (a_t, b_t) is the affine map x -> a_t x + b_t. Composing two maps, first (a', b') then (a, b), gives
(a a', a b' + b), which is associative, so all prefixes can be formed in log2(T) rounds (Hillis & Steele, 1986):
in round r every position combines itself with the position 2^r earlier. That is O(T log T) work but only
log2(T) sequential steps, each a pair of elementwise products over the whole tensor, which is what we want for
short scans (a Titans chunk, T <= a few hundred) on wide batches. No division is ever taken, so tiny or zero
coefficients (a saturated momentum gate) stay exact, and autograd through the scan is again products and sums.

Both functions scan the last dimension; every other dimension is batch. ``linear_scan_naive`` is the loop it must
equal (``tests/ops/test_scan.py``).
"""

import torch
import torch.nn.functional as F

__all__ = ["linear_scan", "linear_scan_naive"]


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None = None, reverse: bool = False
) -> torch.Tensor:
    """All x_t of x_t = a_t x_{t-1} + b_t along the last dim, with x_{-1} = x0 (zero if None).

    a, b: [..., T]; x0: broadcastable to [...]. With ``reverse`` the recurrence runs from the end:
    x_t = a_t x_{t+1} + b_t with x_T = x0. Returns [..., T].
    """
    if reverse:
        return linear_scan(a.flip(-1), b.flip(-1), x0).flip(-1)
    T = a.shape[-1]
    offset = 1
    while offset < T:
        # compose each map with the one `offset` positions earlier; positions before 0 are the identity (1, 0)
        a_prev = F.pad(a[..., :-offset], (offset, 0), value=1.0)
        b_prev = F.pad(b[..., :-offset], (offset, 0), value=0.0)
        a, b = a * a_prev, a * b_prev + b
        offset *= 2
    # now a_t = prod_{s<=t} a_s and b_t = x_t started from zero, so x_t = a_t x0 + b_t
    return b if x0 is None else a * x0.unsqueeze(-1) + b


def linear_scan_naive(
    a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None = None, reverse: bool = False
) -> torch.Tensor:
    """Reference loop for :func:`linear_scan` (same arguments, same result)."""
    steps = range(a.shape[-1] - 1, -1, -1) if reverse else range(a.shape[-1])
    x = torch.zeros_like(a[..., 0]) if x0 is None else x0.expand_as(a[..., 0])
    xs = [None] * a.shape[-1]
    for t in steps:
        x = a[..., t] * x + b[..., t]
        xs[t] = x
    return torch.stack(xs, dim=-1)
