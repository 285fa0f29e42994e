"""Continuum Memory System (Nested Learning Eqs. 30-31, arXiv Eqs. 70-71): a chain of MLP levels, each with its
own update period, that can keep learning in context.

Forward (Eq. 30): y = MLP^(f_k)(... MLP^(f_1)(x)), each level a pre-norm residual SwiGLU (as the Transformer++ MLP
of ``hope.layers.mlp``): h <- h + SwiGLU_l(RMSNorm_l(h)).

Two loops train the levels:

* Outer loop (pretraining): the level's parameters are ordinary parameters; ``level_parameters()`` lists them by
  level so that ``hope.optim.LevelOptimizer`` steps level l every C^(l) optimizer steps (Eq. 31).
* In context (``forward(..., learn=True)``): level l's SwiGLU weights take a plain gradient step every
  ``periods[l]`` tokens of the stream, on the sum of the per-token gradients of the tokens since its last step, all
  taken at the weights they were read with (Eq. 31 with f = grad and lr ``inner_lr[l]``):
      theta_l <- theta_l - inner_lr_l * sum_{t in period} grad_theta_l objective_t
  Tokens read the weights current when they arrive: a level changes only after a multiple of its period.

The inner objective is open in the paper (Eq. 31's f is "the error component of an arbitrary optimizer"):

* ``"teach"`` (default): the caller passes ``teach`` = dL/dy, the gradient of the model's loss (e.g. next-token
  loss through the LM head) w.r.t. this layer's output for the same tokens, and the objective is <y, teach>, so
  each level steps along its true gradient of the model's loss (backpropagated through the later levels of this
  chain, nothing further). It is the default because it is the objective pretraining optimises, so test-time
  learning continues pretraining on the stream. The model computes ``teach`` from a first pass over the tokens;
  it is exact when the call's tokens lie within one period of the fastest level (they all read the same
  weights, so a first pass with ``learn=False`` produced the same y); in longer calls the later tokens' teach
  signals are stale by the updates made inside the call.
* ``"reconstruction"``: a layer-local objective that needs nothing from the model (e.g. while generating, when
  the next token is unknown): each level's SwiGLU branch is an associative memory with key = value = its
  normalised input u (Titans' k = v = x simplification), objective ||SwiGLU_l(u) - u||^2 / d (the mean over
  features, so that one inner lr suits any width: the sum's gradients grow with |u|^2 ~ d, and at d = 128 an inner
  lr of 1e-3 on the sum blew a trained model's levels up within 256 tokens), u held fixed, so no gradient crosses
  levels (Nested Learning's gradient separation). On the residual sum it would be ||SwiGLU(u)||^2, whose minimum
  is the zero map, hence the branch.

In pretraining (``learn_in_context=True``, ``ModelConfig.cms_learn_in_context``) every forward learns: each
level runs ``hope.ops.cms.learn_level`` on the ``reconstruction`` objective (the one a forward can compute: the
``teach`` signal of chunk i would need the whole network's loss on chunk i before chunk i + 1 may be read, i.e.
T / C sequential forward-backward passes, or a second, stale pass), level by level, T / C^(l) steps each, and the
outer loss differentiates through the steps. ``learn=True`` (the test-time learner's call) takes precedence.

Only the SwiGLU matrices learn in context; the norm gains are outer-loop only. The in-context change lives in a
per-stream :class:`CMSState` (``delta`` per level, [B, out, in] per matrix, plus the partial gradient sums and the
stream position), so the stored weights are untouched: discard the state to forget, or ``consolidate(state)`` to
write it into the weights (a deployed model that keeps learning). The updates of ``learn=True`` are not
differentiated (no meta-gradient through them; y still carries the outer-loop graph to the parameters); those of
``learn_in_context`` are.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hope.layers.mlp import SwiGLU
from hope.layers.norm import RMSNorm
from hope.ops.cms import learn_level
from hope.ops.common import level_step

__all__ = ["ContinuumMemory", "CMSState", "OBJECTIVES"]

OBJECTIVES = ("teach", "reconstruction")

Weights = tuple[torch.Tensor, ...]  # (gate, up, down) in nn.Linear layout [out, in], or [B, out, in] per stream


class CMSState(NamedTuple):
    """In-context state of :class:`ContinuumMemory` for one batch of streams."""

    delta: tuple[Weights | None, ...]
    """per level: change of (gate, up, down) since the stored weights, [B, out, in] each; None = unchanged"""
    grad_sum: tuple[Weights | None, ...]
    """per level: gradients summed since the level's last update; None = none yet"""
    position: int
    """tokens learned from so far; level l updates when it reaches a multiple of periods[l]"""


