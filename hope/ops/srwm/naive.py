"""The self-referential weight matrix (SRWM; Irie, Schlag, Csordás, Schmidhuber, ICML 2022), token by token.

Everything is per batch element b and head h (leading dims [B, H, ...]); D is the head width. The paper writes
column vectors, W_t in R^{(3D+4) x D}; we write rows (x W), so our W_BHDO [D, O] is its transpose, O = 3D + 4.
Per token t, with x_t the (already phi'd, see ``hope.layers.srwm``) input of the head:

    [y_t, k_t, q_t, beta_t] = x_t W_{t-1}                     (Eq. 2; y, k, q in R^D, beta in R^4)
    v_t = phi(q_t) W_{t-1},   vbar_t = phi(k_t) W_{t-1}        (Eq. 3: the matrix makes its own values)
    W_t = W_{t-1} + phi(k_t)^T (sigma(beta_t) * (v_t - vbar_t))  (Eq. 4: a delta rule on every row of itself)

phi = softmax over the head dim and sigma = sigmoid, as in the paper and its kernel (IDSIA/modern-srwm,
``self_ref_v0``). beta_t holds four learning rates, one per sub-matrix: sigma(beta_t)[0] scales the columns that
make y, [1] those of k, [2] those of q and [3] the four of beta (the kernel's ``shared_b_main[0..3]``). The output
y_t is read before the update, at W_{t-1}; W_0 is meta-learned.

Chunks (``chunk_size`` C > 1) are an approximation, like the Titans memory's chunked gradient: every token of a
chunk computes its [y, k, q, beta] and its (v, vbar) at the weights the chunk started with, and the chunk's C
updates are summed. C = 1 is the exact recurrence above. Chunks are counted from the start of the call; the last
one may be shorter (``hope.layers.srwm`` buffers an unfinished chunk for streaming).

This is the reference: plain tensor ops and autograd. ``chunked.py`` must match it to float64 round-off in outputs,
final weights and gradients.
"""

import torch

__all__ = ["srwm"]


def _read(x, W):
    """[y, phi(k), phi(q), sigma(beta)] of tokens x [.., D] at weights W [.., D, 3D+4] (Eq. 2)."""
    D = x.shape[-1]
    y, k, q, beta = torch.einsum("...d,...do->...o", x, W).split([D, D, D, 4], dim=-1)
    return y, torch.softmax(k, dim=-1), torch.softmax(q, dim=-1), torch.sigmoid(beta)


def _column_rates(rate, D):
    """The learning rate of each of the 3D + 4 columns: rate[0] for y's, [1] for k's, [2] for q's, [3] for beta's."""
    return torch.cat([rate[..., g, None].expand(*rate.shape[:-1], n) for g, n in enumerate((D, D, D, 4))], dim=-1)


def srwm(x, W, chunk_size: int = 1):
    """The SRWM over a sequence, literally: x [B, H, T, D], W [B, H, D, 3D+4] (W_0, or the state of a stream).

    Returns y [B, H, T, D] and the final weights [B, H, D, 3D+4].
    """
    D, T = x.shape[-1], x.shape[2]
    ys = []
    for start in range(0, T, chunk_size):
        W_start = W  # every token of the chunk reads these (the exact recurrence when chunk_size == 1)
        for t in range(start, min(start + chunk_size, T)):
            y, k, q, rate = _read(x[:, :, t], W_start)
            v = torch.einsum("bhd,bhdo->bho", q, W_start)  # Eq. 3
            v_bar = torch.einsum("bhd,bhdo->bho", k, W_start)
            W = W + k[..., :, None] * (_column_rates(rate, D) * (v - v_bar))[..., None, :]  # Eq. 4
            ys.append(y)
    return torch.stack(ys, dim=2), W
