"""Titans neural long-term memory layer (the LMM of Titans §3.1, §4.4) around ``hope.ops.titans``.

x [B, T, d_model] -> y [B, T, d_model], with the memory state passed in and returned (never a buffer):

1. Projections, per head (Titans §4.4, following Gated DeltaNet): q = x W_Q, k = x W_K, v = x W_V, each followed
   by a causal depthwise convolution (kernel ``conv_kernel``) and then SiLU; the order proj -> conv -> SiLU is
   Gated DeltaNet's (fla ``ShortConvolution(activation="silu")``), whose recipe Titans trains with. q and k are
   then l2-normalised per head (``qk_norm``). The convolution carries the last ``conv_kernel - 1`` projected
   inputs in the state, so it is exactly causal across calls.
2. Gates, per head and per token (the paper only says they are "functions of x_t"; we use lucidrains' linear +
   sigmoid): eta_t = sigmoid(x_t w_eta + b_eta), alpha_t = sigmoid(x_t w_alpha + b_alpha) and
   theta_t = max_lr * sigmoid(x_t w_theta + b_theta) * (1 - eta_t) (``ema_momentum``; without it, no (1 - eta_t)).
   ``use_momentum=False`` forces eta = 0 and ``use_weight_decay=False`` forces alpha = 0. Bias inits: b_theta = 0,
   b_eta = 0 (eta ~ 0.5), b_alpha = -8 (alpha ~ 3e-4: at -4 the weight decay drives a deep memory to W = 0 within
   ~2K tokens, a saddle where both layers' gradients vanish). These are our choices, not the paper's (it gives
   none).

   **Why the inner loop needs bounds.** The C gradients of a chunk are all taken at the chunk-start weights and
   summed (§3.2), so one chunk is a gradient step on sum_t ||M(k_t) - v_t||^2. For a linear memory its curvature
   2 K^T K reaches 2C when the C unit keys are equal, which happens on every run of a repeated token (indentation
   in code, padding); ``max_lr=None`` therefore means 1 / (2 C). That bound is not enough for a deep memory, and
   `titans-mac-170m` went from finite to NaN inside one sequence on a run of repeated tokens in its 16th training
   step: the memory weights went 0.5 -> 1.1 -> 34 -> 1e6 -> 1e18 over four chunks. Two things enlarge the real
   step beyond max_lr: momentum (Eq. 13 read literally sums gradients, so the step grows like 1 / (1 - eta), and
   eta is learned) and the deep MLP's curvature, which grows with its weights. Two safeguards, both on by
   default and both exact in the naive references:
   - ``ema_momentum``: theta_t carries the factor (1 - eta_t), so S_t is an average of gradients and the step is
     bounded by max_lr whatever eta the outer loop learns. It is a reparameterisation of the data-dependent
     theta_t, so it stays inside the paper's Eq. 13.
   - ``max_grad_norm``: each token's inner gradient, all layers together, is clipped to this norm, so one chunk
     moves the memory by at most C * max_lr * max_grad_norm (Frobenius, per head) and a curvature blow-up can grow
     the weights at most linearly instead of geometrically. The default 10 is above the 99th percentile of
     per-token gradient norms at init (~5), so it acts only on outliers.
   ``tests/test_neural_memory.py`` checks that a run of one repeated token stays finite with both and diverges
   with neither.
3. The memory (``hope.ops.titans``): a residual MLP of ``depth`` layers, hidden width ``expansion * head_dim``,
   SiLU, whose initial weights are meta-learned parameters [H, d_in, d_out] (init N(0, 1/d_in)) broadcast over
   the batch; updated by Eqs. 12-14 in chunks of ``chunk_size``; y_t = M(q_t) read at the weights the chunk of
   t starts with.
4. Output (Titans §4.4: "a normalisation and a linear-layer gate before the output projection"): per-head
   RMSNorm, then times SiLU(x W_gate) (Gated DeltaNet's gated norm), heads merged, output projection.

Chunks are global across calls: the state keeps the keys, values and gates of the tokens of the current,
unfinished chunk (``pending``); they are written when the chunk is complete, and until then every token of that
chunk reads the weights the chunk started with. So one call on a sequence equals any split of it into calls
(token-by-token generation included), and a sequence whose length is not a multiple of ``chunk_size`` leaves its
last partial chunk pending instead of writing it.

For MAC (retrieve -> attend -> write, Titans §4.1) the two halves are exposed separately:
``read(x, state)`` retrieves M(q(x)) at the current chunk-start weights without writing, and
``write(x, state)`` writes k(x), v(x) of another sequence (e.g. the attention output). ``forward`` is the LMM
on its own: every chunk reads, then writes.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hope.layers.memory_io import causal_conv, detach_field, gated_output, split_heads, zero_conv_cache
from hope.ops.common import MemoryRule, memory_mlp
from hope.ops.titans import memory_op as titans_memory_op

__all__ = ["NeuralMemory", "NeuralMemoryState"]


class NeuralMemoryState(NamedTuple):
    """Recurrent state of :class:`NeuralMemory`; every tensor has the batch as its first dim."""

    weights: tuple[torch.Tensor, ...]
    """memory weights W_l [B, H, d_in, d_out] at the start of the current chunk"""
    momentum: tuple[torch.Tensor, ...]
    """momentum S_l, same shapes"""
    conv_cache: tuple[torch.Tensor, torch.Tensor] | None
    """last conv_kernel - 1 projected inputs (q: [B, H*Dh, K-1], k|v: [B, 2*H*Dh, K-1]); None without conv"""
    pending: tuple[torch.Tensor, ...]
    """(k, v [B, H, P, Dh], theta, eta, alpha [B, H, P]) of the P < chunk_size tokens not yet written"""

    def detach(self) -> "NeuralMemoryState":
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return NeuralMemoryState(*(detach_field(field) for field in self))


class NeuralMemory(nn.Module):
    """Titans long-term memory layer; see the module docstring for the math and the choices made.

    Args:
        d_model: model width (input and output features).
        n_head: number of memory heads H; each head has its own memory and gates.
        head_dim: per-head key/value width Dh (the memory maps Dh -> Dh).
        depth: memory MLP depth L_M >= 1.
        expansion: hidden width of the memory MLP is expansion * head_dim (depth >= 2).
        chunk_size: tokens per chunk; gradients of a chunk are taken at its start weights (Titans §3.2).
        conv_kernel: kernel of the causal depthwise convolution on q, k, v.
        use_conv: apply that convolution (Titans ablation "no convolution" when False).
        use_momentum: False forces eta = 0 (ablation "no momentum").
        use_weight_decay: False forces alpha = 0 (ablation "no weight decay").
        linear_memory: depth 1 and no residual, M(x) = x W (ablation "linear memory"); overrides depth, residual.
        residual: M(x) = x + MLP(x) (True) or MLP(x).
        activation: hidden activation of the memory MLP, "silu" or "gelu".
        qk_norm: l2-normalise q and k per head.
        max_lr: theta_t = max_lr * sigmoid(.), the largest inner-loop step size; None: 1 / (2 * chunk_size).
        ema_momentum: scale theta_t by (1 - eta_t), so that momentum averages the gradients instead of summing them.
        max_grad_norm: clip each token's inner gradient (all layers together) to this norm; None: no clipping.
        alpha_init: initial bias b_alpha of the forget gate's logit.
        output_norm: per-head RMSNorm of the retrieved values.
        output_gate: multiply by SiLU(x W_gate) before the output projection.
        memory_op: the memory update, called like ``hope.ops.titans.titans_memory`` (without ``compile``); None: that
            chunk-parallel op. Tests pass the literal reference ``hope.ops.titans.naive.titans_memory``.
        compile: run the default op's per-chunk step through torch.compile (GPU speed; see hope.ops.titans.chunked).
        recompute: keep only chunk-boundary states for backward and recompute each chunk step there
            (hope.ops.recompute).
        kernel: ``torch`` (the chunk-parallel PyTorch op) or ``triton`` (the fused kernels of hope.ops.titans.triton
            on CUDA; the PyTorch op elsewhere). See ``hope.ops.titans.memory_op``.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        head_dim: int,
        depth: int = 2,
        expansion: int = 4,
        chunk_size: int = 64,
        conv_kernel: int = 4,
        use_conv: bool = True,
        use_momentum: bool = True,
        use_weight_decay: bool = True,
        linear_memory: bool = False,
        residual: bool = True,
        activation: str = "silu",
        qk_norm: bool = True,
        max_lr: float | None = None,
        ema_momentum: bool = True,
        max_grad_norm: float | None = 10.0,
        alpha_init: float = -8.0,
        output_norm: bool = True,
        output_gate: bool = True,
        memory_op: Callable | None = None,
        compile: bool = False,
        recompute: bool = False,
        kernel: str = "torch",
    ):
        super().__init__()
        if linear_memory:
            depth, residual = 1, False
        if depth < 1 or ((compile or recompute or kernel != "torch") and memory_op is not None):
            raise ValueError(
                f"need depth >= 1, and compile, recompute and kernel only for the default memory_op, got {depth=}, "
                f"{compile=}, {recompute=}, {kernel=}"
            )
        self.n_head, self.head_dim, self.rule = (
            n_head,
            head_dim,
            MemoryRule(chunk_size, residual, activation, max_grad_norm),
        )
        self.use_momentum, self.use_weight_decay, self.qk_norm = use_momentum, use_weight_decay, qk_norm
        self.max_lr = 1 / (2 * chunk_size) if max_lr is None else max_lr
        self.ema_momentum, self.alpha_init = ema_momentum, alpha_init
        self.memory_op = titans_memory_op(kernel, compile, recompute) if memory_op is None else memory_op
        inner = n_head * head_dim

        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.q_conv = nn.Conv1d(inner, inner, conv_kernel, groups=inner, bias=False) if use_conv else None
        self.kv_conv = nn.Conv1d(2 * inner, 2 * inner, conv_kernel, groups=2 * inner, bias=False) if use_conv else None
        self.gate_proj = nn.Linear(d_model, 3 * n_head)  # theta, eta, alpha logits per head

        dims = [head_dim] + [expansion * head_dim] * (depth - 1) + [head_dim]
        self.memory_init = nn.ParameterList(
            nn.Parameter(torch.empty(n_head, d_in, d_out)) for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
        )

        self.out_norm = nn.RMSNorm(head_dim) if output_norm else None
        self.out_gate = nn.Linear(d_model, inner, bias=False) if output_gate else None
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.reset_memory_parameters()

    def reset_memory_parameters(self) -> None:
        """Memory init W_l ~ N(0, 1/d_in) and the gate biases of the module docstring."""
        for W in self.memory_init:
            nn.init.normal_(W, std=W.shape[1] ** -0.5)
        with torch.no_grad():
            self.gate_proj.bias.view(3, self.n_head).copy_(torch.tensor([[0.0], [0.0], [self.alpha_init]]))

    # ---- state -------------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> NeuralMemoryState:
        """Fresh state: the meta-learned initial weights, zero momentum, zero conv history, nothing pending."""
        ref = self.memory_init[0]
        weights = tuple(W.expand(batch_size, -1, -1, -1) for W in self.memory_init)  # keeps the graph to the init
        momentum = tuple(ref.new_zeros(batch_size, *W.shape) for W in self.memory_init)
        conv_cache = None
        if self.q_conv is not None:
            conv_cache = tuple(zero_conv_cache(conv, batch_size, ref) for conv in (self.q_conv, self.kv_conv))
        kv = ref.new_zeros(batch_size, self.n_head, 0, self.head_dim)
        gate = ref.new_zeros(batch_size, self.n_head, 0)
        return NeuralMemoryState(weights, momentum, conv_cache, (kv, kv, gate, gate, gate))

    # ---- projections -------------------------------------------------------------------------------------------

    def _project(self, x, proj, conv, cache):
        h, cache = causal_conv(conv, proj(x), cache)
        return F.silu(h), cache

    def _queries(self, x, state):
        cache = None if state.conv_cache is None else state.conv_cache[0]
        q, cache = self._project(x, self.q_proj, self.q_conv, cache)
        q = split_heads(q, self.head_dim)
        return (F.normalize(q, dim=-1) if self.qk_norm else q), cache

    def _keys_values(self, x, state):
        cache = None if state.conv_cache is None else state.conv_cache[1]
        kv, cache = self._project(x, self.kv_proj, self.kv_conv, cache)
        k, v = split_heads(kv, self.head_dim).chunk(2, dim=1)  # heads 0..H-1 are k, H..2H-1 are v
        return (F.normalize(k, dim=-1) if self.qk_norm else k), v, cache

    def _gates(self, x):
        B, T, _ = x.shape
        logits = self.gate_proj(x).view(B, T, 3, self.n_head).permute(2, 0, 3, 1)  # [3, B, H, T]
        eta = torch.sigmoid(logits[1]) if self.use_momentum else torch.zeros_like(logits[1])
        theta = self.max_lr * torch.sigmoid(logits[0])
        if self.ema_momentum:
            theta = theta * (1 - eta)
        alpha = torch.sigmoid(logits[2]) if self.use_weight_decay else torch.zeros_like(logits[2])
        return theta, eta, alpha

    def _output(self, y_BHTD, x):
        return gated_output(y_BHTD, x, self.out_norm, self.out_gate, self.out_proj)

    # ---- memory ------------------------------------------------------------------------------------------------

    def _memorise(self, q, k, v, gates, state):
        """Append (k, v, gates) to the pending tokens, write every complete chunk, keep the rest pending.

        q [B, H, T, Dh] (or None) are the queries of the new tokens; each reads the weights its chunk starts with.
        Returns (y [B, H, T, Dh] or None, weights, momentum, pending).
        """
        P = state.pending[0].shape[2]
        k, v, *gates = (torch.cat([old, new], dim=2) for old, new in zip(state.pending, (k, v, *gates), strict=True))
        if q is not None:
            q = torch.cat([q.new_zeros(*q.shape[:2], P, q.shape[-1]), q], dim=2)  # pending tokens already read
        n_full = k.shape[2] // self.rule.chunk_size * self.rule.chunk_size
        weights, momentum, ys = state.weights, state.momentum, []
        if n_full:
            k_full, v_full, *gates_full = (t[:, :, :n_full] for t in (k, v, *gates))
            q_full = None if q is None else q[:, :, :n_full]
            y, (weights, momentum) = self.memory_op(
                q_full, k_full, v_full, tuple(gates_full), (weights, momentum), self.rule
            )
            ys.append(y)
        if q is not None:
            ys.append(memory_mlp(weights, q[:, :, n_full:], self.rule.residual, self.rule.activation))
        pending = tuple(t[:, :, n_full:] for t in (k, v, *gates))
        y = None if q is None else torch.cat(ys, dim=2)[:, :, P:]
        return y, weights, momentum, pending

    # ---- public API --------------------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, state: NeuralMemoryState | None = None
    ) -> tuple[torch.Tensor, NeuralMemoryState]:
        """LMM: x [B, T, d_model] -> y [B, T, d_model]; each chunk reads M(q_t), then writes its (k_t, v_t)."""
        state = self.init_state(x.shape[0]) if state is None else state
        q, q_cache = self._queries(x, state)
        k, v, kv_cache = self._keys_values(x, state)
        y, weights, momentum, pending = self._memorise(q, k, v, self._gates(x), state)
        conv_cache = None if q_cache is None else (q_cache, kv_cache)
        return self._output(y, x), NeuralMemoryState(weights, momentum, conv_cache, pending)

    def read(self, x: torch.Tensor, state: NeuralMemoryState) -> tuple[torch.Tensor, NeuralMemoryState]:
        """Retrieve without writing: y_t = M(q(x_t)) at the state's weights for every t (MAC's h = M*_{t-1}(q)).

        Advances only the query conv history; the memory, momentum and pending tokens are unchanged.
        """
        q, q_cache = self._queries(x, state)
        y = memory_mlp(state.weights, q, self.rule.residual, self.rule.activation)
        conv_cache = None if q_cache is None else (q_cache, state.conv_cache[1])
        return self._output(y, x), state._replace(conv_cache=conv_cache)

    def write(self, x: torch.Tensor, state: NeuralMemoryState) -> NeuralMemoryState:
        """Write the keys/values/gates of x [B, T, d_model] into the memory (MAC's M_t = M_{t-1}(y_t)).

        Advances only the key/value conv history. Complete chunks are written; a partial chunk stays pending.
        """
        k, v, kv_cache = self._keys_values(x, state)
        _, weights, momentum, pending = self._memorise(None, k, v, self._gates(x), state)
        conv_cache = None if kv_cache is None else (state.conv_cache[0], kv_cache)
        return NeuralMemoryState(weights, momentum, conv_cache, pending)
