"""Optimizers for nested learning and the optimizers of every run.

``LevelOptimizer`` (per-level gated groups), ``DeepMomentum`` (Deep Momentum GD), the warmup/cosine schedule and
``OptimConfig`` (``schedule.py``), and the optimizers ``hope fit`` and ``hope finetune`` build (``build.py``).
"""

from hope.optim.build import finetune_level_optimizer, pretrain_optimizer, weight_decay_groups
from hope.optim.deep_momentum import deep_momentum_step
from hope.optim.levels import RULES, DeepMomentum, LevelOptimizer, level_param_groups
from hope.optim.schedule import OptimConfig, lr_factor, warmup_cosine

__all__ = [
    "RULES",
    "DeepMomentum",
    "LevelOptimizer",
    "OptimConfig",
    "deep_momentum_step",
    "finetune_level_optimizer",
    "level_param_groups",
    "lr_factor",
    "pretrain_optimizer",
    "warmup_cosine",
    "weight_decay_groups",
]
