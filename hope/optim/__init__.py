"""Optimizers for nested learning: the per-level gated ``LevelOptimizer`` and Deep Momentum GD (``DeepMomentum``)."""

from hope.optim.deep_momentum import DeepMomentum, deep_momentum_step
from hope.optim.levels import RULES, LevelOptimizer, level_param_groups

__all__ = ["LevelOptimizer", "level_param_groups", "RULES", "DeepMomentum", "deep_momentum_step"]
