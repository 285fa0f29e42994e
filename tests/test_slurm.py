"""The sbatch scripts on a real one-node Slurm cluster (slurm/local_cluster.sh), running the real `hope fit`.

Needs the Slurm packages (.ci/install_slurm.sh) and root (the local cluster runs as SlurmUser=root). The cluster
gets its own directory and a free port, so a cluster you started by hand is left alone. Jobs use 2 tasks on the
debug model with tiny batches; the module takes about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local_cluster.sh"
COMMON = REPO / "slurm" / "common.sh"

pytestmark = pytest.mark.slurm

# The debug model at a size where a step takes a fraction of a second on 2 shared cores.
SMALL = [
    "--trainer.accelerator",
    "cpu",
    "--data.batch_size",
    "4",
    "--data.seq_len",
    "64",
    "--data.max_val_blocks",
    "2",
]
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    """A port p with p and p+1 free (slurmctld, slurmd)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and _port_free(port + 1):
            return port
    raise RuntimeError("no free port pair for the test cluster")


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """Start a private local cluster for the session; yields the environment for sbatch & co."""
    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld not installed: run .ci/install_slurm.sh")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster runs as SlurmUser=root; run as root")
    # Not under pytest's 0700 tmp: munged (user munge) must reach its socket. Short: UNIX socket paths <= 108 bytes.
    cluster_dir = Path(tempfile.mkdtemp(prefix="hope-slurm-"))
    cluster_dir.chmod(0o755)
    env = {**os.environ, "HOPE_SLURM_PORT": str(_free_port_pair())}
    start = subprocess.run(
        [str(CLUSTER), "start", str(cluster_dir)], env=env, capture_output=True, text=True, timeout=120
    )
    assert start.returncode == 0, f"local cluster did not start:\n{start.stderr}"
    env["SLURM_CONF"] = re.search(r"export SLURM_CONF=(\S+)", start.stdout).group(1)
    # The job runs `python -m hope` with this interpreter (no PATH assumptions) and prints a progress line per step.
    env["HOPE"] = f"{sys.executable} -m hope"
    env["HOPE_PROGRESS_REFRESH"] = "1"
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER), "stop", str(cluster_dir)], env=env, capture_output=True, timeout=120)
        shutil.rmtree(cluster_dir, ignore_errors=True)


def submit(env: dict[str, str], script: str, sbatch_args: list[str], exports: dict[str, str], args: list[str]) -> str:
    export = ",".join(["ALL", *(f"{k}={v}" for k, v in exports.items())])
    cmd = ["sbatch", "--parsable", f"--chdir={REPO}", f"--export={export}", *sbatch_args, script, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_info(env: dict[str, str], job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)


def wait_done(env: dict[str, str], job_id: str, log: Path, timeout: float = 300) -> dict[str, str]:
    """Poll once a second (`sbatch --wait` backs off up to 32 s) until the job is finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(env, job_id)
        if info["JobState"] in DONE_STATES:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job_id], env=env, timeout=30)
    pytest.fail(f"job {job_id} still {info['JobState']} after {timeout} s; log:\n{read_log(log)[-4000:]}")


def read_log(log: Path) -> str:
    # The progress bar rewrites its line with \r; as lines it is easier to search.
    return log.read_text(errors="replace").replace("\r", "\n") if log.exists() else "(no log)"


def global_step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def assert_completed(info: dict[str, str], log: Path) -> None:
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), read_log(log)[-4000:]


def submit_pretrain(env: dict[str, str], run_dir: Path, log: Path, args: list[str]) -> str:
    """slurm/pretrain.sbatch with 2 tasks on the debug config and SMALL settings, plus ``args``."""
    exports = {"CONFIG": "configs/pretrain/debug.yaml", "RUN_DIR": str(run_dir)}
    return submit(env, "slurm/pretrain.sbatch", ["--nodes=1", "--ntasks-per-node=2", f"--output={log}"], exports, args)


def wait_for_step(env: dict[str, str], job: str, log: Path, steps: str, max_steps: int) -> None:
    """Until the progress bar shows a step matching the regex ``steps`` (of ``max_steps``): mid-training."""
    deadline = time.monotonic() + 180
    while not re.search(rf"Epoch 0:.*\| *({steps})/{max_steps} ", read_log(log)):
        assert time.monotonic() < deadline, f"training did not reach step {steps}:\n{read_log(log)[-4000:]}"
        assert job_info(env, job)["JobState"] in ("PENDING", "RUNNING"), read_log(log)[-4000:]
        time.sleep(0.5)


def test_pretrain_two_tasks(slurm_env, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = submit_pretrain(
        slurm_env, run_dir, log, [*SMALL, "--trainer.max_steps", "6", "--trainer.val_check_interval", "3"]
    )
    info = wait_done(slurm_env, job, log)
    assert_completed(info, log)
    text = read_log(log)
    assert "SLURM_RESTART_COUNT=0" in text and "ntasks_per_node=2" in text
    assert "Starting with 2 processes" in text  # Lightning's DDP over the 2 Slurm tasks, not 2 separate runs

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert global_step(ckpt) == 6
    config = yaml.safe_load((ckpt.parent / "config.yaml").read_text())
    assert (config["trainer"]["num_nodes"], str(config["trainer"]["devices"])) == (1, "2")
    # Lightning names the TensorBoard version after the Slurm job id, so a requeued job logs to the same folder.
    assert list((run_dir / "lightning_logs" / f"version_{job}").glob("events.out.tfevents.*"))


def test_requeue_on_signal_resumes(slurm_env, tmp_path):
    """SIGUSR1 to both tasks mid-training: they agree on a step, save hpc_ckpt_1.ckpt, requeue; the rerun resumes.

    Two tasks, because that is where saving from inside Lightning's own signal handler could hang (one rank in the
    save's barrier, the other in a gradient all-reduce); ``hope.lit.requeue.SignalCheckpoint`` saves at an agreed step.
    """
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    max_steps = 40
    args = ["--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", "20"]
    job = submit_pretrain(slurm_env, run_dir, log, [*SMALL, *args, "--trainer.num_sanity_val_steps", "0"])
    wait_for_step(slurm_env, job, log, r"[89]|[1-3]\d", max_steps)  # step 8 or later: mid-training
    # To the job steps (the training tasks), as `--signal=SIGUSR1@90` would near the time limit.
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_env, check=True, timeout=30)

    info = wait_done(slurm_env, job, log)
    assert_completed(info, log)
    assert info["Restarts"] == "1"
    text = read_log(log)
    assert "[hope] Slurm requeue signal: saving at step" in text and f"[hope] requeued Slurm job {job}" in text
    assert "Handling auto-requeue signal" not in text  # Lightning's in-handler save never ran
    assert "SLURM_RESTART_COUNT=1" in text  # both runs append to one log (--open-mode=append)

    hpc = run_dir / "hpc_ckpt_1.ckpt"
    signalled_at = global_step(hpc)
    assert 0 < signalled_at < max_steps
    # The rerun picked the newest checkpoint (the hpc one, or a periodic last.ckpt written after the signal).
    resumed = re.search(r"=== resume: (\S+)", text.split("SLURM_RESTART_COUNT=1", 1)[1]).group(1)
    assert f"Restored all states from the checkpoint at {resumed}" in text
    assert global_step(Path(resumed)) >= signalled_at
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == max_steps


def test_sigterm_saves_and_fails_the_job(slurm_env, tmp_path):
    """SIGTERM to both tasks mid-training (what `scancel` and preemption send): they save last.ckpt at one agreed
    step and exit 143, so the job ends FAILED with exit code 143 instead of COMPLETED, and nothing is lost."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    max_steps = 400
    args = ["--trainer.max_steps", str(max_steps), "--trainer.num_sanity_val_steps", "0"]
    job = submit_pretrain(slurm_env, run_dir, log, [*SMALL, *args])
    wait_for_step(slurm_env, job, log, r"[3-9]|\d\d+", max_steps)
    subprocess.run(["scancel", "--signal=TERM", job], env=slurm_env, check=True, timeout=30)  # to the job steps

    info = wait_done(slurm_env, job, log)
    text = read_log(log)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "143:0", "0"), text[-4000:]
    saved = re.search(r"\[hope\] SIGTERM: saved (\S+) at step (\d+)\.", text)
    assert saved and Path(saved.group(1)) == run_dir / "checkpoints" / "last.ckpt", text[-4000:]
    assert 3 <= global_step(run_dir / "checkpoints" / "last.ckpt") == int(saved.group(2)) < max_steps


