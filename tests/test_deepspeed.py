"""DeepSpeed through Lightning on CPU: `hope fit` with HopeDeepSpeedStrategy (hope/lit/deepspeed.py).

The first run JIT-compiles DeepSpeed's shared-memory comm op (~30 s on 2 cores; built whenever DeepSpeed starts its
comm backend on CPU; ZeRO-2 with torch AdamW needs nothing else). It is cached in TORCH_EXTENSIONS_DIR, by default
<repo>/.cache/torch_extensions (git-ignored). With a warm cache the module takes about 1–1.5 minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.deepspeed
pytest.importorskip("deepspeed", reason="deepspeed not installed (pip install -e '.[deepspeed]')")

from lightning.pytorch import Trainer  # noqa: E402

from hope.lit.deepspeed import HopeDeepSpeedStrategy, _resolve_config_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The debug model at a size where a step takes a fraction of a second on 2 shared cores.
SMALL = [
    "--config",
    "configs/pretrain/debug.yaml",
    "--data.batch_size",
    "4",
    "--data.seq_len",
    "64",
    "--data.max_val_blocks",
    "2",
    "--trainer.val_check_interval",
    "4",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.num_sanity_val_steps",
    "0",
]


@pytest.fixture(scope="module")
def ds_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env["DS_ACCELERATOR"] = "cpu"  # do not let DeepSpeed probe for other accelerators
    return env


def hope_fit(env: dict[str, str], *args: str) -> str:
    cmd = [sys.executable, "-m", "hope", "fit", *SMALL, *args]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    text = (out.stdout + out.stderr).replace("\r", "\n")
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{text[-5000:]}"
    return text


def scalars(log_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def ds_global_step(ckpt_dir: Path) -> int:
    """Lightning stores its client state (global_step, loops, ...) in DeepSpeed's model-states file."""
    states = sorted((ckpt_dir / "checkpoint").glob("*model_states.pt"))
    return torch.load(states[0], map_location="cpu", weights_only=False)["global_step"]


def test_zero2_two_processes_resume_is_exact(ds_env, tmp_path):
    """ZeRO-2 on 2 CPU processes: 4 steps, save, resume with --ckpt_path last to 8 steps; the resumed losses are
    the ones an uninterrupted 8-step run logs (optimizer shards, LR schedule and data position all restored)."""
    ds = ["--config", "configs/pretrain/debug-deepspeed-cpu.yaml"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    hope_fit(ds_env, *ds, "--trainer.max_steps", "8", "--trainer.default_root_dir", str(straight))
    first = hope_fit(ds_env, *ds, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(split))
    assert "MEMBER: 2/2" in first  # two DeepSpeed ranks, started by Lightning's launcher

    ckpt = split / "checkpoints" / "last.ckpt"
    # A DeepSpeed checkpoint is a directory with one optimizer shard per rank.
    assert len(list((ckpt / "checkpoint").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert ds_global_step(ckpt) == 4
    assert (ckpt.parent / "config.yaml").is_file()

    resumed = hope_fit(
        ds_env, *ds, "--trainer.max_steps", "8", "--trainer.default_root_dir", str(split), "--ckpt_path", "last"
    )
    assert f"Restored all states from the checkpoint at {ckpt}" in resumed
    assert ds_global_step(ckpt) == 8
    expected = scalars(straight / "lightning_logs" / "version_0", "train/loss")
    before = scalars(split / "lightning_logs" / "version_0", "train/loss")
    after = scalars(split / "lightning_logs" / "version_1", "train/loss")
    assert len(expected) == 8 and len(before) == 4 and len(after) == 4
    torch.testing.assert_close(torch.tensor(before + after), torch.tensor(expected), rtol=1e-5, atol=1e-5)

    # `hope convert` turns the sharded directory into one safetensors file with the same weights.
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    from hope.checkpoint import load_model, model_state_dict_from
    from hope.cli import main

    main(["convert", str(ckpt), str(tmp_path / "export")])
    exported = load_model(tmp_path / "export" / "model.safetensors")
    single = tmp_path / "single.ckpt"
    convert_zero_checkpoint_to_fp32_state_dict(str(ckpt), str(single))
    reference = model_state_dict_from(single)
    for name, value in exported.state_dict().items():
        assert torch.equal(value, reference[name].to(value.dtype)), name


def test_zero3_single_process_resume(ds_env, tmp_path):
    zero3 = [
        "--config",
        "configs/trainer/deepspeed-zero3.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    hope_fit(ds_env, *zero3, "--trainer.max_steps", "3")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    # Stage 3 also shards the parameters: the model states are per rank too.
    assert (ckpt / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file()
    hope_fit(ds_env, *zero3, "--trainer.max_steps", "5", "--ckpt_path", "last")
    assert ds_global_step(ckpt) == 5


@pytest.mark.slow
def test_zero2_offload_uses_cpu_adam(ds_env, tmp_path):
    """Optimizer offload: AdamW is swapped for DeepSpeedCPUAdam (compiles cpu_adam on first use, ~80 s)."""
    out = hope_fit(
        ds_env,
        "--config",
        "configs/trainer/deepspeed-zero2-offload.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.max_steps",
        "3",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert "ZeRO-Offload with a client provided optimizer" not in out
    assert ds_global_step(tmp_path / "checkpoints" / "last.ckpt") == 3

    # The LR scheduler now drives the new optimizer's groups (same groups, hyperparameters and schedule).
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from lightning.pytorch.utilities.types import LRSchedulerConfig

    from hope.lit.deepspeed import _to_cpu_adam

    decay, no_decay = torch.nn.Parameter(torch.ones(4, 4)), torch.nn.Parameter(torch.ones(4))
    adamw = torch.optim.AdamW(
        [{"params": [decay], "weight_decay": 0.1}, {"params": [no_decay], "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    config = LRSchedulerConfig(torch.optim.lr_scheduler.LambdaLR(adamw, lambda step: (step + 1) / 10))
    new = _to_cpu_adam(adamw, config)
    assert isinstance(new, DeepSpeedCPUAdam) and config.scheduler.optimizer is new
    assert [g["weight_decay"] for g in new.param_groups] == [0.1, 0.0] and new.param_groups[0]["betas"] == (0.9, 0.95)
    new.step()
    config.scheduler.step()
    assert new.param_groups[0]["lr"] == pytest.approx(2e-4)


def test_cpu_devices_get_rank_indices():
    trainer = Trainer(accelerator="cpu", devices=2, strategy="hope_deepspeed_stage_2", logger=False)
    assert isinstance(trainer.strategy, HopeDeepSpeedStrategy)
    assert trainer.strategy.parallel_devices == [torch.device("cpu", 0), torch.device("cpu", 1)]
    assert trainer.strategy.config["zero_optimization"]["stage"] == 2


def test_config_path_resolves_from_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = _resolve_config_path("configs/deepspeed/zero2.json")
    assert Path(resolved) == REPO / "configs" / "deepspeed" / "zero2.json"
    strategy = HopeDeepSpeedStrategy(config="configs/deepspeed/zero3_offload.json")
    assert strategy.offloads_optimizer and strategy.zero_stage_3
