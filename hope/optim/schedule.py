"""The learning-rate schedule and the optimizer settings of every run: AdamW, linear warmup, cosine decay.

The papers' recipe (Titans §5.1: lr 4e-4, cosine, weight decay 0.1). ``OptimConfig`` is ``model.optim`` of
``hope fit`` and ``hope finetune``; ``lr_factor`` is the schedule, used by ``LambdaLR`` (``warmup_cosine``) and
inside ``hope.optim.LevelOptimizer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["OptimConfig", "lr_factor", "warmup_cosine"]


@dataclass
class OptimConfig:
    """AdamW and its warmup/cosine schedule."""

    lr: float = 4e-4
    """Peak learning rate, reached at the end of warmup."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not to norms, biases or other 1-D parameters)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup from 0 to ``lr``."""
    decay_steps: int | None = None
    """Optimizer step at which the cosine reaches ``min_lr_ratio * lr``; None means trainer.max_steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"model.optim.lr={self.lr} must be > 0.")
        if self.warmup_steps < 0:
            raise ValueError(f"model.optim.warmup_steps={self.warmup_steps} must be >= 0.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"model.optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1].")

    def decay_end(self, total_steps: int) -> int:
        """The step where the cosine ends: ``decay_steps``, or the run's ``total_steps`` when it is None."""
        return self.decay_steps if self.decay_steps is not None else total_steps


def lr_factor(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup, then cosine to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> dict:
    """``optimizer`` with a per-step ``LambdaLR`` of ``cfg``'s schedule, as ``configure_optimizers`` returns them
    (DeepSpeed through Lightning accepts exactly one optimizer and one scheduler)."""
    decay_steps = cfg.decay_end(total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, decay_steps, cfg.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
