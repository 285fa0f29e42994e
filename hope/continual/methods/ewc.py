"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), online form (Schwarz et al. 2018).

The loss gets a quadratic penalty that holds each parameter near its value after the earlier task(s) (the anchor
θ*), weighted by how much that task's log-likelihood depends on it (the diagonal of the Fisher information F)::

    penalty = λ/2 · Σ_i F_i (θ_i − θ*_i)²            # 0 at the anchor, grows quadratically with the distance

F_i is the empirical Fisher: the mean over sequences of (∂ log p(sequence) / ∂θ_i)², one sequence at a time
(``fisher_batch_size`` 1; larger batches are cheaper and underestimate it). After each task of the retention harness,
F ← γ F + F_task and θ* ← θ (online EWC: one penalty however many tasks). In ``hope finetune`` the earlier task
is what the starting checkpoint learned: F comes from ``fisher_source`` data and θ* is the starting weights.
Fisher and anchor are stored in the run's checkpoints (the method state), so a resumed run keeps them.
"""

from __future__ import annotations

import torch
from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.data.blocks import batches, source_blocks
from hope.loss import next_token_loss
from hope.tokenizer import Tokenizer


def diagonal_fisher(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 1
) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of the batch's next-token loss, for every trainable parameter."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    device = next(model.parameters()).device
    was_training, count = model.training, 0
    model.eval()  # no dropout: the Fisher of the model as it is used
    for batch in batches(inputs, labels, batch_size):
        logits, _ = model(batch["input_ids"].to(device))
        # summed over tokens: the gradient of the sequence's log-likelihood, not of its per-token mean
        loss = next_token_loss(logits, batch["labels"].to(device), reduction="sum")
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (name, _), grad in zip(params.items(), grads, strict=True):
            if grad is not None:
                fisher[name] += grad.detach() ** 2
        count += 1
    model.train(was_training)
    return {n: f / max(count, 1) for n, f in fisher.items()}


class EWC(FinetuneMethod):
    """Full finetuning plus the EWC penalty (see the module docstring).

    Args:
        lam: penalty strength λ (the Fisher is per sequence of ``seq_len`` tokens, so λ depends on it; sweep).
        gamma: decay of the earlier tasks' Fisher when a new task's is added (online EWC; 1: plain sum).
        fisher_blocks: sequences the Fisher is estimated from (per task in the harness).
        fisher_batch_size: sequences per gradient (1: the empirical Fisher proper).
        fisher_source: ``hope finetune`` only: data of what the starting checkpoint must not forget (a
            ``data.source`` spec, e.g. ``default``); its first ``fisher_blocks`` blocks of the train split.
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "ewc"

    def __init__(
        self,
        lam: float = 100.0,
        gamma: float = 1.0,
        fisher_blocks: int = 32,
        fisher_batch_size: int = 1,
        fisher_source: str | None = None,
        loop: TaskLoop | None = None,
    ) -> None:
        super().__init__(loop)
        if lam < 0 or not 0 <= gamma <= 1:
            raise ValueError(f"EWC needs lam >= 0 and 0 <= gamma <= 1 (got lam={lam}, gamma={gamma}).")
        self.lam, self.gamma = lam, gamma
        self.fisher_blocks, self.fisher_batch_size, self.fisher_source = fisher_blocks, fisher_batch_size, fisher_source
        self._fisher: dict[str, torch.Tensor] = {}
        self._anchor: dict[str, torch.Tensor] = {}
        self._last_penalty = 0.0

    def consolidate(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add the Fisher of ``inputs`` to the accumulated one and move the anchor to the current weights."""
        new = diagonal_fisher(model, inputs[: self.fisher_blocks], labels[: self.fisher_blocks], self.fisher_batch_size)
        for name, f in new.items():
            self._fisher[name] = self.gamma * self._fisher[name] + f if name in self._fisher else f
        self._anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in self._fisher}

    def setup_data(self, model: nn.Module, tokenizer: Tokenizer, seq_len: int) -> None:
        """Fisher and anchor from ``fisher_source`` (``hope finetune``); nothing if restored or no source is set."""
        if self._fisher or self.fisher_source is None:
            return  # restored from a checkpoint, or the harness: the first task's Fisher comes after it
        self.consolidate(model, *source_blocks(self.fisher_source, tokenizer, seq_len, self.fisher_blocks))

    def check_finetune(self) -> None:
        """Raise unless a Fisher exists (``fisher_source`` set or restored): ``hope finetune`` has no earlier task."""
        if not self._fisher:
            raise ValueError(
                "EWC in `hope finetune` needs the data the starting checkpoint must not forget: set "
                "method.init_args.fisher_source (e.g. `default`, or the earlier task's data)."
            )

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """λ/2 · Σ_i F_i (θ_i − θ*_i)² over the parameters with a Fisher, or None before the first consolidation."""
        if not self._fisher:
            return None
        total = 0.0
        for name, p in model.named_parameters():
            if name in self._fisher:
                fisher, anchor = self._fisher[name].to(p.device), self._anchor[name].to(p.device)
                total = total + (fisher * (p - anchor) ** 2).sum()
        penalty = 0.5 * self.lam * total
        self._last_penalty = float(penalty.detach())
        return penalty

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Consolidate the task just learned: add its Fisher and move the anchor to the current weights."""
        self.consolidate(model, inputs, labels)

    def step_stats(self) -> dict[str, float]:
        """The last penalty's value, logged as ``train/penalty``."""
        return {"penalty": self._last_penalty}

    def state_dict(self) -> dict:
        """The base state plus the Fisher and anchor tensors, so a resumed run keeps the penalty."""
        return {**super().state_dict(), "fisher": self._fisher, "anchor": self._anchor}

    def load_state_dict(self, state: dict) -> None:
        """Restore the task count, Fisher and anchor saved by ``state_dict``."""
        super().load_state_dict(state)
        self._fisher, self._anchor = dict(state.get("fisher", {})), dict(state.get("anchor", {}))
