"""A diverging run stops at the bad step with a non-zero exit, names it, and never writes a non-finite checkpoint;
``divergence.skip_batches`` skips a bounded number of bad batches instead."""

import math
import re

import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hope.checkpoint import load_checkpoint_file
from hope.cli import main
from hope.lit.checkpoint import AtomicCheckpointIO
from hope.lit.cli import build_cli
from hope.lit.divergence import TrainingDiverged
from hope.lit.module import HopeLitModule
from tests.test_cli import fit_args


def assert_finite(ckpt_path) -> dict:
    ckpt = load_checkpoint_file(ckpt_path)
    bad = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"{ckpt_path} holds non-finite tensors: {bad}"
    return ckpt


def test_huge_lr_stops_at_the_bad_step(tmp_path, text_corpus):
    """lr 1e6 (the issue's case: NaN from step ~5, then "done" and exit 0): exit non-zero at the first bad step,
    naming the step, the loss, the gradient norm, the lr and the first parameter with a non-finite gradient."""
    root = tmp_path / "run"
    args = fit_args(root, text_corpus, "--model.optim.lr", "1e6", "--checkpoint.every_n_train_steps", "1", steps=8)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    found = re.search(
        r"training diverged at step (\d+): loss \S+, gradient norm (nan|inf), lr 1e\+06; "
        r"first non-finite gradient: model\.\S+\.",
        message,
    )
    assert found, message
    step = int(found.group(1))
    assert 1 < step < 8
    assert "--divergence.skip_batches" in message and "last.ckpt" in message
    ckpts = root / "checkpoints"
    assert assert_finite(ckpts / "last.ckpt")["global_step"] == step - 1  # the last good step, not the bad one
    for path in ckpts.glob("*.ckpt"):
        assert assert_finite(path)["global_step"] < step


class PoisonGradients(Callback):
    """Makes the gradients of the given optimizer steps (1-based) NaN, as a bad batch would."""

    def __init__(self, steps: set[int]):
        self.steps = steps

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step + 1 in self.steps:
            next(pl_module.parameters()).grad.fill_(math.nan)


def fit_poisoned(root, corpus, steps: set[int], *extra: str):
    cli = build_cli(fit_args(root, corpus, "--trainer.val_check_interval", "6", *extra)[1:], run=False)
    cli.trainer.callbacks.append(PoisonGradients(steps))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_skip_batches_skips_counts_and_keeps_weights(tmp_path, text_corpus, caplog):
    root = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"skipped a bad batch at step 2: .*gradient norm nan"):
        cli = fit_poisoned(root, text_corpus, {2, 4}, "--divergence.skip_batches", "2")
    assert cli.trainer.global_step == 6  # skipped steps still count (the schedule and data move on)
    assert_finite(root / "checkpoints" / "last.ckpt")
    events = EventAccumulator(str(next((root / "lightning_logs").glob("version_*")))).Reload()
    counts = {e.step: e.value for e in events.Scalars("train/skipped_batches")}  # logged after each step
    assert counts == {0: 0.0, 1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0, 5: 2.0}


def test_skip_batches_is_a_limit(tmp_path, text_corpus):
    with pytest.raises(TrainingDiverged, match=r"diverged at step 4: .*model\.embed\.weight.*skipped so far: 1"):
        fit_poisoned(tmp_path / "run", text_corpus, {2, 4}, "--divergence.skip_batches", "1")


class NaNLossAt(HopeLitModule):
    """The loss of optimizer step 3 is NaN (a bad batch, or a forward pass that overflowed)."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if self.global_step + 1 == 3 else loss


def test_nan_loss_is_named(tmp_path, text_corpus):
    cli = build_cli(fit_args(tmp_path / "run", text_corpus)[1:], run=False, model_class=NaNLossAt)
    with pytest.raises(TrainingDiverged, match=r"at step 3: loss nan, gradient norm nan, lr [\d.e+-]+; first non"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_non_finite_weights_are_never_written(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"a": torch.ones(2)}}, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"refusing to write checkpoint .*1 of 2 weight tensors are not finite.*b"):
        io.save_checkpoint({"state_dict": {"a": torch.ones(2), "b": torch.tensor([1.0, math.inf])}}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
