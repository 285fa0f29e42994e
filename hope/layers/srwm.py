"""The SRWM family: a Transformer++ block with the self-referential weight matrix (Irie, Schlag, Csordás,
Schmidhuber, ICML 2022) in place of attention, x + SRWM(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)).

The token mixer (``SelfReferentialWeightMatrix``) is the paper's multi-head SRWM layer:

1. Heads: the normalised input goes through a causal depthwise convolution of kernel ``conv_kernel`` (4; 0: none)
   and is split into ``n_head`` heads of width D = d_model / n_head, with no input projection (the matrix is its
   own projection, as in IDSIA/modern-srwm's ``SRWMlayer``). The convolution is ours, not the paper's: the paper
   feeds an input and its label in one step, while in text a label is the token after its input, and the matrix
   sees one token at a time, so without it a token's key cannot depend on the token before (the Titans memory and
   HOPE's self-modifying Titans have the same convolution, ``memory_conv_kernel``). docs/acl/README.md measures
   what it does for in-context learning. ``srwm_conv_kernel: 0`` is the paper's layer.
2. phi: every head's matrix W_t [D, 3D+4] (row form, ``hope.ops.srwm.naive`` has the math) reads phi(k_t) and
   phi(q_t) with phi = softmax over the head dim, as in the paper's Eqs. 2-4. Softmax keys are positive and sum to
   one, so each update writes a convex mix of the matrix's own rows, with no key normalisation to add; that is
   what keeps a self-modifying matrix bounded over long streams (the paper's reason too). The paper's Eq. 2 also
   writes phi(x_t); the authors' code makes that optional (``use_input_softmax``, off in their scripts), and so do
   we (``srwm_input_softmax``, off): after RMSNorm the input already has a fixed scale, and a softmax over 32
   features would throw away its sign.
3. W_0 is a parameter per head, initialised as the authors do: N(0, 1/D) for the y and k columns, N(0, 0.01^2/D)
   for the q columns (so v starts near the mean row, a gentle first update), and N(0, 1/D) for the four beta
   columns (the authors' ``beta_init`` 0: learning rates sigma(beta) start around 0.5).
4. Output: the heads' y merged and projected, out_proj (GPT-2 residual init, from ``HopeLM``).

State: ``SRWMState(weights, pending, conv_cache)``: every head's matrix at the start of the current chunk, the
inputs of the unfinished chunk (none with ``srwm_chunk_size`` 1, the exact recurrence) and the convolution's last
``conv_kernel - 1`` inputs. Tokens of an unfinished chunk read
the weights it started with, so one call equals any split of it into calls, token-by-token generation included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from hope.config import ModelConfig
from hope.layers.memory_io import causal_conv, detach_field, split_heads, zero_conv_cache
from hope.layers.mlp import SwiGLU
from hope.layers.norm import RMSNorm
from hope.ops.srwm import srwm

__all__ = ["SRWMBlock", "SRWMState", "SelfReferentialWeightMatrix"]


class SRWMState(NamedTuple):
    """Recurrent state of :class:`SelfReferentialWeightMatrix`; both tensors have the batch as their first dim."""

    weights: torch.Tensor
    """W [B, H, D, 3D+4] of every head at the start of the current chunk"""
    pending: torch.Tensor
    """inputs [B, H, P, D] of the P < chunk_size tokens of the unfinished chunk"""
    conv_cache: torch.Tensor | None
    """last conv_kernel - 1 inputs [B, d_model, K-1]; None without the convolution"""

    def detach(self) -> SRWMState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return SRWMState(*(detach_field(field) for field in self))


class SelfReferentialWeightMatrix(nn.Module):
    """Multi-head SRWM token mixer; see the module docstring.

    Args:
        d_model: model width (input and output features); must be divisible by n_head.
        n_head: number of heads H, each with its own matrix of D x (3D + 4), D = d_model / n_head.
        chunk_size: tokens per update; 1 is the exact recurrence, more reads every token of a chunk at its
            start weights (``hope.ops.srwm.naive``).
        input_softmax: apply phi = softmax to each head's input too (the paper's Eq. 2 as written).
        conv_kernel: kernel of the causal depthwise convolution on the input; 0: none (the paper's layer).
        op: the op, called like ``hope.ops.srwm.srwm``; None: that one. Tests pass ``hope.ops.srwm.naive.srwm``.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        chunk_size: int = 1,
        input_softmax: bool = False,
        conv_kernel: int = 4,
        op: Callable | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_head or chunk_size < 1:  # (ModelConfig.validate says the same with the field names)
            raise ValueError(
                f"need d_model % n_head == 0 and chunk_size >= 1, got {d_model=}, {n_head=}, {chunk_size=}."
            )
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.chunk_size, self.input_softmax = chunk_size, input_softmax
        self.op = srwm if op is None else op
        self.conv = nn.Conv1d(d_model, d_model, conv_kernel, groups=d_model, bias=False) if conv_kernel else None
        self.weights = nn.Parameter(torch.empty(n_head, self.head_dim, 3 * self.head_dim + 4))  # W_0, meta-learned
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_memory_parameters()

    def reset_memory_parameters(self) -> None:
        """W_0 as the authors initialise it: N(0, 1/D), with the q columns 100x smaller (module docstring)."""
        D = self.head_dim
        with torch.no_grad():
            nn.init.normal_(self.weights, std=D**-0.5)
            self.weights[..., 2 * D : 3 * D].mul_(0.01)

    def init_state(self, batch_size: int) -> SRWMState:
        """Fresh state: W_0 for every stream (the graph kept to it), nothing pending, zero conv history."""
        W = self.weights
        conv_cache = None if self.conv is None else zero_conv_cache(self.conv, batch_size, W)
        return SRWMState(
            W.expand(batch_size, *W.shape), W.new_zeros(batch_size, self.n_head, 0, self.head_dim), conv_cache
        )

    def forward(self, x: torch.Tensor, state: SRWMState | None = None) -> tuple[torch.Tensor, SRWMState]:
        """x [B, T, d_model] -> y [B, T, d_model] and the new state; the matrices rewrite themselves (Eq. 4)."""
        state = self.init_state(x.shape[0]) if state is None else state
        x, conv_cache = causal_conv(self.conv, x, state.conv_cache)
        x_BHTD = split_heads(x, self.head_dim)
        if self.input_softmax:
            x_BHTD = torch.softmax(x_BHTD, dim=-1)
        P = state.pending.shape[2]
        xs = torch.cat([state.pending, x_BHTD], dim=2) if P else x_BHTD
        n_full = xs.shape[2] // self.chunk_size * self.chunk_size
        W, ys = state.weights, []
        if n_full:
            y, W = self.op(xs[:, :, :n_full], W, self.chunk_size)
            ys.append(y)
        if n_full < xs.shape[2]:  # the unfinished chunk reads the weights it started with (Eq. 2's y columns)
            ys.append((xs[:, :, n_full:] @ W[..., : self.head_dim]).to(x.dtype))
        y_BHTD = (ys[0] if len(ys) == 1 else torch.cat(ys, dim=2))[:, :, P:]
        B, H, T, D = y_BHTD.shape
        y = self.out_proj(y_BHTD.transpose(1, 2).reshape(B, T, H * D).to(x.dtype))  # merge heads
        return y, SRWMState(W, xs[:, :, n_full:], conv_cache)


class SRWMBlock(nn.Module):
    """Pre-norm block: x + SRWM(norm(x)), then x + SwiGLU(norm(x)); the state is the SRWM's."""

    carries_state = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mixer = SelfReferentialWeightMatrix(
            config.n_embd, config.n_head, config.srwm_chunk_size, config.srwm_input_softmax, config.srwm_conv_kernel
        )
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config.n_embd, config.resolved_intermediate_size)

    def reset_memory_parameters(self) -> None:
        """Re-initialise W_0 after ``HopeLM``'s generic init (which does not know it)."""
        self.mixer.reset_memory_parameters()

    def forward(self, x: torch.Tensor, state: SRWMState | None = None) -> tuple[torch.Tensor, SRWMState]:
        """The block's output and the SRWM's new state."""
        h, state = self.mixer(self.mixer_norm(x), state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state
