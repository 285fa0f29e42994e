"""Continual-learning methods: how a model takes in a sequence of tasks. One small interface, ``ContinualMethod``.

The harness calls, in this order::

    method.setup(model, tokenizer)                      # once, before anything is evaluated
    for task in tasks:
        stats = method.learn(model, task, tokenizer)    # update the model and/or the method's own memory
        for every task t:                                # evaluate all tasks, learned or not
            context = method.eval_context(model, t, tokenizer)
            score = t.test.evaluate(model, tokenizer, context)
    method.eval_context(model, None, tokenizer)         # for the held-out general metric

Rules for implementers:

- ``learn`` may change ``model`` in place (weights, adapters, hooks) and keep anything it wants on ``self``; it
  sees only ``task.train`` (never a test split) and returns optional statistics (a dict of floats, logged to
  TensorBoard and the JSON report). It must leave the model in eval mode.
- ``eval_context`` must use only tasks already passed to ``learn`` (the harness also asks it about tasks not
  learned yet, to measure forward transfer). It returns an ``EvalContext``: tokens to prepend to every test
  input and/or a recurrent state for the model to start from (what a test-time-learning model such as HOPE or
  Titans built while reading the task). ``task=None`` asks for the context of the general held-out metric.
- Hyper-parameters are ``__init__`` arguments with defaults and a docstring, so ``hope eval retention
  --method your.module.YourMethod --method.lr 0.01`` configures them and ``config()`` records them.

``InContext`` (no weight update; the baseline for models that learn at test time) is here. The methods that update
weights are ``hope.finetune.methods`` (``FullFinetune``, the forgetting baseline, also under its earlier name
``EpochFinetune``; ``LoRA``, ``EWC``, ``Replay``, ...): each is a ``ContinualMethod`` and also runs in ``hope
finetune``.
"""

from __future__ import annotations

from torch import nn

from hope.evaluation.retention.tasks import EvalContext, Task
from hope.tokenizer import Tokenizer


class ContinualMethod:
    """Base class of continual-learning methods (see the module docstring for the contract)."""

    name = "method"

    def setup(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        """Called once before the first evaluation (e.g. wrap layers, snapshot weights, reset memory)."""

    def learn(self, model: nn.Module, task: Task, tokenizer: Tokenizer) -> dict[str, float] | None:
        """Learn ``task.train``; return optional statistics."""
        raise NotImplementedError

    def eval_context(self, model: nn.Module, task: Task | None, tokenizer: Tokenizer) -> EvalContext:
        """What to add when ``task`` is tested (``None``: the general held-out metric). Default: nothing."""
        return EvalContext()

    def config(self) -> dict:
        """Hyper-parameters for the report: the public attributes set in ``__init__``."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class InContext(ContinualMethod):
    """No weight update: tasks are "learned" by keeping their training text, which is prepended to the test
    inputs as context. The context that does not fit the model's window is dropped (Transformer++) or read
    into the recurrent state (stateful models), so forgetting here is the context window overflowing.

    Args:
        scope: ``seen`` prepends the text of every task learned so far, oldest first (task-agnostic, the
            realistic setting); ``task`` prepends only the tested task's own text, if it was learned
            (an oracle that knows which task a test input belongs to).
        max_tokens: keep at most this many of the most recent context tokens (``None``: all; the model's
            window still bounds what a Transformer++ sees).
    """

    name = "in_context"

    def __init__(self, scope: str = "seen", max_tokens: int | None = None) -> None:
        if scope not in ("seen", "task"):
            raise ValueError(f"scope={scope!r}: choose 'seen' or 'task'")
        self.scope, self.max_tokens = scope, max_tokens
        self._seen: dict[str, list[int]] = {}

    def setup(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        self._seen = {}

    def learn(self, model: nn.Module, task: Task, tokenizer: Tokenizer) -> dict[str, float]:
        self._seen[task.name] = tokenizer.encode("\n".join(task.train) + "\n", bos=False)
        return {"context_tokens": float(sum(len(t) for t in self._seen.values()))}

    def eval_context(self, model: nn.Module, task: Task | None, tokenizer: Tokenizer) -> EvalContext:
        if task is None:
            return EvalContext()
        if self.scope == "task":
            tokens = list(self._seen.get(task.name, []))
        else:
            tokens = [t for seen in self._seen.values() for t in seen]
        if self.max_tokens is not None:
            tokens = tokens[-self.max_tokens :] if self.max_tokens > 0 else []
        return EvalContext(tokens)
