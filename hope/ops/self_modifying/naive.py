"""Self-modifying Titans (Nested Learning, arXiv 2512.24695 §8, Eqs. 83-93): the model and literal references.

Everything is per batch element b and head h (leading dims [B, H, ...]); D is the head width, E the hidden width.

Memories. Each memory is the 2-layer residual MLP of Eq. 91, written for row vectors x [.., T, D]:
    M(x) = x + act(x W1) W2,    W1: [.., D, E] (input side),  W2: [.., E, D] (output side)
  (the paper's column form is (.) + W_{.,1} act(W_{.,2}(.)), so our W1 is its W_{.,2}.) Two groups of memories
  are updated on two clocks (§8.2):
  * the projection memories, stacked on a memory axis N in the order ``hope.ops.common.PROJECTIONS`` =
    (k, v, eta, alpha[, q]): W1_BHNDE, W2_BHNED, updated every ``chunk_size`` tokens;
  * the retrieval memory M_memory: W1_BHDE, W2_BHED, updated every ``memory_chunk_size`` tokens.

Projections (Eqs. 83-86), at the weights the current projection chunk started with:
    k_t = normalize(M_k(x_t)),  v_t = normalize(M_v(x_t)),  [q_t = normalize(M_q(x_t))]
    eta_t = max_lr * sigmoid(<M_eta(x_t), w_eta> + b_eta),  alpha_t = sigmoid(<M_alpha(x_t), w_alpha> + b_alpha)
  The paper gives eta_t = M_eta(x_t) and alpha_t = M_alpha(x_t) but needs scalars; every memory here maps D -> D
  (so that all of them share one residual form and one batched update), and a learned per-head readout (w, b)
  squashes the output to a scalar: a readout generalises the output's mean (w = 1/D), and its bias sets the
  gates at init. eta in (0, max_lr) is the step size; alpha in (0, 1) is the retention (alpha = 1 keeps all).
  The paper l2-normalises q and k only; we normalise v too. M_v's own target is M_v(v_t) = M_v(M_v(x_t)), so with
  an unnormalised v its gradient grows with ||v||, which grows with M_v's weights: a quadratic feedback that blew
  the weights up to 1e5 within 13 tokens at max_lr = 0.2 in our tests; with a unit v the update is linear in them.
  By default q_t = x_t W_q is computed outside (the "only non-adaptive projection", Eq. 83); with a fifth
  projection memory q is adaptive too, as in the paper's listing of Eq. 88.

Self-generated values (Eq. 87): vhat_{m,t} = M_m(v_t), each memory m at its own chunk-start weights.

Update (Eqs. 88-91): delta gradient descent with retention, for every memory m, with the shared k_t, eta_t, alpha_t:
    M_{m,t} = M_{m,t-1} (alpha_t I - eta_t k_t k_t^T) - eta_t grad L(M_{m,t'}; k_t, vhat_{m,t}),
    L(M; k, vhat) = ||M(k) - vhat||^2   (summed over features)
  * The gradient is taken at M_{m,t'}, the weights the chunk of t started with (§8.2, Eqs. 90-91), and treats
    vhat as the target, i.e. it is the partial derivative through M(k) only (the paper writes vhat as a separate
    argument of L). The outer loop still differentiates through vhat: nothing is detached.
  * The factor (alpha I - eta k k^T) multiplies the running weights M_{m,t-1}, as in the linear form Eq. 93.
    For an MLP it only type-checks on the weight whose input is k: the input-side W1 becomes
        W1_t = (alpha_t I - eta_t k_t^T k_t) W1_{t-1} - eta_t grad_W1,
    while the output-side W2, whose input is act(k W1), keeps the plain retention W2_t = alpha_t W2_{t-1} - eta_t
    grad_W2 (the same choice as kmccleary3301/nested_learning).
Inner gradient clipping (``max_grad_norm``, as in ``hope.ops.titans``): each token's (grad_W1, grad_W2) is scaled
  per memory by min(1, max_grad_norm / ||(grad_W1, grad_W2)||) before the step. The delta-rule factor is left
  alone: with unit k and eta <= 1 it cannot grow the weights. Off (None) in the references unless asked.
Inner-step guard (``safe_step``, our addition): each token's (clipped) gradient g is scaled by
  min(1, tau / (C eta_t)), tau = |g|^2 / (2 |J g|^2) the exact step of the token's own Gauss-Newton quadratic along
  g (J g = d/ds M_{W - s g}(k), here by forward-mode autodiff), C the chunk's length: C summed steps cannot overshoot
  even for C copies of one token. For a linear memory with unit keys tau = 1/2, which is max_lr = 1/(2C); with MLP
  memories tau shrinks as the weights grow, and without the guard a trained model's memories diverged in context.
Retrieval (Eq. 83): y_t = M_memory(q_t) at the weights the memory chunk of t started with. With chunk size 1 this
  is y_t = M_{memory,t-1}(q_t): read, then write, as in the paper.

The two groups decouple: k, v, eta, alpha depend only on the projection memories, and M_memory only on them, so
the projection loop runs first over the whole sequence, then the memory loop: ``hope.ops.common.self_modifying_titans``
composes either pair of loops. Chunks are counted from the start of each call (the last one may be shorter);
``hope.layers.self_modifying`` buffers partial chunks for streaming.

This module is the reference: per-token gradients come from ``torch.autograd.grad(create_graph=True)`` and the
(alpha I - eta k k^T) factors are explicit D x D matrices applied token by token. ``chunked.py`` must match it to
float64 round-off, outputs, final states and gradients.
"""

