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

Two methods ship: ``EpochFinetune`` (the forgetting baseline) and ``InContext`` (no weight update; the baseline
for models that learn at test time).
"""

from __future__ import annotations

import math
import random

import torch
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


class EpochFinetune(ContinualMethod):
    """Finetune every weight on each task in turn with AdamW: the baseline that forgets.

    Per task: the training texts are shuffled each epoch, packed as ``[bos] text [eos] ...`` (like pretraining),
    cut into sequences of ``seq_len`` (the tail padded, its padding not scored) and trained on for ``epochs``
    epochs with a fresh AdamW (betas 0.9/0.95) at a constant ``lr``, gradient norm clipped to ``grad_clip``.
    The optimizer state does not carry over between tasks.

    Args:
        lr: learning rate. 1e-3 suits the ~3M-parameter debug models; use ~1e-5 to 5e-5 for large ones.
        epochs: passes over each task's training text.
        batch_size: sequences per step.
        seq_len: tokens per sequence (at most the model's ``max_seq_len``).
        weight_decay: AdamW weight decay (all parameters).
        grad_clip: max gradient norm (0: no clipping).
        seed: order of texts in each epoch.
    """

    name = "finetune"

    def __init__(self, lr: float = 1e-3, epochs: int = 10, batch_size: int = 8, seq_len: int = 128,
                 weight_decay: float = 0.0, grad_clip: float = 1.0, seed: int = 0) -> None:
        self.lr, self.epochs, self.batch_size, self.seq_len = lr, epochs, batch_size, seq_len
        self.weight_decay, self.grad_clip, self.seed = weight_decay, grad_clip, seed
        self._tasks_learned = 0

    def learn(self, model: nn.Module, task: Task, tokenizer: Tokenizer) -> dict[str, float]:
        from hope.lit.module import next_token_loss

        seq_len = min(self.seq_len, model.config.max_seq_len)
        device = next(model.parameters()).device
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, betas=(0.9, 0.95),
                                      weight_decay=self.weight_decay)
        rng = random.Random(f"{self.seed}/{self._tasks_learned}")
        encoded = tokenizer.encode_batch(task.train, bos=True, eos=True)
        model.train()
        losses = []
        for _ in range(self.epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            inputs, labels = pack_blocks([t for i in order for t in encoded[i]], seq_len)
            for start in range(0, len(inputs), self.batch_size):
                x, y = inputs[start : start + self.batch_size].to(device), labels[start : start + self.batch_size]
                logits, _ = model(x)
                loss = next_token_loss(logits, y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                optimizer.step()
                losses.append(loss.item())
        model.eval()
        self._tasks_learned += 1
        return {"steps": float(len(losses)), "loss_first": losses[0], "loss_last": losses[-1]}


def pack_blocks(stream: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` [n, seq_len]: the stream cut into next-token blocks; labels past its end are -100."""
    n = max(1, math.ceil((len(stream) - 1) / seq_len))
    tokens = torch.zeros(n * seq_len + 1, dtype=torch.long)
    tokens[: len(stream)] = torch.tensor(stream, dtype=torch.long)
    labels = tokens[1:].clone()
    labels[max(len(stream) - 1, 0) :] = -100
    return tokens[:-1].view(n, seq_len), labels.view(n, seq_len)


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
