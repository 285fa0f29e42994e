"""The LightningCLI of ``hope fit`` / ``validate`` / ``test`` (and, subclassed, of ``hope finetune``).

Every ``__init__`` argument of ``HopeLitModule`` (``model.*``), ``TextDataModule`` (``data.*``) and the Trainer is
a config key and a flag; the always-present callbacks get their own sections (``checkpoint:``, ``progress_bar:``,
``divergence:``). Keys are matched exactly (``hope.lit.parser``); ``--ckpt_path last`` is the newest complete
checkpoint, and a resume takes from the checkpoint only what was not given (``hope.lit.resume``).
"""

from __future__ import annotations

import logging
import pickle
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import set_docstring_parse_options
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from hope.checkpoint import newest_checkpoint
from hope.lit import deepspeed as _deepspeed  # noqa: F401  (registers the hope_deepspeed_stage_* strategies)
from hope.lit.callbacks import ProgressBar
from hope.lit.checkpoint import ConfigCheckpoint
from hope.lit.datamodule import TextDataModule
from hope.lit.divergence import DivergenceGuard
from hope.lit.module import HopeLitModule
from hope.lit.parser import HopeArgumentParser, config_file_error, join_negative_values, union_error
from hope.lit.requeue import SignalCheckpoint
from hope.lit.resume import merge_checkpoint_settings

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


def _only_header(folder: Path) -> bool:
    """Whether a TensorBoard log folder holds nothing a run wrote: its config, and events without a metric."""
    for path in folder.iterdir():
        if path.name in ("config.yaml", "hparams.yaml"):
            continue
        if not path.name.startswith("events.out.tfevents."):
            return False
        for event in EventFileLoader(str(path)).Load():
            if any(v.tag != "hp_metric" and not v.tag.startswith("_hparams_") for v in event.summary.value):
                return False
    return True


class _NoLitLoggerTip(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


class HopeCLI(LightningCLI):
    """LightningCLI with hope's sections, exact keys, checked resumes, clear start-up errors and a fit summary."""

    prog = "hope"

    def init_parser(self, **kwargs):
        """The parser, named after the command that runs it (not ``__main__.py``)."""
        kwargs.setdefault("prog", self.prog)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        """Put the always-present callbacks in their own sections: ``checkpoint:`` (save_last on),
        ``progress_bar:``, ``divergence:``."""
        # Always-present callbacks get their own config sections rather than living in ``trainer.callbacks``, where
        # a YAML list would add a second copy instead of configuring them.
        parser.add_lightning_class_args(ConfigCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(ProgressBar, "progress_bar")
        parser.add_lightning_class_args(DivergenceGuard, "divergence")

    def parse_arguments(self, parser, args) -> None:
        """Parse ``args`` (negative values joined, ``--config`` files checked) and note what was given."""
        # LightningCLI warns whenever args are passed while sys.argv has some; `hope` always passes them.
        args = join_negative_values(sys.argv[1:] if args is None else args)
        if (message := config_file_error(args)) is not None:
            parser.error(message)
        self.config = parser.parse_args(args)
        self.given = parser.parse_args(args, defaults=False)  # only what was typed or is in a --config file

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last`` to the newest complete checkpoint; take the checkpoint's model settings
        where none were given, and refuse given ones that contradict it (``hope.lit.resume``)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        section = self.config[subcommand]
        if section.get("ckpt_path") == "last":
            root = section.trainer.get("default_root_dir") or "."
            newest = newest_checkpoint(section.checkpoint.get("dirpath") or Path(root) / "checkpoints", root)
            if newest is not None:
                section.ckpt_path = str(newest)
        path = section.get("ckpt_path")
        if not path or not Path(path).is_file():
            return
        try:
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise ValueError(
                f"checkpoint {path!r} is corrupt or truncated ({err.__class__.__name__}). Resume from an earlier "
                "checkpoint in the same directory, or delete this file."
            ) from err
        saved = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k != "_instantiator"}
        if saved:
            given = self.given[subcommand].get("model")
            given = given.as_dict() if given is not None else {}
            merged = merge_checkpoint_settings(path, saved, given, ckpt.get("model_config"))
            self.config = self.parser.parse_object({subcommand: {"model": merged}}, self.config)

    def instantiate_classes(self) -> None:
        """Refuse a GPU accelerator on a machine without one; build the classes, with plain dataclass errors."""
        section = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        accelerator = section.trainer.get("accelerator")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():  # Lightning: a traceback, no fix
            raise SystemExit(
                f"error: trainer.accelerator={accelerator!r}, but this machine has no usable GPU "
                "(torch.cuda.is_available() is False). Fix: --trainer.accelerator cpu (or auto)."
            )
        try:
            super().instantiate_classes()
        except ValueError as err:  # a dataclass's own check, buried in jsonargparse's dump of an `X | None` type
            plain = union_error(err)
            if plain is None:
                raise
            raise plain from None

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            self._remove_empty_log_dir()
            raise

    def _remove_empty_log_dir(self) -> None:
        """A run that failed while starting leaves no ``lightning_logs/version_N`` with nothing in it."""
        logger = self.trainer.logger
        folder = Path(logger.log_dir) if logger is not None and self.trainer.is_global_zero else None
        if folder is not None and folder.is_dir() and _only_header(folder):
            shutil.rmtree(folder, ignore_errors=True)

    def after_fit(self) -> None:
        """On rank 0, print the step count (or the requeue), the last checkpoint and where the TensorBoard logs are."""
        if not self.trainer.is_global_zero:
            return
        signals = next((c for c in self.trainer.callbacks if isinstance(c, SignalCheckpoint)), None)
        ckpt = self.trainer.checkpoint_callback
        where = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") or "(none saved)"
        logs = self.trainer.logger.log_dir if self.trainer.logger is not None else "(no logger)"
        if signals is not None and signals.stopped_by == "requeue":  # (SIGTERM raises instead: exit code 143)
            print(f"[hope] requeued at step {self.trainer.global_step}: saved {signals.saved_path}")
        else:
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
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoLitLoggerTip) for f in tips.filters):
        tips.addFilter(_NoLitLoggerTip())
    # fp32 runs on GPUs use TF32 tensor cores (Lightning warns otherwise); no effect on CPU or under bf16 autocast.
    torch.set_float32_matmul_precision("high")
    return cli_class(
        model_class,
        TextDataModule,
        args=args,
        run=run,
        parser_class=HopeArgumentParser,
        seed_everything_default=1234,
        save_config_callback=SaveConfigBesideCheckpoints,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "precision": default_precision(),
            "plugins": [{"class_path": "hope.lit.checkpoint.AtomicCheckpointIO"}],
        },
    )