import torch

from hope.ops.common import Memory, clip_grads, project, residual_mlp, safe_step_scale

__all__ = ["dgd_memory", "self_modifying_projections", "self_modifying_titans_recurrent"]


def _inner_grads(W1, W2, k, vhat, activation):
    """grad_W ||M(k) - vhat||^2 for one token, vhat held fixed: k [.., 1, D], vhat [.., 1, D] (Eq. 88)."""
    outer = torch.is_grad_enabled()  # keep the graph of the gradient only when the caller wants outer gradients
    with torch.enable_grad():
        # differentiate w.r.t. fresh aliases of W, so that the path through vhat (computed from W itself) is excluded
        ws = tuple(W.clone() if outer and W.requires_grad else W.detach().requires_grad_() for W in (W1, W2))
        loss = (residual_mlp(*ws, k, activation) - vhat).pow(2).sum()
        return torch.autograd.grad(loss, ws, create_graph=outer)


def _dgd_step(W1, W2, G1, G2, k, eta, alpha):
    """One token of Eq. 88: k [.., 1, D], eta, alpha [..] broadcast over each weight matrix."""
    eta, alpha = eta[..., None, None], alpha[..., None, None]
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    W1 = (alpha * eye - eta * k.mT @ k) @ W1 - eta * G1  # (alpha I - eta k k^T) on the input side (row form)
    return W1, alpha * W2 - eta * G2


def _safe_step(W1, W2, G1, G2, k, eta, activation, chunk_size):
    """A token's clipped gradient times ``common.safe_step_scale``, with J g by forward-mode differentiation."""
    _, Jg = torch.func.jvp(lambda A, B: residual_mlp(A, B, k, activation), (W1, W2), (G1, G2))
    grad_sq = G1.pow(2).sum((-2, -1)) + G2.pow(2).sum((-2, -1))
    s = safe_step_scale(grad_sq, Jg.pow(2).sum((-2, -1)), eta, chunk_size)[..., None, None]
    return G1 * s, G2 * s


