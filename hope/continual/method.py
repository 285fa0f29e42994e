"""Continual learning: how a model takes in a sequence of tasks. One small interface, ``ContinualMethod``, and the
data it works on (``Task``, ``TestSet``, ``EvalContext``).

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

The methods are in ``hope.continual.methods``: ``InContext`` (no weight update; the baseline for models that learn
at test time) and the ones that update weights (``FullFinetune``, the forgetting baseline, also under its earlier
name ``EpochFinetune``; ``LoRA``, ``EWC``, ``Replay``, ...), which subclass ``hope.continual.finetune.FinetuneMethod``
and also run in ``hope finetune``. The task suites and the harness that drives them are in
``hope.evaluation.retention``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from hope.tokenizer import Tokenizer


@dataclass
class EvalContext:
    """What a method adds when a task is tested: ``tokens`` prepended to every test input (the most recent ones
    are kept if they do not fit; a stateful model reads the rest into its state) and ``state`` to start from."""

    tokens: list[int] = field(default_factory=list)
    state: list | None = None


class TestSet(Protocol):
    """A task's test split and metric."""

    metric: str
    """Name of the metric (``accuracy``, ``perplexity``, ...), shown in reports."""
    higher_is_better: bool
    chance: float | None
    """The score of guessing, drawn in plots (``None`` if it has none)."""

    def evaluate(self, model: nn.Module, tokenizer: Tokenizer, context: EvalContext) -> float:
        """Score of ``model`` on this test split given the method's ``context``, in the unit of ``metric``."""


@dataclass
class StudyItem:
    """A piece of a task's training material as a self-quiz: the ``sources`` (training texts that state it), a
    ``prompt`` answered by ``answer``, and the ``candidates`` (``answer`` among them) the model ranks."""

    sources: list[str]
    prompt: str
    answer: str
    candidates: list[str]
    relation: str = ""
    """What kind of fact it is (``birthplace``, ...): a study policy may choose by it; empty if the suite has none."""
    forms: dict[str, list[str]] = field(default_factory=dict)
    """The same fact in other forms, by study operator (``paraphrase``, ``qa``, ``reverse``, ``implication``;
    ``hope.continual.study_policy``), written by the suite; an operator without its form does not apply."""


@dataclass
class Task:
    """One task of a sequence: what is learned (``train``) and how it is tested (``test``); ``study`` holds the
    training material as self-quiz items, for methods that quiz themselves (empty if the suite has none)."""

    name: str
    train: list[str]
    test: TestSet
    study: list[StudyItem] = field(default_factory=list)


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
        """Hyper-parameters for the report: the public attributes set in ``__init__`` (dataclasses as dicts)."""
        return {
            k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in vars(self).items()
            if not k.startswith("_")
        }
