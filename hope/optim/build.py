"""The optimizers of ``hope fit`` and ``hope finetune``, built from a model's config and ``model.optim``.

Every family but HOPE trains with AdamW under a ``LambdaLR`` warmup/cosine. Models with CMS levels (the HOPE
families) train with one ``LevelOptimizer``, which runs the same schedule itself: CMS level l of every block steps
every ``cms_levels[l].steps_per_update`` optimizer steps on its summed gradients, with rule ``cms_levels[l].rule``
and peak lr ``lr * cms_levels[l].lr_scale`` (NL Eq. 31 in the outer loop); every other parameter is AdamW at every
step. Its state dict (step counters, partial gradient sums) is all that resuming needs. Groups carry ``level`` ("base",
"level1", ...) for logging.
"""

from __future__ import annotations

import torch
from torch import nn

from hope.config import HOPE_FAMILIES
from hope.optim.levels import LevelOptimizer, level_param_groups
from hope.optim.schedule import OptimConfig, warmup_cosine

__all__ = ["finetune_level_optimizer", "pretrain_optimizer", "weight_decay_groups"]


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (embeddings, linear weights); leave vectors (norm gains, biases) undecayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _level_spec(config, level: int, lr: float) -> dict:
    """LevelOptimizer settings of CMS level ``level`` (0-based) at peak lr ``lr`` times its scale."""
    spec = config.cms_levels[level]
    return {"rule": spec.rule, "period": spec.steps_per_update, "lr": lr * spec.lr_scale, "level": f"level{level + 1}"}


def _schedule(cfg: OptimConfig, total_steps: int) -> dict:
    return {
        "warmup_steps": cfg.warmup_steps,
        "decay_steps": cfg.decay_end(total_steps),
        "min_lr_ratio": cfg.min_lr_ratio,
    }


def pretrain_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int) -> dict:
    """``configure_optimizers``' value for ``hope fit``: AdamW + warmup/cosine, or one ``LevelOptimizer`` for models
    with CMS levels (see the module docstring)."""
    if model.config.family not in HOPE_FAMILIES:
        optimizer = torch.optim.AdamW(
            weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
        )
        return warmup_cosine(optimizer, cfg, total_steps)
    common = {
        "schedule": _schedule(cfg, total_steps),
        "betas": cfg.betas,
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
    }
    base = {**common, "rule": "adamw", "lr": cfg.lr, "period": 1, "level": "base"}
    levels = [{**common, **_level_spec(model.config, i, cfg.lr)} for i in range(len(model.config.cms_levels))]
    return {"optimizer": LevelOptimizer(level_param_groups(model, base, levels))}


def finetune_level_optimizer(model: nn.Module, groups: list[dict], cfg: OptimConfig, total_steps: int):
    """A ``LevelOptimizer`` over a finetune run's groups (``hope.continual.params.param_groups``): each group is
    split by CMS level (modules with ``level_parameters()``), and the levels get their period, rule and lr scale."""
    level_of = {}
    for module in model.modules():
        if callable(getattr(module, "level_parameters", None)):
            for level, params in enumerate(module.level_parameters()):
                level_of.update({id(p): level for p in params})
    common = {"schedule": _schedule(cfg, total_steps), "betas": cfg.betas, "eps": cfg.eps}
    split: list[dict] = []
    for group in groups:
        for level in [None, *range(len(model.config.cms_levels))]:
            keep = [i for i, p in enumerate(group["params"]) if level_of.get(id(p)) == level]
            if not keep:
                continue
            spec = {"rule": "adamw", "period": 1, "lr": group["lr"], "level": "base"}
            if level is not None:
                spec = _level_spec(model.config, level, group["lr"])
            params, names = [group["params"][i] for i in keep], [group["names"][i] for i in keep]
            split.append({**spec, **common, "params": params, "names": names, "weight_decay": group["weight_decay"]})
    return LevelOptimizer(split)
