"""``FinetuneMethod``: one object per continual-learning method, used by ``hope finetune`` and by the retention harness.

A method is a set of hooks around an ordinary next-token training step. ``hope finetune``
(``hope.finetune.module.FinetuneLitModule``) calls them from Lightning; the retention harness calls
``setup``/``learn``/``eval_context`` (``hope.evaluation.retention.ContinualMethod``), and ``learn`` runs the same
hooks in a small loop of its own (settings in ``TaskLoop``). The hooks, in the order they run:

=========================  =======================================================================================
``prepare(model)``         structural changes: LoRA adapters, memory-layer settings (idempotent; before weights load)
``trains(name)``           which parameters may train (combined with ``freeze``/``train_only`` patterns)
``lr_scales(model)``       per-parameter lr multipliers (layer-wise decay)
``make_optimizer(groups)`` AdamW by default; SMF uses SGD
``setup_data(model, ...)`` data-dependent state that is missing: EWC's Fisher, SMF's background, replay's pool
``epoch_blocks(...)``      harness only: what one epoch of a task trains on (gap-focused self-study reorders it)
``mix_batch(batch, step)`` the batch actually trained on (replay appends earlier/general examples)
``penalty(model)``         a term added to the loss (EWC)
``before_optimizer_step``  after backward, before clipping and the step (gradual unfreezing drops gradients)
``end_task(model, ...)``   after a harness task (EWC: Fisher and anchor; replay: fill the buffer)
``task_stats()``           after ``end_task``: statistics of the task just learned (self-study: gaps closed)
``state_dict()``           what a checkpoint must keep to resume exactly (Fisher, anchor, buffer)
=========================  =======================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hope.config import HOPE_FAMILIES
from hope.continual.method import ContinualMethod, Task
from hope.continual.params import configure_trainable, param_groups
from hope.data.blocks import batches, text_blocks
from hope.loss import next_token_loss
from hope.optim import OptimConfig, finetune_level_optimizer, warmup_cosine
from hope.tokenizer import Tokenizer


@dataclass
class TaskLoop:
    """How a method learns one task of the retention harness by itself (``hope finetune`` uses the Trainer and
    ``model.optim`` instead). Each task gets a fresh optimizer at a constant lr, built as ``hope finetune`` builds
    its own (``FinetuneMethod.build_optimizer``): HOPE models keep their CMS level periods, so level l steps every
    ``cms_levels[l].steps_per_update`` steps of a task (a level whose period exceeds a task's steps does not move
    in it)."""

    lr: float = 1e-3
    """Learning rate (1e-3 suits the ~3M-parameter debug models with AdamW; SMF with SGD uses ~1 to 5)."""
    epochs: int = 10
    """Passes over each task's training text."""
    batch_size: int = 8
    """Sequences per step (before replay adds its own)."""
    seq_len: int = 128
    """Tokens per sequence (at most the model's max_seq_len)."""
    weight_decay: float = 0.0
    """Weight decay of matrices (AdamW's decoupled decay)."""
    grad_clip: float = 1.0
    """Max gradient norm (0: no clipping)."""
    seed: int = 0
    """Order of the texts in each epoch."""


def overrides(method: FinetuneMethod, hook: str) -> bool:
    """Whether ``method``'s class defines ``hook`` itself rather than inheriting ``FinetuneMethod``'s no-op."""
    return getattr(type(method), hook) is not getattr(FinetuneMethod, hook)


def step_loss(method: FinetuneMethod, model: nn.Module, batch: dict[str, torch.Tensor]):
    """``(loss to backpropagate, next-token loss, penalty or None)`` of one batch."""
    logits, _ = model(batch["input_ids"])
    lm_loss = next_token_loss(logits, batch["labels"])
    penalty = method.penalty(model)
    return (lm_loss if penalty is None else lm_loss + penalty), lm_loss, penalty