def _write_chunk(W1, W2, k, v, eta, alpha, activation, max_grad_norm=None, safe_step=False):
    """Write a chunk: gradients at the chunk-start (W1, W2), then the per-token Eq. 88 sweep. k, v [.., C, D]."""
    vhat = residual_mlp(W1, W2, v, activation)  # Eq. 87
    C = k.shape[-2]
    grads = []
    for t in range(C):
        k_t = k[..., t, None, :]
        G1, G2 = clip_grads(_inner_grads(W1, W2, k_t, vhat[..., t, None, :], activation), max_grad_norm)
        grads.append(_safe_step(W1, W2, G1, G2, k_t, eta[..., t], activation, C) if safe_step else (G1, G2))
    for t, (G1, G2) in enumerate(grads):
        W1, W2 = _dgd_step(W1, W2, G1, G2, k[..., t, None, :], eta[..., t], alpha[..., t])
    return W1, W2


def dgd_memory(
    q, k, v, eta, alpha, W1, W2, chunk_size: int, activation: str = "silu", max_grad_norm=None, safe_step=False
):
    """M_memory over a sequence, literally: each chunk reads y = M(q) and writes (k, v) at its start weights.

    q, k, v: [B, H, T, D]; eta, alpha: [B, H, T]; W1 [B, H, D, E], W2 [B, H, E, D].
    Returns y [B, H, T, D] and the final (W1, W2).
    """
    ys = []
    for s in range(0, k.shape[2], chunk_size):
        c = slice(s, s + chunk_size)
        ys.append(residual_mlp(W1, W2, q[:, :, c], activation))  # Eq. 83, before the chunk's writes
        chunk = (t[:, :, c] for t in (k, v, eta, alpha))
        W1, W2 = _write_chunk(W1, W2, *chunk, activation, max_grad_norm, safe_step)
    return torch.cat(ys, dim=2), (W1, W2)


def self_modifying_projections(
    x,
    W1,
    W2,
    gate_w,
    gate_b,
    max_lr: float,
    chunk_size: int,
    activation: str = "silu",
    max_grad_norm=None,
    safe_step=False,
):
    """The projection memories over a sequence, literally: each chunk projects x at its start weights, then every
    memory writes (k, M_m(v)) with the chunk's shared k, eta, alpha.

    x: [B, H, T, D]; W1 [B, H, N, D, E], W2 [B, H, N, E, D]; gates as in ``hope.ops.common.project``.
    Returns ((k, v, eta, alpha, q or None) over the whole sequence, final (W1, W2)).
    """
    outs = []
    for s in range(0, x.shape[2], chunk_size):
        k, v, eta, alpha, q = project(W1, W2, x[:, :, s : s + chunk_size], gate_w, gate_b, max_lr, activation)
        outs.append((k, v, eta, alpha, q))
        shared = (t[:, :, None] for t in (k, v, eta, alpha))  # one k, v, eta, alpha for all N memories
        W1, W2 = _write_chunk(W1, W2, *shared, activation, max_grad_norm, safe_step)
    cat = [None if parts[0] is None else torch.cat(parts, dim=2) for parts in zip(*outs, strict=True)]
    return tuple(cat), (W1, W2)


def self_modifying_titans_recurrent(
    x,
    q,
    projections: Memory,
    memory: Memory,
    gate_w,
    gate_b,
    max_lr: float,
    activation: str = "silu",
    max_grad_norm=None,
    safe_step=False,
):
    """Exact per-token recurrence of Eqs. 83-88, both loops interleaved token by token: project x_t and read y_t
    at the weights after token t-1, then write every memory. Equals ``hope.ops.common.self_modifying_titans`` with
    both chunk sizes 1, which checks that running the two loops one after the other is right."""
    ys = []
    for t in range(x.shape[2]):
        tok = slice(t, t + 1)
        k, v, eta, alpha, q_t = project(*projections, x[:, :, tok], gate_w, gate_b, max_lr, activation)
        ys.append(residual_mlp(*memory, q_t if q is None else q[:, :, tok], activation))
        shared = (t[:, :, None] for t in (k, v, eta, alpha))  # one k, v, eta, alpha for all N projection memories
        projections = _write_chunk(*projections, *shared, activation, max_grad_norm, safe_step)
        memory = _write_chunk(*memory, k, v, eta, alpha, activation, max_grad_norm, safe_step)
    return torch.cat(ys, dim=2), projections, memory
