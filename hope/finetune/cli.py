"""``hope finetune``: finetune a pretrained model with a continual-learning method, through LightningCLI.

    hope finetune --config configs/finetune/lora.yaml --model.init_from runs/debug/checkpoints/last.ckpt
    hope finetune --config configs/finetune/lora.yaml --ckpt_path last      # resume this finetune run exactly
    hope finetune validate --config configs/finetune/lora.yaml --ckpt_path runs/finetune-lora/checkpoints/last.ckpt

The same CLI as ``hope fit`` (``hope.lit.cli.build_cli``: trainer defaults, checkpoint and progress-bar sections, the
resolved config beside every checkpoint) with ``FinetuneLitModule`` as the model and one more section, ``method:``
(``class_path`` + ``init_args`` of a ``hope.continual.methods`` class). The subcommand defaults to ``fit``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hope.continual.finetune import FinetuneMethod
from hope.finetune.module import FinetuneLitModule
from hope.lit.cli import HopeCLI, build_cli

SUBCOMMANDS = ("fit", "validate", "test")


class FinetuneCLI(HopeCLI):
    """``HopeCLI`` over ``FinetuneLitModule``, with the ``method:`` section passed to the model."""

    prog = "hope finetune"

    def add_arguments_to_parser(self, parser) -> None:
        """Add the ``method:`` section (a ``FinetuneMethod``, default ``FullFinetune``), linked to ``model.method``."""
        super().add_arguments_to_parser(parser)
        parser.add_subclass_arguments(
            FinetuneMethod, "method", required=False, default={"class_path": "hope.continual.methods.FullFinetune"}
        )
        parser.link_arguments("method", "model.method", apply_on="instantiate")


def main(argv: Sequence[str] | None = None, run: bool = True) -> FinetuneCLI:
    """Run ``hope finetune [fit|validate|test] ARGS``; ``fit`` when no subcommand is given (``--help`` too: the
    finetune options)."""
    args = list(argv or [])
    if not args or args[0] not in SUBCOMMANDS:
        args = ["fit", *args]
    return build_cli(args if run else args[1:], run=run, cli_class=FinetuneCLI, model_class=FinetuneLitModule)