class FinetuneMethod(ContinualMethod):
    """Base class: full finetuning (every hook is a no-op). See the module docstring for the hooks.

    Args:
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "full"
    _epoch_probe: Callable[[nn.Module, Task, int], None] | None = None

    def __init__(self, loop: TaskLoop | None = None) -> None:
        self.loop = loop if loop is not None else TaskLoop()
        self._tasks_learned = 0

    # -- model structure and trainability ------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Change the model's structure (adapters, layer settings). Called again on a prepared model: idempotent."""

    def trains(self, name: str) -> bool:
        """Whether parameter ``name`` may train."""
        return True

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """Multipliers of the peak lr by parameter name (missing: 1)."""
        return {}

    def make_optimizer(
        self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
    ) -> torch.optim.Optimizer:
        """AdamW over ``groups``; a method that brings its own optimizer (SMF: SGD) overrides this."""
        return torch.optim.AdamW(groups, betas=betas, eps=eps)

    def build_optimizer(
        self, model: nn.Module, cfg: OptimConfig, total_steps: int, group_lr: dict[str, float] | None = None
    ) -> dict:
        """``configure_optimizers``' value for this method: its groups (lr scales, ``group_lr``, frozen parameters
        left out) under ``cfg``'s warmup/cosine. HOPE families keep their Nested-Learning outer loop (one
        ``LevelOptimizer``, as in ``hope fit``), unless the method brings its own optimizer (SMF's SGD)."""
        groups = param_groups(model, cfg.lr, cfg.weight_decay, self.lr_scales(model), group_lr)
        if model.config.family in HOPE_FAMILIES and not self.brings_optimizer():
            return {"optimizer": finetune_level_optimizer(model, groups, cfg, total_steps)}
        return warmup_cosine(self.make_optimizer(groups, cfg.betas, cfg.eps), cfg, total_steps)

    def brings_optimizer(self) -> bool:
        """Whether the method replaces AdamW (overrides ``make_optimizer``; SMF's SGD)."""
        return overrides(self, "make_optimizer")

    def structure(self) -> dict:
        """What ``load_finetuned`` needs to rebuild the model's structure without the method (LoRA: its modules)."""
        return {}

    # -- data-dependent state, every step, after a task ------------------------------------------------------------
    def setup_data(self, model: nn.Module, tokenizer: Tokenizer, seq_len: int) -> None:
        """Build the data-dependent state that is missing (not what a resumed checkpoint restored)."""

    def check_finetune(self) -> None:
        """Raise if ``hope finetune`` (which has no earlier tasks in hand) lacks a setting the method needs."""

    def epoch_blocks(
        self, model: nn.Module, task: Task, tokenizer: Tokenizer, seq_len: int, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` blocks of one epoch of ``learn``: the task's texts reshuffled every epoch, packed."""
        return text_blocks(task.train, tokenizer, seq_len, seed=f"{self.loop.seed}/{self._tasks_learned}/{epoch}")

    def mix_batch(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """The batch actually trained on at ``step``: ``batch`` unchanged here (replay appends earlier examples)."""
        return batch

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the loss (EWC's quadratic penalty), or None; None here."""
        return None

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Gradients are computed; clipping and the optimizer step follow."""

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """The model has learned a task whose blocks are ``inputs``/``labels``."""

    def step_stats(self) -> dict[str, float]:
        """Extra statistics of the last step, logged as ``train/<key>`` and in ``learn``'s result."""
        return {}

    def task_stats(self) -> dict[str, float]:
        """Statistics of the harness task just learned (after ``end_task``), in ``learn``'s result."""
        return {}

    # -- checkpoint state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint keeps to resume exactly; here the number of harness tasks learned so far."""
        return {"tasks_learned": self._tasks_learned}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (a state without ``tasks_learned`` counts 0 tasks)."""
        self._tasks_learned = state.get("tasks_learned", 0)

    # -- the retention harness (ContinualMethod) ---------------------------------------------------------------
    def probe_epochs(self, probe: Callable[[nn.Module, Task, int], None] | None) -> None:
        """Call ``probe(model, task, steps so far)`` after every epoch of ``learn``, the model in eval mode (None:
        no probe). A probe only reads the model (the ladder's learning curves, ``hope.finetune.ladder``)."""
        self._epoch_probe = probe

    def setup(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        """Harness setup: ``prepare`` the model, freeze what ``trains`` rejects, then build the data-dependent state."""
        self.prepare(model)
        configure_trainable(model, self.trains)
        self.setup_data(model, tokenizer, self.seq_len_for(model))

    def seq_len_for(self, model: nn.Module) -> int:
        """Training sequence length: ``loop.seq_len`` capped at the model's ``max_seq_len``."""
        return min(self.loop.seq_len, model.config.max_seq_len)

    def learn(self, model: nn.Module, task: Task, tokenizer: Tokenizer) -> dict[str, float]:
        """Train on ``task.train`` for ``loop.epochs`` through the hooks; returns steps, first/last loss, step stats."""
        loop, seq_len = self.loop, self.seq_len_for(model)
        device = next(model.parameters()).device
        constant = OptimConfig(lr=loop.lr, weight_decay=loop.weight_decay, warmup_steps=0, min_lr_ratio=1.0)
        optimizer = self.build_optimizer(model, constant, total_steps=1)["optimizer"]  # no lr to schedule
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
        model.train()
        losses, step, stats = [], 0, {}
        for epoch in range(loop.epochs):
            for batch in batches(*self.epoch_blocks(model, task, tokenizer, seq_len, epoch), loop.batch_size):
                batch = {k: v.to(device) for k, v in self.mix_batch(batch, step).items()}
                loss, lm_loss, _ = step_loss(self, model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.before_optimizer_step(model, step)
                if loop.grad_clip > 0:
                    nn.utils.clip_grad_norm_(trainable, loop.grad_clip)
                optimizer.step()
                losses.append(lm_loss.item())
                stats = self.step_stats()
                step += 1
            if self._epoch_probe is not None:
                model.eval()
                self._epoch_probe(model, task, step)
                model.train()
        model.eval()
        self.end_task(model, *text_blocks(task.train, tokenizer, seq_len))
        self._tasks_learned += 1
        return {"steps": float(step), "loss_first": losses[0], "loss_last": losses[-1], **stats, **self.task_stats()}
