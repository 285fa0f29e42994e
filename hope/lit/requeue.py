"""Slurm auto-requeue that every rank agrees on: save at a step boundary, then requeue.

Slurm sends ``--signal=SIGUSR1@90`` to every task of the job some seconds before the time limit. Lightning's own
handler saves the hpc checkpoint from *inside* the signal handler. That save is collective (a barrier, and under
DeepSpeed a gather), and the signal reaches each rank at a different point of its step: a rank that takes it in
Python enters the save while another is blocked in a gradient all-reduce waiting for the first. Neither returns,
and the job hangs until Slurm kills it without a checkpoint (this happened in our 2-task CI test).

Here the handler only sets a flag. After every optimizer step the ranks OR their flags in one all-reduce, so they
all see the request at the same global step; then all of them save ``hpc_ckpt_N.ckpt`` (Lightning's name and
place, which ``slurm/common.sh`` resumes from), rank 0 runs ``scontrol requeue``, and training stops. The price is
one scalar all-reduce per ``check_every`` optimizer steps.

The callback replaces Lightning's handler only when Lightning would install one (a ``SLURMEnvironment`` with
``auto_requeue``): it registers its handler first (in ``setup``), and Lightning skips a signal that already has one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

__all__ = ["SlurmRequeue", "slurm_job_id"]


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"unexpected Slurm job id {job!r} (SLURM_JOB_ID / SLURM_ARRAY_*); cannot requeue it.")
    return job


class SlurmRequeue(pl.Callback):
    """On the Slurm requeue signal, save and requeue at the next optimizer step all ranks agree on.

    Args:
        check_every: optimizer steps between the all-reduces that look for a pending signal.
    """

    def __init__(self, check_every: int = 1) -> None:
        self.check_every = check_every
        self.requested = False
        self._signum: int | None = None
        self._previous_handler = None
        self._checked_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """When fitting under Slurm with auto-requeue, install a handler that only flags the requeue signal."""
        env = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(env, SLURMEnvironment) or not env.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; Lightning's own applies then
        self._signum = env.requeue_signal or signal.SIGUSR1
        self._previous_handler = signal.signal(self._signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True  # only a flag: no collective call may run inside a signal handler

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Put back the signal handler that was there before ``setup``."""
        if self._signum is not None:
            signal.signal(self._signum, self._previous_handler or signal.SIG_DFL)
            self._signum = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """At a new optimizer step, if any rank got the signal: save the hpc checkpoint, requeue (rank 0), stop."""
        step = trainer.global_step
        if self._signum is None or step == self._checked_step or step % self.check_every:
            return  # not under Slurm, or not at a new optimizer step (mid gradient accumulation)
        self._checked_step = step
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        rank_zero_info(f"[hope] Slurm requeue signal: saving at step {step}, then requeueing")
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            self._requeue()
        trainer.should_stop = True

    @staticmethod
    def _requeue() -> None:
        job = slurm_job_id()
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            rank_zero_info(f"[hope] requeued Slurm job {job}")
        else:
            rank_zero_warn(f"scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()}")
