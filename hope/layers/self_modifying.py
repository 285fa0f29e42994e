"""Self-modifying Titans layer (Nested Learning §8, Eqs. 83-93) around ``hope.ops.self_modifying``.

x [B, T, d_model] -> y [B, T, d_model], with the state passed in and returned (never a buffer):

1. A causal depthwise convolution (kernel ``conv_kernel``, 4 in the paper's HOPE block) on x. It sits before the
   memories rather than after each projection (as in Titans): here the projections *are* memories, whose outputs
   depend on the chunk's weights, so a conv after them would have to live inside the recurrence. Before them, one
   conv gives every projection (k, v, eta, alpha, q) the same local context and keeps the op a function of x.
   The state carries the last ``conv_kernel - 1`` inputs, so the conv is exactly causal across calls.
2. Heads: the conv output is split into ``n_head`` heads of width D = d_model / n_head, and every head has its own
   memories. With n_head = 1 the memories are d_model -> d_model, as written in the paper (which has no heads);
   with more heads they are block-diagonal, H times cheaper in state and compute.
3. The op (see ``hope.ops.self_modifying.naive`` for the math and the choices made there): projection memories
   M_k, M_v, M_eta, M_alpha (and M_q if ``adaptive_q``) updated every ``chunk_size`` tokens; the retrieval memory
   M_memory updated every ``memory_chunk_size`` tokens; y_t = M_memory(q_t) with q_t = normalize(x_t W_q) (default)
   or normalize(M_q(x_t)). Every memory is a residual MLP D -> D of hidden width ``expansion * D`` whose initial
   weights are meta-learned parameters (init N(0, 1/fan_in)), broadcast over the batch.
   Gates: eta_t = max_lr * sigmoid(<M_eta(x_t), w_eta> + b_eta), alpha_t = sigmoid(<M_alpha(x_t), w_alpha> + b_alpha).
   The readouts w start at zero, so at init the gates are the constants set by the biases (b_eta = 0: eta =
   max_lr / 2; b_alpha = 8: alpha = 0.9997, a retention time of ~3K tokens) and the readouts learn from step one.
   ``max_lr=None`` means 1 / (2 * max(chunk sizes)): the C gradients of a chunk are all taken at its start and
   summed, and 1 / (2C) is the step that cannot overshoot even for C equal unit keys (``NeuralMemory``'s rule).
   These values are our choices; the paper gives none. As in ``NeuralMemory``, each token's inner gradient is
   clipped per memory to ``max_grad_norm`` (default 10): with memory weights 3x their init scale (which the outer
   loop can learn), a run of one repeated token drove M_memory to NaN within 2K tokens without it.
   ``safe_step`` (on in the hope presets) also caps each token's step at what its own loss can take
   (``hope.ops.common.safe_step_scale``): max_lr = 1/(2C) is that cap only for a linear memory with unit keys.
   Without it a trained hope-debug's memories in one head diverged on ~2K tokens of real text (inner loss x100,
   every gradient clipped, weights x20), and float32 rounding grew into logit differences of order 1 (README).
4. Output (as ``NeuralMemory``): per-head RMSNorm, times SiLU(x W_gate), heads merged, output projection.

Chunks are global across calls: the state keeps the inputs of the unfinished projection chunk and the (q, k, v,
eta, alpha) of the unfinished memory chunk; until a chunk is complete its tokens read the weights it started
with. So one call equals any split of it into calls (token-by-token generation included).
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hope.layers.memory_io import causal_conv, detach_field, gated_output, split_heads, zero_conv_cache
from hope.ops.common import project, residual_mlp
from hope.ops.self_modifying import dgd_memory, self_modifying_projections

__all__ = ["SelfModifyingTitans", "SelfModifyingState"]


class SelfModifyingState(NamedTuple):
    """Recurrent state of :class:`SelfModifyingTitans`; every tensor has the batch as its first dim."""

    projections: tuple[torch.Tensor, torch.Tensor]
    """(W1 [B, H, N, D, E], W2 [B, H, N, E, D]) of the projection memories at the start of their current chunk"""
    memory: tuple[torch.Tensor, torch.Tensor]
    """(W1 [B, H, D, E], W2 [B, H, E, D]) of M_memory at the start of its current chunk"""
    conv_cache: torch.Tensor | None
    """last conv_kernel - 1 inputs [B, d_model, K-1]; None without conv"""
    pending_x: torch.Tensor
    """conv'd inputs [B, H, P, D] of the P < chunk_size tokens of the unfinished projection chunk"""
    pending: tuple[torch.Tensor, ...]
    """(q, k, v [B, H, P', D], eta, alpha [B, H, P']) of the P' < memory_chunk_size tokens not yet written"""

    def detach(self) -> "SelfModifyingState":
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return SelfModifyingState(*(detach_field(field) for field in self))


