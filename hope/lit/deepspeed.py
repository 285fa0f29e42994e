"""Lightning's DeepSpeed strategy, made to run on CPU as well as on CUDA.

Why this exists: ``lightning.pytorch.strategies.DeepSpeedStrategy`` refuses any accelerator but CUDA
("The DeepSpeed strategy is only supported on CUDA GPUs"), yet DeepSpeed itself trains on CPU (its CPU accelerator,
gloo for collectives). We want the ZeRO code path, its sharded checkpoints and its resume logic exercised in CI on
CPU-only machines, with the same YAML a GPU run uses. ``HopeDeepSpeedStrategy`` differs from the parent only when
the accelerator is not CUDA:

* ``setup_environment`` skips the parent's CUDA check (it calls ``DDPStrategy.setup_environment`` directly);
* CPU devices get an index (``cpu:0``, ``cpu:1``, ...), because the parent checks that device indices equal local
  ranks and Lightning's CPU accelerator hands out index-less ``cpu`` devices;
* the process group backend defaults to gloo (Lightning's default for CPU devices).

On CUDA it behaves exactly like ``DeepSpeedStrategy``. Select it in YAML with::

    trainer:
      strategy:
        class_path: hope.lit.deepspeed.HopeDeepSpeedStrategy
        init_args: {config: configs/deepspeed/zero2.json}

or, once this module is imported (``hope.cli`` does), by a registered name such as ``hope_deepspeed_stage_2``.

With optimizer offload, DeepSpeed rejects ``torch.optim.Adam``/``AdamW`` ("ZeRO-Offload with a client provided
optimizer"); ``cpu_adam=True`` (default: on when the config offloads the optimizer) swaps the module's Adam(W) for
``DeepSpeedCPUAdam`` with the same parameter groups and hyperparameters, and re-points the LR scheduler at it, so
``configure_optimizers`` stays the single source of truth. ``DeepSpeedCPUAdam`` JIT-compiles the ``cpu_adam`` op on
first use (about 80 s on 2 cores; cached under ``TORCH_EXTENSIONS_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, StrategyRegistry

# name -> (ZeRO stage, offload optimizer, offload parameters); mirrors Lightning's `deepspeed_stage_*` names.
_REGISTERED = {
    "hope_deepspeed_stage_1": (1, False, False),
    "hope_deepspeed_stage_2": (2, False, False),
    "hope_deepspeed_stage_2_offload": (2, True, False),
    "hope_deepspeed_stage_3": (3, False, False),
    "hope_deepspeed_stage_3_offload": (3, True, True),
}


class HopeDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that also runs on the CPU accelerator (see the module docstring)."""

    strategy_name = "hope_deepspeed"

    def __init__(self, *args: Any, cpu_adam: bool | None = None, **kwargs: Any) -> None:
        """All arguments are ``DeepSpeedStrategy``'s, plus ``cpu_adam``: replace a torch Adam/AdamW with
        ``DeepSpeedCPUAdam`` (None: only when the DeepSpeed config offloads the optimizer)."""
        if "config" in kwargs:
            kwargs["config"] = _resolve_config_path(kwargs["config"])
        super().__init__(*args, **kwargs)
        self.cpu_adam = cpu_adam

    @property
    def parallel_devices(self) -> list[torch.device] | None:
        """The strategy's devices; index-less CPU devices are stored as ``cpu:0``, ``cpu:1``, ... by the setter."""
        return self._parallel_devices

    @parallel_devices.setter
    def parallel_devices(self, devices: list[torch.device] | None) -> None:
        # The accelerator connector assigns [cpu, cpu, ...]; the parent wants indices equal to local ranks.
        if devices and all(d.type == "cpu" and d.index is None for d in devices):
            devices = [torch.device("cpu", i) for i in range(len(devices))]
        self._parallel_devices = devices

    def setup_environment(self) -> None:
        """The parent's setup on CUDA; elsewhere DDP's, skipping DeepSpeedStrategy's CUDA-only check."""
        if isinstance(self.accelerator, CUDAAccelerator):
            super().setup_environment()
            return
        # Skip DeepSpeedStrategy's "only supported on CUDA GPUs" check; DDP's setup is what remains of it.
        DDPStrategy.setup_environment(self)

    @property
    def offloads_optimizer(self) -> bool:
        """Whether the DeepSpeed config offloads the optimizer (``zero_optimization.offload_optimizer.device`` set)."""
        zero = (self.config or {}).get("zero_optimization") or {}
        offload = zero.get("offload_optimizer") or {}
        return offload.get("device", "none") not in ("none", None)

    def _init_optimizers(self):
        optimizer, scheduler_config = super()._init_optimizers()
        use_cpu_adam = self.offloads_optimizer if self.cpu_adam is None else self.cpu_adam
        if use_cpu_adam:
            optimizer = _to_cpu_adam(optimizer, scheduler_config)
        return optimizer, scheduler_config

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Register the ``hope_deepspeed_stage_*`` names (ZeRO stage 1-3, with or without offload) for this class."""
        for name, (stage, offload_optimizer, offload_parameters) in _REGISTERED.items():
            strategy_registry.register(
                name,
                cls,
                description=f"DeepSpeed ZeRO stage {stage} that also runs on CPU (hope)",
                stage=stage,
                offload_optimizer=offload_optimizer,
                offload_parameters=offload_parameters,
            )


def _resolve_config_path(config: Any) -> Any:
    """The YAMLs name ``configs/deepspeed/*.json`` relative to the repository; outside it, look there."""
    if not isinstance(config, str | os.PathLike) or Path(config).is_absolute() or Path(config).exists():
        return config
    in_repo = Path(__file__).resolve().parents[2] / config
    return str(in_repo) if in_repo.exists() else config


def _to_cpu_adam(optimizer: torch.optim.Optimizer, scheduler_config: Any) -> torch.optim.Optimizer:
    """DeepSpeedCPUAdam with ``optimizer``'s groups and hyperparameters; the scheduler follows it."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return optimizer  # anything else: leave DeepSpeed to accept or reject it
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    # Plain torch Adam applies L2 weight decay; AdamW decouples it (adamw_mode).
    adamw = isinstance(optimizer, torch.optim.AdamW) or optimizer.defaults.get("decoupled_weight_decay", False)
    defaults = optimizer.defaults
    new = DeepSpeedCPUAdam(
        [dict(group) for group in optimizer.param_groups],
        lr=defaults["lr"],
        betas=defaults["betas"],
        eps=defaults["eps"],
        weight_decay=defaults["weight_decay"],
        adamw_mode=adamw,
    )
    if scheduler_config is not None:
        # LambdaLR & co. write lr into `scheduler.optimizer.param_groups`; the groups above already carry
        # their current `lr` and `initial_lr`, so only the reference has to move.
        scheduler_config.scheduler.optimizer = new
    return new


HopeDeepSpeedStrategy.register_strategies(StrategyRegistry)
