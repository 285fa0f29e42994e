"""Learning a task by reading it: its training text is streamed through a model that learns while it reads
(``hope.online``), as a deployed model would read new material, with no optimizer and no epochs.

- ``TestTimeLearning`` (hope, hope-attention): the CMS levels learn in context (``hope.ttl``). After each task the
  fast weights are either consolidated into the model (``ttl.consolidate``: the deployed model keeps them; each
  level's change capped by ``ttl.max_change``) or kept in the state handed to every test (``EvalContext.state``:
  the tests read with them, and they carry on into the next task). The mixers' context (self-modifying memories,
  KV cache) is not handed over: remembering the text itself is ``InContext``'s.
- ``DynamicEvaluation`` (every family): gradient steps on all weights over the text (Krause et al.;
  ``hope.dynamic``), consolidated into the model after each task (a plain model cannot read a weight change from
  a state), each parameter tensor's change capped by ``max_change``.

The cap (both methods): one consolidation changes each group of weights (a CMS level's gate, up and down matrices;
a parameter tensor) by at most ``max_change`` times their Frobenius norm; a larger change is scaled down as a whole,
its direction kept (``hope.ttl.change_scale``). The text is streamed as training packs it, ``[bos] text [eos]`` per
training text, in calls of ``chunk`` tokens, ``passes`` times; every token is scored before it is learned from.
"""

from __future__ import annotations

import torch
from torch import nn

from hope.continual.method import ContinualMethod, EvalContext, Task
from hope.dynamic import DynamicConfig
from hope.online import OnlineLM, TTLConfig, online_model
from hope.tokenizer import Tokenizer


class _Reading(ContinualMethod):
    """Streams each task's text through ``self._reader`` (set in ``setup``), carrying the state."""

    _reader: OnlineLM

    def __init__(self, chunk: int | None, passes: int) -> None:
        if passes < 1 or (chunk is not None and chunk < 2):
            raise ValueError(f"need passes >= 1 (got {passes}) and chunk >= 2 or None (got {chunk})")
        self.chunk, self.passes = chunk, passes

    def _read(self, model: nn.Module, task: Task, tokenizer: Tokenizer, state):
        """The state after streaming the task's text ``passes`` times, and the number of tokens read."""
        tokens = [t for ids in tokenizer.encode_batch(task.train, bos=True, eos=True) for t in ids]
        idx = torch.tensor([tokens], device=next(model.parameters()).device)
        chunk = min(self.chunk or model.config.max_seq_len, model.config.max_seq_len)
        with torch.no_grad():
            for _ in range(self.passes):
                for start in range(0, len(tokens), chunk):
                    _, state = self._reader(idx[:, start : start + chunk], state)
        return state, self.passes * len(tokens)

    def _consolidate(self, model: nn.Module, state, max_change: float | None):
        """Consolidate ``state`` into the model; returns it and the relative Frobenius change of all weights."""
        before = [p.detach().clone() for p in model.parameters()]
        state = self._reader.consolidate(state, max_change)
        pairs = zip(model.parameters(), before, strict=True)
        change = sum(float((p.detach() - b).double().pow(2).sum()) for p, b in pairs)
        norm = sum(float(b.double().pow(2).sum()) for b in before)
        return state, (change / norm) ** 0.5


class TestTimeLearning(_Reading):
    """Learn each task by streaming its text through HOPE's test-time learner (see the module docstring).

    Args:
        ttl: the learner's ``inner_lr`` and ``objective`` (None: the model's), ``consolidate`` (write the fast
            weights into the model after each task, or keep them in the state the tests read) and ``max_change``
            (cap of one consolidation per CMS level).
        chunk: tokens per call of the learner (default and at most: the model's ``max_seq_len``).
        passes: reads of each task's text.
    """

    __test__ = False  # not a pytest class
    name = "ttl"

    def __init__(self, ttl: TTLConfig | None = None, chunk: int | None = None, passes: int = 1) -> None:
        super().__init__(chunk, passes)
        self.ttl = ttl or TTLConfig()
        self._state = None

    def setup(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        """Build the learner (a clear error for a family without CMS levels); nothing learned yet."""
        self._reader, self._state = online_model(model, ttl=self.ttl), None

    def learn(self, model: nn.Module, task: Task, tokenizer: Tokenizer) -> dict[str, float]:
        """Stream the task's text, then consolidate or keep the fast weights; returns tokens read and the change."""
        state, tokens = self._read(model, task, tokenizer, self._state)
        change = 0.0
        if self.ttl.consolidate:
            state, change = self._consolidate(model, state, self.ttl.max_change)
        self._state = self._reader.fresh_context(state)
        return {"tokens": float(tokens), "relative_change": change}

    def eval_context(self, model: nn.Module, task: Task | None, tokenizer: Tokenizer) -> EvalContext:
        """The fast weights learned so far (all tasks, the general metric too), unless they were consolidated."""
        return EvalContext(state=None if self.ttl.consolidate else self._state)


class DynamicEvaluation(_Reading):
    """Learn each task by dynamic evaluation over its text, consolidated into the model (see the module docstring).

    Args:
        dynamic: ``lr``, ``rule`` (rms or sgd), ``segment`` (tokens per step), ``decay`` (pull toward the weights
            the task started from) of ``hope.dynamic.DynamicConfig``.
        max_change: cap of one consolidation per parameter tensor (None: no cap).
        chunk: tokens per call (default and at most: the model's ``max_seq_len``).
        passes: reads of each task's text.
    """

    name = "dynamic"

    def __init__(
        self,
        dynamic: DynamicConfig | None = None,
        max_change: float | None = None,
        chunk: int | None = None,
        passes: int = 1,
    ) -> None:
        super().__init__(chunk, passes)
        if max_change is not None and max_change <= 0:
            raise ValueError(f"max_change={max_change} must be > 0 (or None: no cap)")
        self.dynamic, self.max_change = dynamic or DynamicConfig(), max_change

    def setup(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        """Build the evaluator over the model's weights."""
        self._reader = online_model(model, dynamic=self.dynamic)

    def learn(self, model: nn.Module, task: Task, tokenizer: Tokenizer) -> dict[str, float]:
        """Stream the task's text with gradient steps, then write the change into the weights; returns tokens read,
        steps taken and the relative change of the weights."""
        state, tokens = self._read(model, task, tokenizer, None)
        steps = state.steps
        _, change = self._consolidate(model, state, self.max_change)
        return {"tokens": float(tokens), "steps": float(steps), "relative_change": change}
