"""``FinetuneLitModule``: ``HopeLitModule`` plus a continual-learning method, parameter freezing, per-group learning
rates, optional memory layers, and trainable-only checkpoints.

Order at construction: model from ``preset``/``overrides`` -> memory layers and starting weights (``init_from``) ->
``method.prepare`` (adapters) -> trainability (``method.trains``, ``freeze``, ``train_only``). At the start of
``fit`` (after a resumed checkpoint is restored, on the training device) ``method.setup_data`` builds the data
state the checkpoint did not bring (EWC Fisher, SMF background, replay pools).

Logged beside ``HopeLitModule``'s scalars: ``train/penalty`` (EWC) and the method's ``step_stats`` as ``train/*``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hope.checkpoint import check_base, init_weights, weights_fingerprint
from hope.continual.finetune import FinetuneMethod, step_loss
from hope.continual.methods.full import FullFinetune
from hope.continual.params import configure_trainable
from hope.layers.memory_layer import MemoryLayerConfig, swap_mlp_for_memory
from hope.lit.module import HopeLitModule
from hope.optim import OptimConfig

SAVE_WEIGHTS = ("full", "trainable")


class FinetuneLitModule(HopeLitModule):
    """Finetune a pretrained HOPE / Titans / Transformer++ model with a continual-learning method.

    Args:
        preset: Name of a model preset; must match the starting checkpoint's.
        overrides: Model config fields to change from the preset (as the checkpoint was trained with).
        optim: Peak lr, AdamW settings and warmup/cosine schedule (a method may pick another optimizer: SMF, SGD).
        init_from: Pretrained weights to start from (``.ckpt`` of ``hope fit``/``hope finetune``, or
            ``.safetensors``): weights only, step and data position start at 0. To continue a finetune run, use
            ``--ckpt_path``; keep ``init_from`` then (a trainable-only checkpoint takes its frozen weights from it).
        method: Set through the top-level ``method:`` config key (``hope.continual.methods``); full finetuning if unset.
        freeze: Parameter-name patterns that do not train (globs, or regex after ``re:``), e.g. ``[embed.*,
            blocks.0.*]``; CMS levels: ``[blocks.*.cms.levels.0.*]``.
        train_only: If set, only parameters matching one of these patterns train (then ``freeze`` applies).
        group_lr: Peak learning rate by parameter-name pattern, first match wins, e.g. ``{"head.*": 1e-4}``;
            others use ``optim.lr``. Layer-wise decay multiplies these.
        memory_layers: Product-key memory layers that replace the MLP of ``blocks`` (Sparse Memory Finetuning).
            Taken from ``init_from`` if it has them, else fresh (train them before finetuning with SMF).
        save_weights: ``full``: checkpoints hold every weight. ``trainable``: only what trains (LoRA: the adapters),
            plus buffers; the frozen rest comes from ``init_from`` when loading or resuming.
    """

    def __init__(
        self,
        preset: str = "debug",
        overrides: dict[str, Any] | None = None,
        optim: OptimConfig | None = None,
        init_from: str | None = None,
        method: FinetuneMethod | None = None,
        freeze: list[str] | None = None,
        train_only: list[str] | None = None,
        group_lr: dict[str, float] | None = None,
        memory_layers: MemoryLayerConfig | None = None,
        save_weights: str = "full",
    ) -> None:
        super().__init__(preset, overrides, optim, init_from=None)  # starting weights are loaded below
        if save_weights not in SAVE_WEIGHTS:
            raise ValueError(f"model.save_weights={save_weights!r}: choose one of {SAVE_WEIGHTS}.")
        self.method = method if method is not None else FullFinetune()
        self.init_from, self.memory_layers, self.save_weights = init_from, memory_layers, save_weights
        self.group_lr = group_lr
        # Plain types only (LightningCLI re-reads them with weights_only=True on --ckpt_path); the method is the
        # top-level `method:` section, which the CLI's resolved config.yaml beside each checkpoint records.
        self.save_hyperparameters(
            {
                "preset": preset,
                "overrides": overrides,
                "optim": dataclasses.asdict(self.optim),
                "freeze": freeze,
                "train_only": train_only,
                "group_lr": group_lr,
                "save_weights": save_weights,
                "memory_layers": dataclasses.asdict(memory_layers) if memory_layers is not None else None,
            }
        )
        if init_from is not None:
            init_weights(self.model, init_from, memory_layers)
        elif memory_layers is not None:
            swap_mlp_for_memory(self.model, memory_layers)
        self.method.prepare(self.model)
        self.trainable = set(configure_trainable(self.model, self.method.trains, freeze, train_only))
        frozen = {n: p for n, p in self.model.named_parameters() if n not in self.trainable}
        self.base_fingerprint = weights_fingerprint(frozen) if save_weights == "trainable" else None

    # -- data state and checks -----------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Build the method's missing data state (EWC Fisher, SMF background, replay pools), then check it."""
        datamodule = self.trainer.datamodule
        self.method.setup_data(self.model, datamodule.tokenizer, datamodule.seq_len)
        self.method.check_finetune()

    # -- training ------------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss (next-token + penalty) of the method's mixed batch; logs train/loss, ppl, penalty and the top lr."""
        batch = self.method.mix_batch(batch, self.global_step)
        loss, lm_loss, penalty = step_loss(self.method, self.model, batch)
        self.log("train/loss", lm_loss, prog_bar=True)
        self.log("train/ppl", lm_loss.detach().exp())
        if penalty is not None:
            self.log("train/penalty", penalty.detach())
        # the top lr: with layer-wise decay or group_lr, group 0 may be the embedding's, the smallest
        self.log("train/lr", max(g["lr"] for g in self.trainer.optimizers[0].param_groups), prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Run the method's gradient hook and log its ``step_stats`` as ``train/*``, then the base gradient norms."""
        self.method.before_optimizer_step(self.model, self.global_step)
        for key, value in self.method.step_stats().items():
            self.log(f"train/{key}", value)
        super().on_before_optimizer_step(optimizer)

    def configure_optimizers(self):
        """The method's optimizer and schedule (``FinetuneMethod.build_optimizer``) with the ``group_lr`` patterns."""
        return self.method.build_optimizer(self.model, self.optim, self.total_steps(), self.group_lr)

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop frozen weights if ``save_weights`` is ``trainable``; add the method, its structure and its state."""
        super().on_save_checkpoint(checkpoint)
        if self.save_weights == "trainable":
            frozen = {f"model.{n}" for n, _ in self.model.named_parameters() if n not in self.trainable}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["finetune"] = {
            "save_weights": self.save_weights,
            "init_from": self.init_from,
            "base_fingerprint": self.base_fingerprint,
            "memory_layers": dataclasses.asdict(self.memory_layers) if self.memory_layers is not None else None,
            "structure": self.method.structure(),
            "method": {
                "class_path": f"{type(self.method).__module__}.{type(self.method).__qualname__}",
                "config": self.method.config(),
            },
            "method_state": self.method.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse non-finetune checkpoints; fill frozen weights from ``init_from`` (checked); restore the method."""
        super().on_load_checkpoint(checkpoint)
        info = checkpoint.get("finetune")
        if info is None:
            raise ValueError(
                "this checkpoint was not written by `hope finetune`; to start from it use "
                "--model.init_from, not --ckpt_path."
            )
        if info["save_weights"] == "trainable":
            saved = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
            check_base(self.model, saved, info["base_fingerprint"], self.init_from)
            own = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            checkpoint["state_dict"] = {**own, **checkpoint["state_dict"]}
        self.method.load_state_dict(info["method_state"])
