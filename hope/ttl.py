"""Test-time learning for HOPE models: the CMS levels keep learning from the stream (NL Eq. 31, in context).

    learner = TestTimeLearner(model, inner_lr=1e-3)           # objective "teach": the LM loss's gradient
    logits, state = learner.step(idx_BT, state=None)            # read the stream, learn from it
    logits, state = learner.step(more_BT, state)                # continue the same streams
    state = learner.discard(state)                              # forget what was learned (keep the context)
    state = learner.consolidate(state)                          # or write it into the model's weights

Level l of every block's CMS takes one step every ``cms_levels[l].tokens_per_update`` tokens of the stream, on the
gradients summed over those tokens (``hope.layers.cms``). With objective ``"teach"`` the gradient is that of the
next-token loss (summed, so each stream's update is independent of the batch) through the LM head:

1. ``step`` cuts the input into pieces that never cross an update of the fastest level, so every token of a piece
   reads the same fast weights;
2. per piece, the model's own forward runs (``HopeLM.forward``, so there is one forward path), with forward hooks
   that record each CMS layer's input and output y; the loss is taken on the piece's own next-token pairs (tokens
   seen, no look-ahead), and dL/dy of every CMS layer is backpropagated;
3. each CMS layer then learns from the piece with ``teach = dL/dy`` (exact: y is the same as in step 2).

Hooks rather than a learning flag in ``HopeLM.forward``: the model stays a plain function of (tokens, state), and
the learner only observes it. A hook also turns the embedding's output into a detached leaf that requires grad, so
the forward builds a graph from there to the loss even when every weight is frozen (and none reaches the weights).

The pair (last token of a piece, first token of the next) teaches nothing: its target arrives in the next call,
after the graph of the previous piece is gone. The fast weights live in the state (per stream), never in the
model, until ``consolidate``. The in-context steps are not differentiated (no meta-gradient through them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hope.layers.cms import ContinuumMemory
from hope.layers.hope_block import HopeState
from hope.loss import next_token_loss
from hope.model import HopeLM

__all__ = ["TestTimeLearner", "change_scale"]


class TestTimeLearner:
    """Drives in-context learning of a HOPE / Hope-Attention model's CMS levels; see the module docstring.

    Args:
        model: a HopeLM whose blocks have a ``cms`` (families ``hope`` and ``hope-attention``).
        inner_lr: step size of every level (or one per level); None keeps the model's ``cms_inner_lr``.
            Setting it changes the CMS modules of ``model`` (they hold the in-context step sizes).
        objective: "teach" (next-token loss) or "reconstruction" (layer-local; no loss needed); None keeps the
            model's.
        max_step: cap of each in-context step, as a fraction of the stored weights' norm (``cms_max_step``,
            ``hope.ops.common.level_step``); None keeps the model's.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        model: HopeLM,
        inner_lr: float | list[float] | None = None,
        objective: str | None = None,
        max_step: float | None = None,
    ):
        self.model = model
        self.cms: list[ContinuumMemory] = [getattr(block, "cms", None) for block in model.blocks]
        if any(cms is None for cms in self.cms):
            raise ValueError(
                f"model.family={model.config.family!r} has no CMS levels; use a hope or hope-attention model."
            )
        for cms in self.cms:
            if inner_lr is not None:
                cms.inner_lr = [inner_lr] * len(cms.levels) if isinstance(inner_lr, int | float) else list(inner_lr)
            if objective is not None:
                if objective not in ("teach", "reconstruction"):
                    raise ValueError(f"objective={objective!r}; choose 'teach' or 'reconstruction'")
                cms.objective = objective
            if max_step is not None:
                if max_step <= 0:
                    raise ValueError(f"max_step={max_step} must be > 0 (or None: the model's cms_max_step)")
                cms.max_step = max_step

    def _piece_len(self, state: list | None) -> int:
        """Tokens until the next update of any level (a piece never crosses one; see the module docstring)."""
        cms_state = None if state is None else state[0].cms
        pos = 0 if cms_state is None else cms_state.position
        return min(C - pos % C for C in self.cms[0].periods)

    def step(self, idx_BT: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        """Logits [B, T, V] of the stream piece (each token read with the fast weights learned before it) and the
        advanced state (mixer context and CMS fast weights, detached)."""
        logits, start = [], 0
        while start < idx_BT.shape[1]:
            end = min(idx_BT.shape[1], start + self._piece_len(state))
            piece_logits, state = self._learn(idx_BT[:, start:end], state)
            logits.append(piece_logits)
            start = end
        return torch.cat(logits, dim=1), state

    def _learn(self, idx_BT: torch.Tensor, state: list | None) -> tuple[torch.Tensor, list]:
        """One piece (steps 2-3 of the module docstring): logits and the advanced, detached state."""
        model = self.model
        with torch.enable_grad():
            with _recording_cms(model) as inputs_outputs:
                logits, read_state = model(idx_BT, state)  # reads the fast weights; the CMS learn below
            inputs, outputs = zip(*inputs_outputs, strict=True)
            teach = [None] * len(outputs)
            if self.cms[0].objective == "teach":
                if idx_BT.shape[1] > 1:
                    loss = next_token_loss(logits[:, :-1], idx_BT[:, 1:], reduction="sum")
                    teach = list(torch.autograd.grad(loss, outputs))
                else:  # no pair inside the piece: nothing to learn from, but positions still advance
                    teach = [torch.zeros_like(y) for y in outputs]
        new_state = []
        for cms, o, t, read in zip(self.cms, inputs, teach, read_state, strict=True):
            _, cms_state = cms(o.detach(), read.cms, learn=True, teach=t)
            new_state.append(HopeState(read.mixer, cms_state).detach())
        return logits.detach(), new_state

    def discard(self, state: list) -> list:
        """The same streams with the CMS's in-context learning forgotten (the mixers' context is kept)."""
        return [HopeState(s.mixer, None) for s in state]

    def fresh_context(self, state: list) -> list:
        """The CMS's in-context learning kept, the mixers' context forgotten (a new document or window)."""
        return [HopeState(None, s.cms) for s in state]

    def consolidate(self, state: list, max_change: float | None = None) -> list:
        """Write the fast weights into the model (mean over the batch; exact for one stream), so that a deployed
        model keeps what it learned; returns the state with no pending change (position and partial sums kept).
        ``max_change`` caps one consolidation per level: the change of each level's (gate, up, down) weights has a
        Frobenius norm of at most ``max_change`` times theirs (a larger one is scaled down, its direction kept)."""
        return [
            HopeState(s.mixer, None if s.cms is None else cms.consolidate(_capped(cms, s.cms, max_change)))
            for cms, s in zip(self.cms, state, strict=True)
        ]


def change_scale(deltas: list[torch.Tensor], weights: list[torch.Tensor], max_change: float) -> float:
    """The factor (<= 1) that brings the joint Frobenius norm of ``deltas`` down to ``max_change`` times that of
    ``weights`` (1 if it is already within it)."""
    change = sum(float(d.detach().double().pow(2).sum()) for d in deltas) ** 0.5
    norm = sum(float(w.detach().double().pow(2).sum()) for w in weights) ** 0.5
    return 1.0 if change <= max_change * norm else max_change * norm / change


def _capped(cms: ContinuumMemory, cms_state, max_change: float | None):
    """``cms_state`` with each level's batch-mean change scaled by ``change_scale`` (unchanged if no cap)."""
    if max_change is None:
        return cms_state
    delta = []
    for level, d in zip(cms.levels, cms_state.delta, strict=True):
        if d is not None:
            scale = change_scale([x.mean(0) for x in d], list(level.weights()), max_change)
            d = tuple(x * scale for x in d)
        delta.append(d)
    return cms_state._replace(delta=tuple(delta))


@contextmanager
def _recording_cms(model: HopeLM) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the context, the model's forward records (input, output y) of every block's CMS, in block order,
    starts its graph at the embedding's output (a detached leaf that requires grad), and only reads the CMS fast
    weights (a model with ``cms_learn_in_context`` learns here from the learner's objective, not in its forward)."""
    records: list[tuple[torch.Tensor, torch.Tensor]] = []
    in_context = [block.cms.learn_in_context for block in model.blocks]
    handles = [model.embed.register_forward_hook(lambda module, args, out: out.detach().requires_grad_())]
    for block in model.blocks:
        handles.append(block.cms.register_forward_hook(lambda module, args, out: records.append((args[0], out[0]))))
        block.cms.learn_in_context = False
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for block, flag in zip(model.blocks, in_context, strict=True):
            block.cms.learn_in_context = flag
