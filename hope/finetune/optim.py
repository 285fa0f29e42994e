"""The optimizer of a ``hope finetune`` run, and of a method learning a task in the retention harness
(``FinetuneMethod.learn``, at a constant lr): the method's groups (lr scales, ``group_lr``, frozen parameters left
out) under the run's warmup/cosine schedule.

HOPE families keep their Nested-Learning outer loop while finetuning: as in ``hope fit``
(``hope.lit.optim.build_level_optimizer``), CMS level l of every block steps every ``cms_level_periods[l]``
optimizer steps with rule ``cms_level_rules[l]`` and lr times ``cms_level_lr_scale[l]``, all inside one
``LevelOptimizer`` that runs the schedule itself. Methods with their own optimizer (SMF's SGD) keep theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from hope.config import HOPE_FAMILIES
from hope.finetune.methods.base import FinetuneMethod
from hope.finetune.params import param_groups
from hope.lit.optim import OptimConfig, lr_factor


def build_finetune_optimizer(
    model: nn.Module,
    method: FinetuneMethod,
    cfg: OptimConfig,
    total_steps: int,
    group_lr: dict[str, float] | None = None,
) -> dict:
    """``configure_optimizers``' return value for a finetune run."""
    groups = param_groups(model, cfg.lr, cfg.weight_decay, method.lr_scales(model), group_lr)
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else total_steps
    own_optimizer = type(method).make_optimizer is not FinetuneMethod.make_optimizer
    if model.config.family in HOPE_FAMILIES and not own_optimizer:
        return {"optimizer": level_optimizer(model, groups, cfg, decay_steps)}
    optimizer = method.make_optimizer(groups, cfg.betas, cfg.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, decay_steps, cfg.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def level_optimizer(model: nn.Module, groups: list[dict], cfg: OptimConfig, decay_steps: int):
    """Split each group by CMS level (modules with ``level_parameters()``); levels get their period and rule."""
    from hope.optim.levels import LevelOptimizer

    level_of = {}
    for module in model.modules():
        if callable(getattr(module, "level_parameters", None)):
            for level, params in enumerate(module.level_parameters()):
                level_of.update({id(p): level for p in params})
    mc = model.config
    schedule = {"warmup_steps": cfg.warmup_steps, "decay_steps": decay_steps, "min_lr_ratio": cfg.min_lr_ratio}
    split: list[dict] = []
    for group in groups:
        for level in [None, *range(len(mc.cms_level_periods))]:
            keep = [i for i, p in enumerate(group["params"]) if level_of.get(id(p)) == level]
            if not keep:
                continue
            spec = {"rule": "adamw", "period": 1, "lr": group["lr"], "level": "base"}
            if level is not None:
                spec = {
                    "rule": mc.cms_level_rules[level],
                    "period": mc.cms_level_periods[level],
                    "lr": group["lr"] * mc.cms_level_lr_scale[level],
                    "level": f"level{level + 1}",
                }
            split.append(
                {
                    **spec,
                    "params": [group["params"][i] for i in keep],
                    "names": [group["names"][i] for i in keep],
                    "weight_decay": group["weight_decay"],
                    "schedule": schedule,
                    "betas": cfg.betas,
                    "eps": cfg.eps,
                }
            )
    return LevelOptimizer(split)
