"""The ``hope`` command.

    hope fit --config configs/pretrain/debug.yaml          # pretrain (LightningCLI: fit / validate / test)
    hope fit --config configs/pretrain/debug.yaml --ckpt_path last      # resume exactly
    hope validate --config configs/pretrain/debug.yaml --ckpt_path runs/debug/checkpoints/last.ckpt
    hope config list | show NAME                           # model presets and their documented fields

``fit``/``validate``/``test`` are LightningCLI subcommands over ``HopeLitModule`` and ``TextDataModule``; every
``__init__`` argument of those classes (and of the Trainer) is a config key, ``--print_config`` dumps them all.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import sys
from collections.abc import Callable, Sequence

from lightning.pytorch.utilities.exceptions import SIGTERMException

from hope import config as config_module
from hope import convert, generate_cli, stack
from hope.config import PRESETS, ModelConfig
from hope.evaluation import cli as eval_cli
from hope.finetune import cli as finetune_cli
from hope.lit.cli import build_cli
from hope.lit.divergence import TrainingDiverged
from hope.lit.requeue import SIGTERM_EXIT_CODE

# Subcommands outside LightningCLI, called with the remaining arguments.
EXTRA_COMMANDS: dict[str, Callable[[list[str]], object]] = {
    "convert": convert.main,
    "eval": eval_cli.main,
    "finetune": finetune_cli.main,
    "generate": generate_cli.main,
    "stack": stack.main,
}

USAGE = """usage: hope SUBCOMMAND [options]      (hope SUBCOMMAND --help: its options)

subcommands:
  fit        pretrain a model (LightningCLI: --config FILE, any --key value; --ckpt_path last resumes)
  validate   validation loss and perplexity of a checkpoint (--ckpt_path) on data.*
  test       the same, logged as test/*
  finetune   finetune a pretrained model with a continual-learning method (LoRA, EWC, replay, ...)
  eval       evaluate a checkpoint: perplexity, retention, recall, lm-eval
  generate   sample text from a checkpoint (--prompt; --ttl: HOPE models learn from the prompt)
  convert    a training checkpoint -> model.safetensors + model_config.yaml
  stack      a Hope-Attention model from a pretrained Transformer++ (level stacking)
  config     model presets: hope config list | hope config show PRESET
"""


def config_command(args: Sequence[str]) -> None:
    """``hope config list | show PRESET``: the presets, or one preset's fields with their documentation."""
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
    tree = ast.parse(inspect.getsource(config_module.ModelConfig))
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
    """The ``hope`` command: LightningCLI's fit/validate/test, or one of ``config`` and ``EXTRA_COMMANDS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    _show_progress_logs()
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    try:
        if args[0] == "config":
            config_command(args[1:])
        elif args[0] in EXTRA_COMMANDS:
            EXTRA_COMMANDS[args[0]](args[1:])
        else:
            build_cli(args)
    except TrainingDiverged as err:
        raise SystemExit(f"[hope] error: {err}") from None
    except SIGTERMException:  # a SIGTERM stopped the run: saved by SignalCheckpoint in training, else by nothing
        raise SystemExit(SIGTERM_EXIT_CODE) from None


if __name__ == "__main__":
    main()
