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
4. Output (as ``NeuralMemory``): per-head RMSNorm, times SiLU(x W_gate), heads merged, output projection.

Chunks are global across calls: the state keeps the inputs of the unfinished projection chunk and the (q, k, v,
eta, alpha) of the unfinished memory chunk; until a chunk is complete its tokens read the weights it started
with. So one call equals any split of it into calls (token-by-token generation included).
"""

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hope.ops.self_modifying import chunked, naive

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
        return SelfModifyingState(*(_detach(field) for field in self))


def _cat(parts, dim):
    """torch.cat that returns a lone part as is (one copy fewer in the forward and the backward)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _detach(x):
    if x is None or isinstance(x, torch.Tensor):
        return None if x is None else x.detach()
    return tuple(t.detach() for t in x)


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
        output_norm: per-head RMSNorm of the retrieved values.
        output_gate: multiply by SiLU(x W_gate) before the output projection.
        impl: "chunked" (chunk-parallel op) or "naive" (literal chunk loops, for tests).
        compile: run each chunk step of the chunked op through torch.compile (see hope.ops.self_modifying.chunked).
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
        output_norm: bool = True,
        output_gate: bool = True,
        impl: str = "chunked",
        compile: bool = False,
    ):
        super().__init__()
        if d_model % n_head or impl not in ("chunked", "naive"):
            raise ValueError(f"need d_model % n_head == 0 and impl in ('chunked', 'naive'), got {n_head=}, {impl=}")
        D = d_model // n_head
        E = expansion * D
        N = 5 if adaptive_q else 4
        self.n_head, self.head_dim = n_head, D
        self.chunk_size, self.memory_chunk_size = chunk_size, memory_chunk_size
        self.adaptive_q, self.activation = adaptive_q, activation
        self.max_lr = 1 / (2 * max(chunk_size, memory_chunk_size)) if max_lr is None else max_lr
        self.max_grad_norm = max_grad_norm
        if impl == "chunked":
            self._write_projections = partial(chunked.self_modifying_projections, compile=compile)
            self._write_memory = partial(chunked.dgd_memory, compile=compile)
        else:
            self._write_projections, self._write_memory = naive.self_modifying_projections, naive.dgd_memory

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
        conv_cache = None
        if self.conv is not None:
            conv_cache = ref.new_zeros(B, self.conv.in_channels, self.conv.kernel_size[0] - 1)
        seq, gate = ref.new_zeros(B, H, 0, D), ref.new_zeros(B, H, 0)
        return SelfModifyingState(
            (expand(self.projections_W1), expand(self.projections_W2)),
            (expand(self.memory_W1), expand(self.memory_W2)),
            conv_cache,
            seq,
            (seq, seq, seq, gate, gate),
        )

    # ---- pieces ------------------------------------------------------------------------------------------------

    def _heads(self, h_BTC: torch.Tensor) -> torch.Tensor:
        B, T, _ = h_BTC.shape
        return h_BTC.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, T, H*D] -> [B, H, T, D]

    def _conv(self, x_BTC, cache_BCK):
        if self.conv is None:
            return x_BTC, None
        h_BCT = torch.cat([cache_BCK, x_BTC.mT], dim=-1)  # [B, C, K-1+T]
        keep = cache_BCK.shape[-1]
        return self.conv(h_BCT).mT, h_BCT[..., h_BCT.shape[-1] - keep :]

    def _project(self, x_BHTD, state):
        """k, v, eta, alpha, q_adaptive of the new tokens; writes every complete projection chunk."""
        P = state.pending_x.shape[2]
        xs = torch.cat([state.pending_x, x_BHTD], dim=2) if P else x_BHTD  # (no copy when nothing is pending)
        n_full = xs.shape[2] // self.chunk_size * self.chunk_size
        W1, W2 = state.projections
        gates = (self.gate_w, self.gate_b, self.max_lr)
        parts = []
        if n_full:
            outs, (W1, W2) = self._write_projections(
                xs[:, :, :n_full], W1, W2, *gates, self.chunk_size, self.activation, self.max_grad_norm
            )
            parts.append(outs)
        if n_full < xs.shape[2] or not parts:  # the unfinished chunk, read at the weights it started with
            parts.append(naive.project(W1, W2, xs[:, :, n_full:], *gates, self.activation))
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
            y, (W1, W2) = self._write_memory(*full, W1, W2, self.memory_chunk_size, self.activation, self.max_grad_norm)
            ys.append(y)
        if n_full < k.shape[2] or not ys:  # the unfinished chunk reads the weights it started with
            ys.append(naive.residual_mlp(W1, W2, q[:, :, n_full:], self.activation))
        pending = tuple(t[:, :, n_full:] for t in (q, k, v, eta, alpha))
        return _cat(ys, dim=2)[:, :, P:], (W1, W2), pending

    def _output(self, y_BHTD, x):
        if self.out_norm is not None:
            y_BHTD = self.out_norm(y_BHTD)
        B, H, T, D = y_BHTD.shape
        y = y_BHTD.transpose(1, 2).reshape(B, T, H * D)  # merge heads
        if self.out_gate is not None:
            y = y * F.silu(self.out_gate(x))
        return self.out_proj(y)

    # ---- public API --------------------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, state: SelfModifyingState | None = None
    ) -> tuple[torch.Tensor, SelfModifyingState]:
        """x [B, T, d_model] -> y [B, T, d_model] and the new state; every memory learns in context (Eq. 88)."""
        state = self.init_state(x.shape[0]) if state is None else state
        xc, conv_cache = self._conv(x, state.conv_cache)
        (k, v, eta, alpha, q), projections, pending_x = self._project(self._heads(xc), state)
        if q is None:
            q = F.normalize(self._heads(self.q_proj(xc)), dim=-1)  # Eq. 83: the one static projection
        y, memory, pending = self._retrieve(q, k, v, eta, alpha, state)
        return self._output(y, x), SelfModifyingState(projections, memory, conv_cache, pending_x, pending)
