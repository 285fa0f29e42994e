"""The LightningModule: next-token training of a HopeLM with AdamW + warmup/cosine.

Logged to TensorBoard: ``train/loss``, ``train/ppl``, ``train/lr``, ``train/grad_norm`` (before clipping),
``train/tokens_per_sec`` (all ranks, wall clock between batches, data loading included), ``train/tokens``,
``val/loss`` and ``val/ppl`` (token-weighted over the whole validation set, reduced across ranks). HOPE families
(CMS levels, one ``LevelOptimizer``) also log ``train/<level>/updates``, ``train/<level>/lr`` and
``train/<level>/grad_norm`` for ``base`` and ``level1``, ``level2``, ...
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import lightning as L
import torch

from hope.checkpoint import load_model_weights
from hope.config import ModelConfig
from hope.lit.datamodule import DataPositionCallback
from hope.lit.divergence import gradient_norm
from hope.lit.requeue import SignalCheckpoint
from hope.lit.resume import apply_resumed_optim
from hope.loss import next_token_loss
from hope.model import HopeLM
from hope.optim import OptimConfig, pretrain_optimizer


def _level_groups(optimizer) -> dict[str, list[dict]]:
    """Param groups of a LevelOptimizer by their ``level`` tag (empty for plain optimizers)."""
    levels: dict[str, list[dict]] = {}
    for group in getattr(optimizer, "param_groups", []):
        if "level" in group and "step_count" in group:
            levels.setdefault(group["level"], []).append(group)
    return levels


class HopeLitModule(L.LightningModule):
    """Pretrain or validate a HOPE / Titans / Transformer++ language model.

    Args:
        preset: Name of a model preset (``hope config list`` shows them; ``hope config show NAME`` their fields).
        overrides: Model config fields to change from the preset, e.g. ``{n_layer: 8, sliding_window: 512}``.
        optim: Optimizer and learning-rate schedule.
        init_from: Pretrained weights to start from (a ``.ckpt`` or ``.safetensors``). This initialises the
            weights only; optimizer, step and data position start fresh. To continue a run, use ``--ckpt_path``.
        compile: Run the whole model through ``torch.compile`` (``nn.Module.compile``: in place, so checkpoints keep
            their keys). The first steps pay the compile time; memory ops whose Python loops break the graph are
            compiled piecewise (``memory_compile`` compiles their chunk steps alone).
    """

    def __init__(
        self,
        preset: str = "debug",
        overrides: dict[str, Any] | None = None,
        optim: OptimConfig | None = None,
        init_from: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.config = ModelConfig.from_preset(preset, **(overrides or {}))
        self.optim = optim if optim is not None else OptimConfig()
        # Plain types only: checkpoints stay loadable with torch.load(weights_only=True), which LightningCLI uses.
        # init_from is left out: a checkpoint's weights are in its state_dict, not in the file it started from.
        self.save_hyperparameters({"preset": preset, "overrides": overrides, "optim": dataclasses.asdict(self.optim)})
        self.model = HopeLM(self.config)
        if init_from is not None:
            load_model_weights(self.model, init_from)
        if compile:
            self.model.compile()
        self._last_batch_end: float | None = None
        self._resumed: dict[str, Any] | None = None  # the checkpoint's optimizer settings, after --ckpt_path

    def forward(self, idx_BT: torch.Tensor, state: list | None = None):
        """Logits [B, T, padded_vocab_size] and the new per-block state of the wrapped ``HopeLM``."""
        return self.model(idx_BT, state)

    # -- checks against the data ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check that the data module's tokenizer fits the vocabulary and ``data.seq_len`` fits ``max_seq_len``."""
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.check_fits(self.config.vocab_size)
        seq_len = getattr(datamodule, "seq_len", None)
        if seq_len is not None and seq_len > self.config.max_seq_len:
            raise ValueError(
                f"data.seq_len={seq_len} is longer than the model supports (max_seq_len={self.config.max_seq_len} "
                f"for preset {self.config.name!r}); lower data.seq_len or set model.overrides.max_seq_len."
            )

    def configure_callbacks(self):
        """Callbacks every run needs: the data position saved in checkpoints, and saving on SIGTERM / Slurm's signal."""
        return [DataPositionCallback(), SignalCheckpoint()]

    # -- training ---------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """After a resume, make the restored optimizer and schedule follow ``model.optim`` (``hope.lit.resume``)."""
        if self._resumed is not None:  # the optimizer and schedule were restored: make them follow model.optim
            apply_resumed_optim(self.trainer, self, self._resumed["optim"], self._resumed["schedule_steps"])
            self._resumed = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Next-token loss of one batch; logs train/loss, train/ppl and train/lr."""
        logits, _ = self.model(batch["input_ids"])
        loss = next_token_loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", loss.detach().exp())
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log train/tokens_per_sec (all ranks, between batch ends), CMS levels' updates and lr, and train/tokens."""
        tokens = batch["input_ids"].numel() * self.trainer.world_size
        now = time.perf_counter()
        if self._last_batch_end is not None:
            self.log("train/tokens_per_sec", tokens / (now - self._last_batch_end), prog_bar=True)
        self._last_batch_end = now
        self._log_levels()
        self.log("train/tokens", float((self.global_step + 1) * tokens * self.trainer.accumulate_grad_batches))

    def on_before_optimizer_step(self, optimizer) -> None:
        """Log the gradient norm before clipping: ``train/grad_norm``, and ``train/<level>/grad_norm`` per CMS level."""
        norm = gradient_norm(self.parameters())
        if norm is not None:  # DeepSpeed ZeRO keeps gradients in its own buffers; then there is nothing to read here
            self.log("train/grad_norm", norm)
        for level, groups in _level_groups(optimizer).items():
            level_norm = gradient_norm(p for g in groups for p in g["params"])
            if level_norm is not None:
                self.log(f"train/{level}/grad_norm", level_norm)

    def _log_levels(self) -> None:
        """Per CMS level (HOPE's LevelOptimizer): updates applied so far and current lr (NL Eq. 31's schedule)."""
        for level, groups in _level_groups(self.trainer.optimizers[0]).items():
            self.log(f"train/{level}/updates", float(groups[0]["step_count"] // groups[0]["period"]))
            self.log(f"train/{level}/lr", float(groups[0]["lr"]))

    def configure_optimizers(self):
        """AdamW + warmup/cosine over ``total_steps()``, or one ``LevelOptimizer`` for models with CMS levels."""
        return pretrain_optimizer(self.model, self.optim, self.total_steps())

    def total_steps(self) -> int:
        """Optimizer steps the schedule spans: ``trainer.max_steps``, else ``model.optim.decay_steps``."""
        total = self.trainer.max_steps
        if total is None or total < 1:
            if self.optim.decay_steps is None:
                raise ValueError("set trainer.max_steps (or model.optim.decay_steps): cosine needs an end.")
            total = self.optim.decay_steps
        return total

    # -- validation -------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        """Zero the summed NLL and the target count of this validation (or test) pass."""
        self._val_nll = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Add one batch's summed next-token NLL and its number of targets (labels != -100); also the test step."""
        logits, _ = self.model(batch["input_ids"])
        self._val_nll += next_token_loss(logits, batch["labels"], reduction="sum").double()
        self._val_tokens += (batch["labels"] != -100).sum()

    def on_validation_epoch_end(self) -> None:
        """Token-weighted loss over all ranks: log ``<stage>/loss`` and ``<stage>/ppl`` (val or test) and print them."""
        nll = self.trainer.strategy.reduce(self._val_nll, reduce_op="sum")
        tokens = self.trainer.strategy.reduce(self._val_tokens, reduce_op="sum")
        loss = (nll / tokens.clamp_min(1)).item()
        self._last_batch_end = None  # the pause for validation is not training throughput
        stage = "test" if self.trainer.testing else "val"
        when = "before training" if self.trainer.sanity_checking else f"step {self.global_step}"
        self.print(f"[hope] {when}: {stage}_loss {loss:.4f}  {stage}_ppl {math.exp(loss):.2f}  ({int(tokens)} tokens)")
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/ppl", math.exp(loss))

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    # -- checkpoints ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model config in the checkpoint (``model_config``), so it loads without the CLI config."""
        checkpoint["model_config"] = self.config.to_dict()
        if self._trainer is not None and self.trainer.state.fn == "fit":  # the schedule's length, for a resume
            checkpoint["schedule_steps"] = self.total_steps()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the checkpoint's optimizer settings and schedule length for ``on_train_start``."""
        self._resumed = {
            "optim": checkpoint.get("hyper_parameters", {}).get("optim"),
            "schedule_steps": checkpoint.get("schedule_steps"),
        }