def _cat(parts, dim):
    """torch.cat that returns a lone part as is (one copy fewer in the forward and the backward)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


class SelfModifyingTitans(nn.Module):
    """Self-modifying Titans; see the module docstring for the math and the choices made.

    Args:
        d_model: model width (input and output features); must be divisible by n_head.
        n_head: number of heads H; each has its own memories of width D = d_model / n_head.
        expansion: hidden width of every memory MLP is expansion * D.
        chunk_size: tokens per update of the projection memories (M_k, M_v, M_eta, M_alpha[, M_q]).
        memory_chunk_size: tokens per update of the retrieval memory M_memory.
        conv_kernel: width of the causal depthwise convolution on the input.
        use_conv: apply that convolution.
        adaptive_q: q from a self-modifying memory M_q instead of the static projection x W_q.
        activation: hidden activation of the memory MLPs, "silu" or "gelu".
        max_lr: eta_t = max_lr * sigmoid(.); None: 1 / (2 * max(chunk_size, memory_chunk_size)).
        max_grad_norm: clip each token's inner gradient, per memory, to this norm (None: no clipping).
        safe_step: cap each token's inner step so that a chunk cannot overshoot (``hope.ops.common.safe_step_scale``).
        output_norm: per-head RMSNorm of the retrieved values.
        output_gate: multiply by SiLU(x W_gate) before the output projection.
        projections_op: the projection memories' loop, called like
            ``hope.ops.self_modifying.self_modifying_projections`` (without ``compile``); None: that chunk-parallel op.
        memory_op: M_memory's loop, called like ``hope.ops.self_modifying.dgd_memory`` (without ``compile``); None: that
            chunk-parallel op. Tests pass the literal references of ``hope.ops.self_modifying.naive``.
        compile: run each chunk step of the default ops through torch.compile (see hope.ops.self_modifying.chunked).
        recompute: keep only chunk-boundary states for backward and recompute each chunk step there
            (hope.ops.recompute).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        expansion: int = 1,
        chunk_size: int = 64,
        memory_chunk_size: int = 64,
        conv_kernel: int = 4,
        use_conv: bool = True,
        adaptive_q: bool = False,
        activation: str = "silu",
        max_lr: float | None = None,
        max_grad_norm: float | None = 10.0,
        safe_step: bool = False,
        output_norm: bool = True,
        output_gate: bool = True,
        projections_op: Callable | None = None,
        memory_op: Callable | None = None,
        compile: bool = False,
        recompute: bool = False,
    ):
        super().__init__()
        injected = projections_op is not None or memory_op is not None
        if d_model % n_head or ((compile or recompute) and injected):
            raise ValueError(
                f"need d_model % n_head == 0 and compile only for the default ops, got {n_head=}, {compile=}"
            )
        D = d_model // n_head
        E = expansion * D
        N = 5 if adaptive_q else 4
        self.n_head, self.head_dim = n_head, D
        self.chunk_size, self.memory_chunk_size = chunk_size, memory_chunk_size
        self.adaptive_q, self.activation = adaptive_q, activation
        self.max_lr = 1 / (2 * max(chunk_size, memory_chunk_size)) if max_lr is None else max_lr
        self.max_grad_norm, self.safe_step = max_grad_norm, safe_step
        self.projections_op = (
            partial(self_modifying_projections, compile=compile, recompute=recompute)
            if projections_op is None
            else projections_op
        )
        self.memory_op = partial(dgd_memory, compile=compile, recompute=recompute) if memory_op is None else memory_op

        self.conv = nn.Conv1d(d_model, d_model, conv_kernel, groups=d_model, bias=False) if use_conv else None
        self.q_proj = None if adaptive_q else nn.Linear(d_model, d_model, bias=False)
        # meta-learned initial states M_{.,0} (Eq. 91) and the (eta, alpha) readouts
        self.projections_W1 = nn.Parameter(torch.empty(n_head, N, D, E))
        self.projections_W2 = nn.Parameter(torch.empty(n_head, N, E, D))
        self.memory_W1 = nn.Parameter(torch.empty(n_head, D, E))
        self.memory_W2 = nn.Parameter(torch.empty(n_head, E, D))
        self.gate_w = nn.Parameter(torch.empty(n_head, 2, D))
        self.gate_b = nn.Parameter(torch.empty(n_head, 2))

        self.out_norm = nn.RMSNorm(D) if output_norm else None
        self.out_gate = nn.Linear(d_model, d_model, bias=False) if output_gate else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_memory_parameters()

    def reset_memory_parameters(self) -> None:
        """Memory inits N(0, 1/fan_in); zero readouts; gate biases b_eta = 0, b_alpha = 8 (module docstring)."""
        for W in (self.projections_W1, self.projections_W2, self.memory_W1, self.memory_W2):
            nn.init.normal_(W, std=W.shape[-2] ** -0.5)
        nn.init.zeros_(self.gate_w)
        with torch.no_grad():
            self.gate_b.copy_(torch.tensor([0.0, 8.0]))

    # ---- state -------------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> SelfModifyingState:
        """Fresh state: the meta-learned initial memories (graph kept to them), zero conv history, nothing pending."""
        B, H, D = batch_size, self.n_head, self.head_dim
        expand = lambda W: W.expand(B, *W.shape)  # noqa: E731
        ref = self.memory_W1
        conv_cache = None if self.conv is None else zero_conv_cache(self.conv, B, ref)
        seq, gate = ref.new_zeros(B, H, 0, D), ref.new_zeros(B, H, 0)
        return SelfModifyingState(
            (expand(self.projections_W1), expand(self.projections_W2)),
            (expand(self.memory_W1), expand(self.memory_W2)),
            conv_cache,
            seq,
            (seq, seq, seq, gate, gate),
        )

    # ---- pieces ------------------------------------------------------------------------------------------------

    def _project(self, x_BHTD, state):
        """k, v, eta, alpha, q_adaptive of the new tokens; writes every complete projection chunk."""
        P = state.pending_x.shape[2]
        xs = torch.cat([state.pending_x, x_BHTD], dim=2) if P else x_BHTD  # (no copy when nothing is pending)
        n_full = xs.shape[2] // self.chunk_size * self.chunk_size
        W1, W2 = state.projections
        gates = (self.gate_w, self.gate_b, self.max_lr)
        parts = []
        if n_full:
            outs, (W1, W2) = self.projections_op(
                xs[:, :, :n_full], W1, W2, *gates, self.chunk_size, self.activation, self.max_grad_norm, self.safe_step
            )
            parts.append(outs)
        if n_full < xs.shape[2] or not parts:  # the unfinished chunk, read at the weights it started with
            parts.append(project(W1, W2, xs[:, :, n_full:], *gates, self.activation))
        outs = [None if p[0] is None else _cat(p, dim=2)[:, :, P:] for p in zip(*parts, strict=True)]
        return outs, (W1, W2), xs[:, :, n_full:]

    def _retrieve(self, q, k, v, eta, alpha, state):
        """y of the new tokens; appends them to the pending ones and writes every complete memory chunk."""
        P = state.pending[0].shape[2]
        new = (q, k, v, eta, alpha)
        if P:
            q, k, v, eta, alpha = (torch.cat([a, b], dim=2) for a, b in zip(state.pending, new, strict=True))
        n_full = k.shape[2] // self.memory_chunk_size * self.memory_chunk_size
        W1, W2 = state.memory
        ys = []
        if n_full:
            full = (t[:, :, :n_full] for t in (q, k, v, eta, alpha))
            rule = (self.memory_chunk_size, self.activation, self.max_grad_norm, self.safe_step)
            y, (W1, W2) = self.memory_op(*full, W1, W2, *rule)
            ys.append(y)
        if n_full < k.shape[2] or not ys:  # the unfinished chunk reads the weights it started with
            ys.append(residual_mlp(W1, W2, q[:, :, n_full:], self.activation))
        pending = tuple(t[:, :, n_full:] for t in (q, k, v, eta, alpha))
        return _cat(ys, dim=2)[:, :, P:], (W1, W2), pending

    # ---- public API --------------------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, state: SelfModifyingState | None = None
    ) -> tuple[torch.Tensor, SelfModifyingState]:
        """x [B, T, d_model] -> y [B, T, d_model] and the new state; every memory learns in context (Eq. 88)."""
        state = self.init_state(x.shape[0]) if state is None else state
        xc, conv_cache = causal_conv(self.conv, x, state.conv_cache)
        (k, v, eta, alpha, q), projections, pending_x = self._project(split_heads(xc, self.head_dim), state)
        if q is None:
            q = F.normalize(split_heads(self.q_proj(xc), self.head_dim), dim=-1)  # Eq. 83: the one static projection
        y, memory, pending = self._retrieve(q, k, v, eta, alpha, state)
        y = gated_output(y, x, self.out_norm, self.out_gate, self.out_proj)
        return y, SelfModifyingState(projections, memory, conv_cache, pending_x, pending)