def _swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """SwiGLU with shared [out, in] or per-stream [B, out, in] weights; x [B, T, d]."""
    return (F.silu(x @ gate.mT) * (x @ up.mT)) @ down.mT


class _Level(nn.Module):
    def __init__(self, d_model: int, hidden: int, norm: bool, eps: float):
        super().__init__()
        self.norm = RMSNorm(d_model, eps) if norm else nn.Identity()
        self.mlp = SwiGLU(d_model, hidden)

    def weights(self) -> Weights:
        return self.mlp.gate.weight, self.mlp.up.weight, self.mlp.down.weight


class ContinuumMemory(nn.Module):
    """Chain of residual SwiGLU levels with per-level update periods; see the module docstring.

    Args:
        d_model: model width.
        hidden: SwiGLU hidden width, one for all levels or one per level.
        periods: C^(l) per level, in tokens, for in-context learning (the outer-loop periods, in optimizer
            steps, are the optimizer's ``period``; see ``hope.optim.levels``).
        inner_lr: in-context step size, one for all levels or one per level.
        objective: in-context objective, "teach" or "reconstruction".
        norm: pre-norm (RMSNorm) before each level's SwiGLU.
        norm_eps: RMSNorm epsilon.
        learn_in_context: every forward learns in context on the "reconstruction" objective (module docstring).
        max_step: cap of each in-context step per matrix, as a fraction of the stored matrix's Frobenius norm
            (``hope.ops.common.level_step``); None: no cap.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int | Sequence[int],
        periods: Sequence[int],
        inner_lr: float | Sequence[float] = 1e-2,
        objective: str = "teach",
        norm: bool = True,
        norm_eps: float = 1e-6,
        learn_in_context: bool = False,
        max_step: float | None = None,
    ):
        super().__init__()
        L = len(periods)
        hidden = [hidden] * L if isinstance(hidden, int) else list(hidden)
        self.inner_lr = [inner_lr] * L if isinstance(inner_lr, int | float) else list(inner_lr)
        if objective not in OBJECTIVES or min(periods, default=0) < 1 or not len(hidden) == len(self.inner_lr) == L:
            raise ValueError(f"need objective in {OBJECTIVES}, periods >= 1 and one hidden/inner_lr per level")
        self.periods, self.objective, self.learn_in_context = list(periods), objective, learn_in_context
        self.max_step = max_step
        self.levels = nn.ModuleList(_Level(d_model, h, norm, norm_eps) for h in hidden)

    def level_parameters(self) -> list[list[nn.Parameter]]:
        """Parameters by level (SwiGLU and norm), for per-level optimizer groups."""
        return [list(level.parameters()) for level in self.levels]

    def init_state(self) -> CMSState:
        """A stream that has learned nothing yet (tensors are created on the first update)."""
        L = len(self.levels)
        return CMSState((None,) * L, (None,) * L, 0)

    def _weights(self, level: int, delta: Weights | None) -> Weights:
        stored = self.levels[level].weights()
        return stored if delta is None else tuple(W + d for W, d in zip(stored, delta, strict=True))

    def _chain(self, x, weights: list[Weights]):
        """Eq. 30 with the given weights; returns y and each level's normalised input."""
        h, inputs = x, []
        for level, ws in zip(self.levels, weights, strict=True):
            inputs.append(level.norm(h))
            h = h + _swiglu(inputs[-1], *ws)
        return h, inputs

    def forward(
        self, x: torch.Tensor, state: CMSState | None = None, learn: bool = False, teach: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, CMSState | None]:
        """x [B, T, d_model] -> (y [B, T, d_model], state).

        ``learn=False`` reads the state's weights (the stored ones if ``state`` is None) and returns the state
        unchanged, unless the module learns in context (``learn_in_context``). ``learn=True`` also learns from these
        tokens (``teach`` [B, T, d_model] = dL/dy is required for the "teach" objective) and returns the advanced
        state.
        """
        if not learn and self.learn_in_context:
            return self._learn_in_context(x, self.init_state() if state is None else state)
        if not learn:
            delta = (None,) * len(self.levels) if state is None else state.delta
            return self._chain(x, [self._weights(lv, d) for lv, d in enumerate(delta)])[0], state
        if self.objective == "teach" and (teach is None or teach.shape != x.shape):
            raise ValueError("objective 'teach' needs teach = dL/dy with the shape of x")
        state = self.init_state() if state is None else state
        delta, grad_sum, pos = list(state.delta), list(state.grad_sum), state.position
        ys, start = [], 0
        while start < x.shape[1]:
            # a segment never crosses an update of any level, so all its tokens read the same weights
            end = min(x.shape[1], start + min(C - pos % C for C in self.periods))
            seg_teach = None if teach is None else teach[:, start:end]
            y, grads = self._segment(x[:, start:end], delta, seg_teach)
            ys.append(y)
            pos += end - start
            for lv, C in enumerate(self.periods):
                grad_sum[lv] = grads[lv] if grad_sum[lv] is None else _add(grad_sum[lv], grads[lv])
                if pos % C == 0:  # Eq. 31: step on the period's summed gradient
                    step = level_step(grad_sum[lv], self.inner_lr[lv], self.levels[lv].weights(), self.max_step)
                    delta[lv], grad_sum[lv] = (step if delta[lv] is None else _add(delta[lv], step)), None
            start = end
        return torch.cat(ys, dim=1), CMSState(tuple(delta), tuple(grad_sum), pos)

    def _learn_in_context(self, x: torch.Tensor, state: CMSState) -> tuple[torch.Tensor, CMSState]:
        """Eq. 30 while every level learns on its local objective, one level after the other (hope.ops.cms)."""
        h, delta, grad_sum = x, list(state.delta), list(state.grad_sum)
        for lv, level in enumerate(self.levels):
            rule = (state.position, self.periods[lv], self.inner_lr[lv], self.max_step)
            y, delta[lv], grad_sum[lv] = learn_level(level.norm(h), level.weights(), delta[lv], grad_sum[lv], *rule)
            h = h + y
        return h, CMSState(tuple(delta), tuple(grad_sum), state.position + x.shape[1])

    def _segment(self, x, delta, teach):
        """y of a segment at fixed weights and the per-stream gradients [B, out, in] of its summed objective."""
        outer = torch.is_grad_enabled()
        B = x.shape[0]
        with torch.enable_grad():
            weights = []
            for lv, d in enumerate(delta):
                # per-stream copies: their gradients are per stream; detached ones when no outer graph is wanted
                ws = tuple(W.expand(B, *W.shape[-2:]).clone() for W in self._weights(lv, d))
                weights.append(tuple(W if outer and W.requires_grad else W.detach().requires_grad_() for W in ws))
            y, inputs = self._chain(x, weights)
            if self.objective == "teach":
                objective = (y * teach).sum()
            else:  # each level's branch reconstructs its own fixed input
                pairs = zip(inputs, weights, strict=True)
                objective = sum((_swiglu(u.detach(), *ws) - u.detach()).pow(2).mean(-1).sum() for u, ws in pairs)
            flat = torch.autograd.grad(objective, [W for ws in weights for W in ws], retain_graph=outer)
        grads = [flat[3 * lv : 3 * lv + 3] for lv in range(len(weights))]
        return (y if outer else y.detach()), grads

    @torch.no_grad()
    def consolidate(self, state: CMSState) -> CMSState:
        """Write the state's in-context changes into the stored weights (their mean over the batch: exact for one
        stream) and return the state with no change left. Partial gradient sums and the position are kept."""
        for level, delta in zip(self.levels, state.delta, strict=True):
            if delta is not None:
                for W, d in zip(level.weights(), delta, strict=True):
                    W.add_(d.mean(dim=0))
        return state._replace(delta=(None,) * len(self.levels))


def _add(a: Weights, b: Weights) -> Weights:
    return tuple(x + y for x, y in zip(a, b, strict=True))
