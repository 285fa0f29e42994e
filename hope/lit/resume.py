"""What a resumed run (``--ckpt_path``) takes from the checkpoint and what from the command line, never silently.

The rule (README, "When things go wrong"):

- A model setting you did not give (on the command line or in a ``--config`` file) is the checkpoint's, so that
  ``hope validate --ckpt_path X`` needs nothing else (LightningCLI's own behaviour).
- ``model.optim.*`` you give wins: the restored optimizer and schedule are set to it at the resumed step, and
  every value that differs from the checkpoint's is logged (``[hope] resume: model.optim.lr = ... (checkpoint:
  ...)``), as is a schedule whose end moved with ``trainer.max_steps``. Without this the checkpoint's optimizer state
  would silently restore its own lr, betas and weight decay (and LightningCLI would replace the typed values).
- A model you give that differs from the checkpoint's (any ``ModelConfig`` field but the kernel choices in
  ``COMPUTE_FIELDS``, or a finetune run's ``freeze``/``train_only``/``group_lr``/``save_weights``/``memory_layers``)
  is an error naming each field, the checkpoint's value and yours: the weights and the optimizer state only fit
  the model they were trained with.
- Data settings the data position depends on (``data.seq_len``, ``data.batch_size``, ``data.source``, ...) are
  checked by ``TextDataModule.load_state_dict``, with the same kind of error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from hope.config import ModelConfig

__all__ = ["COMPUTE_FIELDS", "apply_resumed_optim", "merge_checkpoint_settings"]

COMPUTE_FIELDS = {"name", "attn_backend", "memory_compile"}
"""ModelConfig fields that choose how the model is computed, not what: they may change on resume."""

_OPTIM_GROUP_KEYS = ("initial_lr", "peak_lr", "betas", "eps", "weight_decay")


def _plain(value: Any) -> Any:
    """Lists and tuples compare equal (YAML gives lists, checkpoints keep tuples)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _model_differences(saved: dict, given: dict, saved_config: dict | None) -> list[str]:
    """``field: checkpoint X, given Y`` for every ModelConfig field the given preset/overrides change."""
    if "preset" not in given and "overrides" not in given:
        return []
    preset = given.get("preset", saved.get("preset"))
    overrides = given["overrides"] if "overrides" in given else saved.get("overrides")
    mine = ModelConfig.from_preset(preset, **(overrides or {})).to_dict()
    theirs = saved_config or ModelConfig.from_preset(saved["preset"], **(saved.get("overrides") or {})).to_dict()
    return [
        f"{k}: checkpoint {theirs[k]!r}, given {mine[k]!r}"
        for k in mine
        if k not in COMPUTE_FIELDS and k in theirs and _plain(theirs[k]) != _plain(mine[k])
    ]


def merge_checkpoint_settings(ckpt_path: str, saved: dict, given: dict, saved_config: dict | None) -> dict[str, Any]:
    """The ``model`` settings to parse on top of the config: the checkpoint's hyper-parameters ``saved`` wherever
    ``given`` (what was typed or in a config file) has no value; typed ``optim`` fields win. Raises ValueError
    naming every model setting that was given and differs from the checkpoint's (see the module docstring)."""
    merged, conflicts = {}, _model_differences(saved, given, saved_config)
    for key, value in saved.items():
        if key == "optim":
            merged[key] = {**(value or {}), **(given.get("optim") or {})}
        elif key not in given:
            merged[key] = value
        elif key not in ("preset", "overrides") and _plain(given[key]) != _plain(value):
            conflicts.append(f"{key}: checkpoint {value!r}, given {given[key]!r}")
    if conflicts:
        raise ValueError(
            f"--ckpt_path {ckpt_path}: the model given differs from the checkpoint's, whose weights and optimizer "
            f"state fit only its own: {'; '.join(conflicts)}. Fix: resume with the settings it was trained with "
            "(the config.yaml beside it, or leave these keys out), or start a new run from its weights with "
            "--model.init_from."
        )
    return merged


def apply_resumed_optim(trainer: pl.Trainer, module, saved_optim: dict | None, saved_steps: int | None) -> None:
    """After a resume, make the restored optimizer and schedule follow ``module.optim`` where it differs from the
    checkpoint's (``saved_optim``, ``saved_steps``: the schedule's length then), and log each difference."""
    now = dataclasses.asdict(module.optim)
    changes = [
        (f"model.optim.{k}", saved_optim[k], v)
        for k, v in now.items()
        if saved_optim is not None and k in saved_optim and _plain(saved_optim[k]) != _plain(v)
    ]
    steps = module.total_steps()
    if saved_steps is not None and saved_steps != steps and module.optim.decay_steps is None:
        changes.append(("schedule length (trainer.max_steps)", saved_steps, steps))
    if not changes:
        return
    fresh = module.configure_optimizers()
    fresh_optimizer = fresh["optimizer"] if isinstance(fresh, dict) else fresh
    optimizer = trainer.optimizers[0]
    for group, new in zip(optimizer.param_groups, fresh_optimizer.param_groups, strict=True):
        group.update({k: new[k] for k in _OPTIM_GROUP_KEYS if k in new})
        if "peak_lr" in group and callable(group.get("schedule")):  # LevelOptimizer: the lr its last step used
            group["lr"] = group["peak_lr"] * group["schedule"](max(group["step_count"] - 1, 0))
    for config in trainer.lr_scheduler_configs:  # LambdaLR: new peak lrs; the lambdas are already this run's
        scheduler = config.scheduler
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    for key, old, new in changes:
        rank_zero_info(f"[hope] resume: {key} = {new!r} (checkpoint: {old!r}), from step {trainer.global_step + 1}")
