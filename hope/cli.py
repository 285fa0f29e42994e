"""The ``hope`` command.

    hope fit --config configs/pretrain/debug.yaml          # pretrain (LightningCLI: fit / validate / test)
    hope fit --config configs/pretrain/debug.yaml --ckpt_path last      # resume exactly
    hope validate --config configs/pretrain/debug.yaml --ckpt_path runs/debug/checkpoints/last.ckpt
    hope config list | show NAME                           # model presets and their documented fields

``fit``/``validate``/``test`` are LightningCLI subcommands over ``HopeLitModule`` and ``TextDataModule``; every
``__init__`` argument of those classes (and of the Trainer) is a config key, ``--print_config`` dumps them all.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import set_docstring_parse_options
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from hope.config import PRESETS, ModelConfig
from hope.data.datamodule import TextDataModule
from hope.lit import deepspeed as _deepspeed  # noqa: F401  (registers the hope_deepspeed_stage_* strategies)
from hope.lit.callbacks import ProgressBar
from hope.lit.checkpoint import ConfigCheckpoint
from hope.lit.module import HopeLitModule

# Subcommands outside LightningCLI: name -> "module:function", called with the remaining arguments.
EXTRA_COMMANDS: dict[str, str] = {
    "convert": "hope.convert:main",
    "eval": "hope.evaluation.cli:main",
    "finetune": "hope.finetune.cli:main",
    "stack": "hope.stack:main",
}


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
    def add_arguments_to_parser(self, parser) -> None:
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
        if not self.trainer.is_global_zero:
            return
        ckpt = self.trainer.checkpoint_callback
        where = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") or "(none saved)"
        logs = self.trainer.logger.log_dir if self.trainer.logger is not None else "(no logger)"
        print(f"[hope] done: {self.trainer.global_step} steps. checkpoint: {where}")
        print(f"[hope] TensorBoard logs: {logs}  (view with: tensorboard --logdir {Path(logs).parent})")


def build_cli(args: Sequence[str] | None = None, run: bool = True, cli_class: type[HopeCLI] = HopeCLI) -> HopeCLI:
    set_docstring_parse_options(attribute_docstrings=True)
    # fp32 runs on GPUs use TF32 tensor cores (Lightning warns otherwise); no effect on CPU or under bf16 autocast.
    torch.set_float32_matmul_precision("high")
    return cli_class(
        HopeLitModule,
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


def config_command(args: Sequence[str]) -> None:
    if not args or args[0] not in ("list", "show"):
        raise SystemExit("usage: hope config list | hope config show PRESET")
    if args[0] == "list":
        for name in sorted(PRESETS):
            print(name)
        return
    if len(args) < 2:
        raise SystemExit("usage: hope config show PRESET")
    config = ModelConfig.from_preset(args[1])
    docs = _field_docs()
    for f in dataclasses.fields(config):
        print(f"{f.name}: {getattr(config, f.name)!r}\n    {docs.get(f.name, '')}")


def _field_docs() -> dict[str, str]:
    """Attribute docstrings of ModelConfig (the same text jsonargparse shows as CLI help)."""
    import ast
    import inspect

    import hope.config

    tree = ast.parse(inspect.getsource(hope.config.ModelConfig))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _show_progress_logs() -> None:
    """hope's own INFO lines (e.g. tokenizing a corpus the first time) on stderr, as Lightning's are."""
    logger = logging.getLogger("hope")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hope] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    _show_progress_logs()
    if args and args[0] == "config":
        config_command(args[1:])
        return
    if args and args[0] in EXTRA_COMMANDS:
        module_name, function = EXTRA_COMMANDS[args[0]].split(":")
        getattr(importlib.import_module(module_name), function)(args[1:])
        return
    build_cli(args)


if __name__ == "__main__":
    main()
