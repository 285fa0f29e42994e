"""SIGTERM saves and says so: a real `hope fit` process (1 rank, and 2 ranks of Lightning DDP on CPU) gets SIGTERM
mid-training, saves last.ckpt at a step all ranks agree on, and exits 143.

The 2-rank run signals rank 0 only (``kill PID``, as an impatient user or a container runtime would): rank 1 learns
of it through the all-reduce of ``hope.lit.requeue.SignalCheckpoint`` and stops at the same step. Local DDP rather
than Slurm so that the test runs everywhere; tests/test_slurm.py covers 2 Slurm tasks that all get the signal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hope.checkpoint import load_checkpoint_file
from tests.test_cli import fit_args

REPO = Path(__file__).resolve().parents[1]
TINY = '{"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64}'


def run_until_signalled(tmp_path: Path, corpus: Path, *extra: str) -> tuple[int, str, Path]:
    """Start `hope fit` for 10000 steps, send SIGTERM to its first process once step 2 is saved; (rc, output, run)."""
    root = tmp_path / "run"
    args = fit_args(root, corpus, "--model.overrides", TINY, "--trainer.num_sanity_val_steps", "0", *extra)
    args += ["--trainer.val_check_interval", "5000", "--checkpoint.every_n_train_steps", "2", "--trainer.max_steps"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hope", *args, "10000"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the DDP child is cleaned up with it below
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not (root / "checkpoints" / "step000002.ckpt").exists():
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, f"no step 2 after 300 s:\n{log.read_text()[-4000:]}"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)  # to rank 0 only
            rc = proc.wait(timeout=120)
            deadline = time.monotonic() + 30  # a DDP child must end too, on its own
            while _group_alive(proc.pid):
                assert time.monotonic() < deadline, "a rank outlived the SIGTERM"
                time.sleep(0.2)
        finally:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
    return rc, log.read_text(errors="replace").replace("\r", "\n"), root


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def check_saved_and_exited(rc: int, out: str, root: Path) -> int:
    assert rc == 143, out[-4000:]
    found = re.search(r"\[hope\] SIGTERM: saved (\S+) at step (\d+)\. Resume with --ckpt_path last", out)
    assert found, out[-4000:]
    step = int(found.group(2))
    assert Path(found.group(1)) == root / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint_file(root / "checkpoints" / "last.ckpt")
    assert 2 <= step < 10000 and ckpt["global_step"] == step
    assert ckpt["TextDataModule"]["consumed_batches"] == step  # the data position of that step
    assert "done:" not in out
    return step


def test_sigterm_saves_and_exits_143(tmp_path, text_corpus):
    check_saved_and_exited(*run_until_signalled(tmp_path, text_corpus))


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
def test_sigterm_to_rank0_of_two_saves_and_exits_143(tmp_path, text_corpus):
    rc, out, root = run_until_signalled(
        tmp_path, text_corpus, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"
    )
    assert "MEMBER: 2/2" in out  # really two ranks
    check_saved_and_exited(rc, out, root)
