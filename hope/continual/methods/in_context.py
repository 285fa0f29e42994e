"""``InContext``: no weight update; the baseline for models that learn at test time."""

from __future__ import annotations

from torch import nn

from hope.continual.method import ContinualMethod, EvalContext, Task
from hope.tokenizer import Tokenizer


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
        """Forget every task kept so far; the model itself is left as it is."""
        self._seen = {}

    def learn(self, model: nn.Module, task: Task, tokenizer: Tokenizer) -> dict[str, float]:
        """Keep the task's training text as tokens (no weight update); returns the total context tokens kept."""
        self._seen[task.name] = tokenizer.encode("\n".join(task.train) + "\n", bos=False)
        return {"context_tokens": float(sum(len(t) for t in self._seen.values()))}

    def eval_context(self, model: nn.Module, task: Task | None, tokenizer: Tokenizer) -> EvalContext:
        """Kept tokens to prepend (``scope``: all tasks seen, or the tested one), at most the last ``max_tokens``."""
        if task is None:
            return EvalContext()
        if self.scope == "task":
            tokens = list(self._seen.get(task.name, []))
        else:
            tokens = [t for seen in self._seen.values() for t in seen]
        if self.max_tokens is not None:
            tokens = tokens[-self.max_tokens :] if self.max_tokens > 0 else []
        return EvalContext(tokens)
