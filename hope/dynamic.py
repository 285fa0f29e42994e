"""Dynamic evaluation (Krause et al. 2018, arXiv:1709.07432; 2019, arXiv:1904.08378): gradient steps on the model's
own parameters over the stream it reads, for every family. The classic anchor for learning at test time.

    evaluator = DynamicEvaluator(model, DynamicConfig(lr=1e-4, rule="rms", segment=32))
    logits, state = evaluator.step(idx_1T)             # each segment scored, then learned from
    logits, state = evaluator.step(more_1T, state)     # continue the stream
    state = evaluator.discard(state)                   # forget what was learned (keep the context)
    state = evaluator.consolidate(state)               # or write it into the model's weights

The stream is cut into segments of ``segment`` tokens. A segment's logits are computed with the weights learned from
the segments before it (theta_{i-1}); then the weights take one step on the gradient g of the mean next-token loss
of that segment's predictions (Krause 2018 §3; 2019 §2), so no token is scored by weights that learned from it:

    sgd:  delta <- delta - lr * g
    rms:  delta <- delta - lr * g / (sqrt(v_hat) + eps),   v <- beta * v + (1 - beta) * g^2,  v_hat = v / (1 - beta^k)

and ``decay`` > 0 also pulls the weights back toward where the stream started at every step,
delta <- (1 - decay) * delta (Krause 2018's decay-to-init prior, without its RMS scaling of the decay). Krause's
RMS variant divides by gradient statistics collected on the training set; at test time there is none, so v is a
running mean over the stream's own steps (bias-corrected, as Adam's second moment).

Context: families whose blocks carry a recurrent state (Titans, HOPE) read segment i from the state after segment
i-1, computed with the earlier weights and not backpropagated through (truncated at the segment, as Krause does for
RNNs). Families that do not (Transformer++, Hope-Attention) predict segment i from every token of the call up to
it, re-read with the current weights, so the attention sees the same context as without learning.

The change lives in the state (``DynamicState.delta``), never in the model, until ``consolidate``: callers can
branch from a state and re-read (``hope.evaluation.scoring`` does for overlapping windows) and each stream learns on
its own. Every parameter learns, frozen or not. A call's last token teaches nothing (its target is the next call's
first token), as in ``hope.ttl``. One stream per call (batch 1): the weights are the stream's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch.func import functional_call
from torch.utils._pytree import tree_map

from hope.loss import next_token_loss
from hope.model import HopeLM
from hope.ttl import change_scale

__all__ = ["DynamicConfig", "DynamicEvaluator", "DynamicState"]


@dataclass
class DynamicConfig:
    """Dynamic evaluation's settings (Krause et al. 2018, 2019); see ``hope.dynamic``."""

    lr: float = 1e-4
    """step size: rms, about the change of every weight per step; sgd, the factor of the mean loss's gradient"""
    rule: Literal["sgd", "rms"] = "rms"
    """``rms``: steps divided by the running RMS of the gradients (Krause's RMS variant); ``sgd``: plain steps"""
    segment: int = 32
    """tokens per step: each segment is scored, then learned from"""
    decay: float = 0.0
    """pull toward the weights the stream started from, per step (0: none; Krause's decay-to-init)"""
    beta: float = 0.99
    """rms: decay of the running mean of squared gradients"""
    eps: float = 1e-8
    """rms: added to the RMS before dividing"""

    def __post_init__(self) -> None:
        if self.lr < 0 or self.segment < 1 or not 0 <= self.decay < 1 or not 0 < self.beta < 1:
            raise ValueError(
                f"dynamic: need lr >= 0 (got {self.lr}), segment >= 1 (got {self.segment}), 0 <= decay < 1 "
                f"(got {self.decay}) and 0 < beta < 1 (got {self.beta})"
            )
        if self.rule not in ("sgd", "rms"):
            raise ValueError(f"dynamic.rule={self.rule!r}: choose 'sgd' or 'rms'")


class DynamicState(NamedTuple):
    """A stream read by :class:`DynamicEvaluator`: the model's own state and what the weights learned."""

    model: list | None
    """the model's state after the tokens read (None for families that carry none)"""
    delta: dict[str, torch.Tensor] | None
    """change of every parameter (by name) since the stored weights; None: nothing learned yet"""
    sq: dict[str, torch.Tensor] | None
    """rms: running mean of the squared gradients, by name"""
    steps: int
    """steps taken so far (rms bias correction)"""