def test_sweep_array(slurm_env, tmp_path):
    sweep, log = tmp_path / "sweep.txt", tmp_path / "sweep-%a.out"
    sweep.write_text("# comment\n--trainer.max_steps 2\n\n--trainer.max_steps 3 --model.optim.lr 1e-3\n")
    job = submit(
        slurm_env,
        "slurm/sweep.sbatch",
        ["--array=0-1", "--ntasks-per-node=1", f"--output={log}"],
        {"CONFIG": "configs/pretrain/debug.yaml", "SWEEP": str(sweep), "RUN_DIR": str(tmp_path / "sweep")},
        [*SMALL, "--trainer.num_sanity_val_steps", "0", "--trainer.val_check_interval", "2"],
    )
    for task, steps in ((0, 2), (1, 3)):
        task_log = tmp_path / f"sweep-{task}.out"
        assert_completed(wait_done(slurm_env, f"{job}_{task}", task_log), task_log)
        assert global_step(tmp_path / "sweep" / str(task) / "checkpoints" / "last.ckpt") == steps


def test_missing_config_fails_fast(slurm_env, tmp_path):
    log = tmp_path / "job.out"
    job = submit(slurm_env, "slurm/pretrain.sbatch", ["--ntasks-per-node=1", f"--output={log}"], {}, [])
    info = wait_done(slurm_env, job, log, timeout=60)
    assert info["JobState"] == "FAILED"
    assert "set CONFIG=" in read_log(log)


def _find_resume(run_dir: Path) -> str:
    cmd = f'source "{COMMON}"; hope_find_resume "{run_dir}"'
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.strip()


def test_resume_picks_newest_checkpoint(tmp_path):
    """Bash only: hope_find_resume prefers whichever of hpc_ckpt_*.ckpt / last.ckpt was written last."""
    assert _find_resume(tmp_path / "missing") == ""
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    (tmp_path / "checkpoints" / "step000100.ckpt").write_bytes(b"x")  # never a resume candidate
    last.write_bytes(b"x")
    hpc.write_bytes(b"x")
    os.utime(last, (1000, 1000))
    assert _find_resume(tmp_path) == str(hpc)
    os.utime(hpc, (500, 500))
    assert _find_resume(tmp_path) == str(last)
    # A DeepSpeed checkpoint is a directory: its newest file counts.
    hpc.unlink()
    ds = tmp_path / "hpc_ckpt_2.ckpt" / "checkpoint"
    ds.mkdir(parents=True)
    (ds / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert _find_resume(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")
