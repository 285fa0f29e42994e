"""Signals that end a run save it first, at a step boundary every rank agrees on: SIGTERM, and Slurm's requeue signal.

**SIGTERM** (schedulers, preemption, ``scancel`` and ``kill`` send it): the ranks save ``last.ckpt`` (in the
checkpoint folder, where ``--ckpt_path last`` looks) at the next optimizer step and stop at once (no more
validation) with ``SIGTERMException(143)``; ``hope`` exits with code 143 (128 + SIGTERM) so that wrappers see an
interrupted run, not a finished one. Lightning's own SIGTERM handler, which this replaces once training starts,
saves nothing and ends the process with exit code 0.

**Slurm requeue.** Slurm sends ``--signal=SIGUSR1@90`` to every task of the job some seconds before the time limit.
The ranks save ``hpc_ckpt_N.ckpt`` (Lightning's name and place, which ``slurm/common.sh`` resumes from), rank 0 runs
``scontrol requeue``, and training stops; the job's next run resumes, so this one exits 0. Lightning's own handler
saves from *inside* the signal handler; that save is collective (a barrier, and under DeepSpeed a gather), and the
signal reaches each rank at a different point of its step: a rank that takes it in Python enters the save while
another is blocked in a gradient all-reduce waiting for the first. Neither returns, and the job hangs until Slurm
kills it without a checkpoint (this happened in our 2-task CI test). The requeue handler replaces Lightning's only
when Lightning would install one (a ``SLURMEnvironment`` with ``auto_requeue``): it is registered first (in
``setup``), and Lightning skips a signal that already has one.

Either handler only sets a flag. After every optimizer step the ranks sum their flags in one all-reduce, so they all
see the request at the same global step, even when the signal reached one rank only (``kill`` of rank 0 of a local
DDP run). The price is one small all-reduce per ``check_every`` optimizer steps. A signal during validation is
served after it, at the next step; under Slurm, ``KillWait`` (default 30 s) bounds how long that may take.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from hope.lit.checkpoint import ConfigCheckpoint

__all__ = ["SIGTERM_EXIT_CODE", "SignalCheckpoint", "slurm_job_id"]

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process that SIGTERM ended


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"unexpected Slurm job id {job!r} (SLURM_JOB_ID / SLURM_ARRAY_*); cannot requeue it.")
    return job


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only it may set signal handlers


class SignalCheckpoint(pl.Callback):
    """On SIGTERM save ``last.ckpt`` and stop; on the Slurm requeue signal save, requeue and stop; both at the next
    optimizer step all ranks agree on. ``stopped_by`` says afterwards which one ended training (None: neither).

    Args:
        check_every: optimizer steps between the all-reduces that look for a pending signal.
    """

    def __init__(self, check_every: int = 1) -> None:
        self.check_every = check_every
        self.stopped_by: str | None = None
        self.saved_path: str | None = None
        self._flags = {"SIGTERM": False, "requeue": False}
        self._handlers: dict[int, object] = {}  # signal -> the handler ours replaced
        self._checked_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """When fitting under Slurm with auto-requeue, install a handler that only flags the requeue signal."""
        env = trainer._accelerator_connector.cluster_environment
        if stage == "fit" and isinstance(env, SLURMEnvironment) and env.auto_requeue and _main_thread():
            self._install(env.requeue_signal or signal.SIGUSR1, "requeue")

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Replace Lightning's SIGTERM handler (registered just before) by one that only sets a flag."""
        # Lightning registers its SIGTERM handler just before the sanity check and training: replace it.
        if _main_thread():
            self._install(signal.SIGTERM, "SIGTERM")

    on_train_start = on_sanity_check_start

    def _install(self, signum: int, flag: str) -> None:
        def on_signal(signum, frame) -> None:
            self._flags[flag] = True  # only a flag: no collective call may run inside a signal handler

        on_signal.hope_flag = flag  # marks our handlers (see teardown)
        previous = signal.signal(signum, on_signal)
        self._handlers.setdefault(signum, previous)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Put back the handlers ours replaced, unless Lightning has already restored the originals."""
        for signum, previous in self._handlers.items():
            if hasattr(signal.getsignal(signum), "hope_flag"):  # Lightning may have restored the original already
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._handlers = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """At a new optimizer step, if any rank got a signal: save, then requeue (Slurm) or stop (SIGTERM)."""
        step = trainer.global_step
        if not self._handlers or step == self._checked_step or step % self.check_every:
            return  # no handler set, or not at a new optimizer step (mid gradient accumulation)
        self._checked_step = step
        local = torch.tensor([float(v) for v in self._flags.values()], device=pl_module.device)
        term, requeue = (trainer.strategy.reduce(local, reduce_op="sum") > 0).tolist()
        if requeue:
            self._save_and_requeue(trainer, step)
        elif term:
            self._save_and_stop(trainer, step)

    def _save_and_requeue(self, trainer: pl.Trainer, step: int) -> None:
        rank_zero_info(f"[hope] Slurm requeue signal: saving at step {step}, then requeueing")
        self.saved_path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(self.saved_path)
        if trainer.is_global_zero:
            self._requeue()
        self.stopped_by, trainer.should_stop = "requeue", True

    def _save_and_stop(self, trainer: pl.Trainer, step: int) -> None:
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ConfigCheckpoint):
            self.saved_path = checkpoint.save_last_now(trainer)
        else:  # no checkpoint folder configured: Lightning's hpc checkpoint in default_root_dir
            self.saved_path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            trainer.save_checkpoint(self.saved_path)
        rank_zero_info(
            f"[hope] SIGTERM: saved {self.saved_path} at step {step}. Resume with --ckpt_path last (same "
            f"trainer.default_root_dir). Exiting with code {SIGTERM_EXIT_CODE}."
        )
        self.stopped_by = "SIGTERM"
        # Not trainer.should_stop: Lightning would validate once more before stopping, while the scheduler's
        # SIGKILL may be seconds away. The exception ends the run at once; `hope` exits with its code.
        raise SIGTERMException(SIGTERM_EXIT_CODE)

    @staticmethod
    def _requeue() -> None:
        job = slurm_job_id()
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            rank_zero_info(f"[hope] requeued Slurm job {job}")
        else:
            rank_zero_warn(f"scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()}")