class DynamicEvaluator:
    """Reads streams with gradient steps on the model's parameters (see the module docstring).

    Args:
        model: any HopeLM.
        config: lr, rule, segment, decay (``DynamicConfig``).
    """

    __test__ = False  # not a pytest class

    def __init__(self, model: HopeLM, config: DynamicConfig | None = None) -> None:
        self.model, self.config = model, config or DynamicConfig()

    def step(self, idx_BT: torch.Tensor, state: DynamicState | None = None) -> tuple[torch.Tensor, DynamicState]:
        """Logits [1, T, V] of the stream piece, each segment's with the weights learned before it, and the new
        state."""
        if idx_BT.shape[0] != 1:
            raise ValueError(
                f"dynamic evaluation reads one stream at a time (its own weights), got batch {idx_BT.shape[0]}"
            )
        state = state or DynamicState(None, None, None, 0)
        carries, context = self.model.carries_state, state.model
        logits, T = [], idx_BT.shape[1]
        for start in range(0, T, self.config.segment):
            end = min(T, start + self.config.segment)
            # carried: from the state after the previous segment; else: the call's tokens up to here, re-read
            first, read_from = (start, state.model) if carries else (0, context)
            segment_logits, state = self._segment(idx_BT, first, start, end, read_from, state)
            logits.append(segment_logits)
        return torch.cat(logits, dim=1), state

    def _segment(self, idx_BT, first: int, start: int, end: int, read_from: list | None, state: DynamicState):
        """Read ``idx[first:end]`` from the model state ``read_from``, keep the logits of ``[start, end)``, then
        step on their loss (targets inside the call only)."""
        cfg = self.config
        params = dict(self.model.named_parameters())
        with torch.enable_grad():
            fast = {
                n: (p.detach() if state.delta is None else p.detach() + state.delta[n]).requires_grad_()
                for n, p in params.items()
            }
            out, model_state = functional_call(self.model, fast, (idx_BT[:, first:end], read_from))
            logits = out[:, start - first :]
            n_pairs = min(end, idx_BT.shape[1] - 1) - start  # predictions whose target lies inside the call
            grads = None
            if n_pairs > 0 and cfg.lr > 0:
                loss = next_token_loss(logits[:, :n_pairs], idx_BT[:, start + 1 : start + 1 + n_pairs])
                grads = torch.autograd.grad(loss, list(fast.values()), allow_unused=True)
        state = state._replace(model=tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, model_state))
        if grads is not None:
            state = self._learn(state, dict(zip(fast, grads, strict=True)))
        return logits.detach(), state

    @torch.no_grad()
    def _learn(self, state: DynamicState, grads: dict[str, torch.Tensor | None]) -> DynamicState:
        """One step of the rule on every parameter (new tensors: earlier states stay valid)."""
        cfg, k = self.config, state.steps + 1
        delta, sq = {}, {}
        for n, p in self.model.named_parameters():
            g = grads[n] if grads[n] is not None else torch.zeros_like(p)  # a parameter this segment does not reach
            if cfg.rule == "rms":
                sq[n] = (1 - cfg.beta) * g * g + (0 if state.sq is None else cfg.beta * state.sq[n])
                g = g / ((sq[n] / (1 - cfg.beta**k)).sqrt() + cfg.eps)
            delta[n] = -cfg.lr * g + (0 if state.delta is None else (1 - cfg.decay) * state.delta[n])
        return state._replace(delta=delta, sq=sq or None, steps=k)

    def discard(self, state: DynamicState) -> DynamicState:
        """The same stream with what the weights learned forgotten (the model's context and statistics kept)."""
        return state._replace(delta=None)

    def fresh_context(self, state: DynamicState) -> DynamicState:
        """What the weights learned, without the model's context (a new document or window)."""
        return state._replace(model=None)

    @torch.no_grad()
    def consolidate(self, state: DynamicState, max_change: float | None = None) -> DynamicState:
        """Write the learned change into the model's weights and return the state with none left. ``max_change``
        caps it per parameter tensor: ||change||_F <= max_change * ||W||_F (scaled down, direction kept)."""
        if state.delta is not None:
            for n, p in self.model.named_parameters():
                d = state.delta[n]
                p.add_(d if max_change is None else d * change_scale([d], [p], max_change))
        return state._replace(delta=None)
