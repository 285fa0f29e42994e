"""AdamW with linear warmup and cosine decay: the papers' recipe (Titans §5.1: lr 4e-4, cosine, wd 0.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
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


def lr_factor(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup, then cosine to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (embeddings, linear weights); leave vectors (norm gains, biases) undecayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int):
    """One AdamW and one LambdaLR (DeepSpeed through Lightning accepts exactly one of each)."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else total_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, decay_steps, cfg.min_lr_ratio)
    )
    return optimizer, schedule


def build_level_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int) -> torch.optim.Optimizer:
    """One ``hope.optim.LevelOptimizer`` for models with CMS levels (HOPE families): CMS level l of every block
    steps every ``cms_level_periods[l]`` optimizer steps on its summed gradients with rule ``cms_level_rules[l]``
    and peak lr ``lr * cms_level_lr_scale[l]`` (NL Eq. 31 in the outer loop); everything else is AdamW every step.
    Every group runs the same warmup/cosine inside the optimizer (no LambdaLR), so the optimizer's state_dict
    (step counters, partial gradient sums) is all that resume needs. Groups carry ``level`` ("base", "level1",
    ...) for logging."""
    from hope.optim.levels import LevelOptimizer, level_param_groups  # levels imports lr_factor from this module

    mc = model.config
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else total_steps
    schedule = {"warmup_steps": cfg.warmup_steps, "decay_steps": decay_steps, "min_lr_ratio": cfg.min_lr_ratio}
    common = {"schedule": schedule, "betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    base = {**common, "rule": "adamw", "lr": cfg.lr, "period": 1, "level": "base"}
    specs = zip(mc.cms_level_periods, mc.cms_level_rules, mc.cms_level_lr_scale, strict=True)
    levels = [
        {**common, "rule": rule, "lr": cfg.lr * scale, "period": period, "level": f"level{i + 1}"}
        for i, (period, rule, scale) in enumerate(specs)
    ]
    return LevelOptimizer(level_param_groups(model, base, levels))
