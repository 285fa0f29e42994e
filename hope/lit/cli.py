"""The LightningCLI of ``hope fit`` / ``validate`` / ``test`` (and, subclassed, of ``hope finetune``).

Every ``__init__`` argument of ``HopeLitModule`` (``model.*``), ``TextDataModule`` (``data.*``) and the Trainer is
a config key and a flag; the always-present callbacks get their own sections (``checkpoint:``, ``progress_bar:``).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import set_docstring_parse_options
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from hope.lit import deepspeed as _deepspeed  # noqa: F401  (registers the hope_deepspeed_stage_* strategies)
from hope.lit.callbacks import ProgressBar
from hope.lit.checkpoint import ConfigCheckpoint
from hope.lit.datamodule import TextDataModule
from hope.lit.module import HopeLitModule

__all__ = ["HopeCLI", "build_cli", "default_precision"]


def default_precision() -> str:
    """bf16-mixed where the GPU supports it, full fp32 on CPU (bf16 autocast on CPU is slow and gains nothing)."""
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


class SaveConfigBesideCheckpoints(SaveConfigCallback):
    """Writes config.yaml to the log dir (Lightning's behaviour) and hands the same text to every
    ConfigCheckpoint, which writes it beside each checkpoint."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        resolved = self.parser.dump(self.config, skip_none=False)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ConfigCheckpoint):
                callback.resolved_config = resolved


class HopeCLI(LightningCLI):
    """LightningCLI with ``checkpoint:``/``progress_bar:`` sections, a clear corrupt-checkpoint error, a fit summary."""

    def add_arguments_to_parser(self, parser) -> None:
        """Put the always-present callbacks in their own sections: ``checkpoint:`` (save_last on), ``progress_bar:``."""
        # Always-present callbacks get their own config sections (``checkpoint:``, ``progress_bar:``) rather than
        # living in ``trainer.callbacks``, where a YAML list would add a second copy instead of configuring them.
        parser.add_lightning_class_args(ConfigCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(ProgressBar, "progress_bar")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI (>= 2.5) reads the checkpoint's hyper-parameters before anything else touches the file;
        # a truncated file would surface as a bare zip-archive error, so say what it means and what to do.
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise ValueError(
                f"checkpoint {path!r} is corrupt or truncated ({err.__class__.__name__}). Resume from an earlier "
                "checkpoint in the same directory, or delete this file."
            ) from err

    def after_fit(self) -> None:
        """On rank 0, print the step count, the last (or best) checkpoint and where the TensorBoard logs are."""
        if not self.trainer.is_global_zero:
            return
        ckpt = self.trainer.checkpoint_callback
        where = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") or "(none saved)"
        logs = self.trainer.logger.log_dir if self.trainer.logger is not None else "(no logger)"
        print(f"[hope] done: {self.trainer.global_step} steps. checkpoint: {where}")
        print(f"[hope] TensorBoard logs: {logs}  (view with: tensorboard --logdir {Path(logs).parent})")


def build_cli(
    args: Sequence[str] | None = None,
    run: bool = True,
    cli_class: type[HopeCLI] = HopeCLI,
    model_class: type[HopeLitModule] = HopeLitModule,
) -> HopeCLI:
    """The LightningCLI of ``hope fit`` (or, with other classes, ``hope finetune``) over ``TextDataModule``:
    trainer defaults, the checkpoint and progress-bar sections, the resolved config beside every checkpoint."""
    set_docstring_parse_options(attribute_docstrings=True)
    # fp32 runs on GPUs use TF32 tensor cores (Lightning warns otherwise); no effect on CPU or under bf16 autocast.
    torch.set_float32_matmul_precision("high")
    return cli_class(
        model_class,
        TextDataModule,
        args=args,
        run=run,
        seed_everything_default=1234,
        save_config_callback=SaveConfigBesideCheckpoints,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "precision": default_precision(),
            "plugins": [{"class_path": "hope.lit.checkpoint.AtomicCheckpointIO"}],
        },
    )
