"""Training stops at the first step whose loss or gradient norm is not finite, before that step changes a weight.

A diverged run (lr too high, bad data, an overflow) otherwise keeps going: every later loss is NaN, every later
checkpoint holds NaN weights, and the job still ends with "done" and exit code 0. ``DivergenceGuard`` looks at each
micro-batch's loss (``on_before_backward``) and at the gradient of each optimizer step (``on_before_optimizer_step``,
after backward and before clipping and the update). On the first bad step every rank raises ``TrainingDiverged``
with the step, the loss, the gradient norm, the learning rate and the first parameter whose gradient is not finite;
the update is never applied, so ``last.ckpt`` stays the last good checkpoint. ``AtomicCheckpointIO`` also refuses to
write a checkpoint whose weights are not finite.

``skip_batches: N`` (the ``divergence:`` section of ``hope fit``) skips up to N bad batches instead: their gradients
are dropped, so the optimizer step leaves the weights as they are (the step and the schedule still advance), a
warning names the batch, and ``train/skipped_batches`` counts them in TensorBoard (a running total, logged at every
step). Batch N+1 stops the run.

The ranks agree on the decision with one all-reduce of a flag per optimizer step (after DDP's gradient all-reduce
the gradients are the same on every rank, but a loss is per rank). Under DeepSpeed the gradients live in
DeepSpeed's buffers, so only the loss is checked and skipping is refused. Under fp16 mixed precision (a
``GradScaler``) the scaler skips steps with inf gradients itself, so only the loss is checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

__all__ = ["DivergenceGuard", "TrainingDiverged", "gradient_norm"]


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient stopped training (see ``DivergenceGuard``)."""


def gradient_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The L2 norm of all gradients together (None when no parameter has one, e.g. under DeepSpeed ZeRO)."""
    norms = [p.grad.detach().norm(2) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


class DivergenceGuard(pl.Callback):
    """Stop (or skip the batch) at the first optimizer step with a non-finite loss or gradient norm.

    Args:
        skip_batches: bad batches to skip before stopping (their update is dropped; counted in
            ``train/skipped_batches``). 0 stops at the first one.
    """

    def __init__(self, skip_batches: int = 0) -> None:
        if skip_batches < 0:
            raise ValueError(f"divergence.skip_batches={skip_batches} must be >= 0 (0: stop at the first bad batch).")
        self.skip_batches = skip_batches
        self.skipped = 0
        self._losses: list[torch.Tensor] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse ``skip_batches`` under DeepSpeed, whose gradients this callback cannot drop."""
        if self.skip_batches and isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ValueError(
                f"divergence.skip_batches={self.skip_batches} needs the gradients in the parameters, and DeepSpeed "
                "keeps them in its own buffers. Fix: set divergence.skip_batches 0 (a bad batch then stops the run)."
            )

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Keep each micro-batch's loss of this optimizer step (checked before the step, no host sync here)."""
        # Lightning divides the loss by accumulate_grad_batches before backward; report it as training_step gave it.
        self._losses.append(loss.detach() * trainer.accumulate_grad_batches)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        """Check the step's losses and gradient norm on every rank; skip the update or raise ``TrainingDiverged``."""
        losses, self._losses = self._losses, []
        loss_ok = torch.stack([torch.isfinite(x) for x in losses]).all() if losses else torch.tensor(True)
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None  # fp16: the scaler handles inf grads
        norm = None if scaled else gradient_norm(pl_module.parameters())
        ok = bool(loss_ok) and (norm is None or bool(torch.isfinite(norm)))  # the one host sync of the step
        if not trainer.strategy.reduce_boolean_decision(not ok, all=False):
            if self.skip_batches:
                pl_module.log("train/skipped_batches", float(self.skipped))  # a running count, every step
            return
        report = self._report(trainer, pl_module, optimizer, losses, norm)
        if self.skipped < self.skip_batches:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # no gradient, no update: the weights stay as they are
            rank_zero_warn(
                f"[hope] skipped a bad batch at {report} ({self.skipped} of divergence.skip_batches="
                f"{self.skip_batches}; the next one beyond that stops the run)"
            )
            pl_module.log("train/skipped_batches", float(self.skipped))
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "(none written yet)"
        raise TrainingDiverged(
            f"training diverged at {report}. This step was not applied and no checkpoint holds it; the last good "
            f"checkpoint is {last}. Fix: lower model.optim.lr or raise model.optim.warmup_steps, set "
            "trainer.gradient_clip_val, check the data of this step, then resume with --ckpt_path last; or skip up "
            f"to N bad batches with --divergence.skip_batches N (skipped so far: {self.skipped})."
        )

    @staticmethod
    def _report(trainer, pl_module, optimizer, losses: list[torch.Tensor], norm: torch.Tensor | None) -> str:
        """``step S: loss L, gradient norm G, lr R; first non-finite gradient: NAME`` for this rank."""
        bad = [x for x in losses if not torch.isfinite(x)]
        loss = (bad or losses or [torch.tensor(math.nan)])[0].item()
        parts = [f"step {trainer.global_step + 1}: loss {loss:.6g}"]
        if norm is not None:
            parts.append(f"gradient norm {norm.item():.6g}")
        parts.append(f"lr {optimizer.param_groups[0]['lr']:.6g}")
        text = ", ".join(parts)
        first = next(
            (n for n, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()),
            None,
        )
        if first is not None:
            text += f"; first non-finite gradient: {first}"
        elif trainer.world_size > 1 and not bad and norm is not None and torch.isfinite(norm):
            text += " (on another rank)"
        return text
