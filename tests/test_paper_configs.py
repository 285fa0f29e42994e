"""configs/pretrain/paper/: the papers' recipe in every config, and bench/gpu_hours.py costs exactly those runs.
(tests/test_configs.py parses each through the real CLI.)"""

import sys
from pathlib import Path

import pytest
import yaml

from hope.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "configs" / "pretrain" / "paper").glob("*.yaml"))
TOKENS = {"340m": 15e9, "400m": 15e9, "760m": 30e9, "1.3b": 100e9}  # Titans §5.1, Nested Learning §9
GPUS = 8  # the layout the configs are written for


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_the_papers_recipe(path):
    config = yaml.safe_load(path.read_text())
    trainer, model, data = config["trainer"], config["model"], config["data"]
    assert model["preset"] == path.stem and path.stem in PRESETS
    assert (model["optim"]["lr"], model["optim"]["weight_decay"]) == (4.0e-4, 0.1)
    assert data["seq_len"] == 4096
    assert data["batch_size"] * trainer["accumulate_grad_batches"] * GPUS == 128  # 0.5M tokens per step
    tokens = trainer["max_steps"] * 128 * 4096
    assert TOKENS[path.stem.rsplit("-", 1)[1]] <= tokens < TOKENS[path.stem.rsplit("-", 1)[1]] + 128 * 4096
    assert trainer["precision"] == "bf16-mixed" and "DeepSpeed" in trainer["strategy"]["class_path"]
    memory = not path.stem.startswith("transformer")
    assert model.get("overrides", {}).get("memory_recompute", False) == memory


def test_gpu_hours_covers_every_paper_config():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_hours
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert {name for name, _ in gpu_hours.RUNS} == {p.stem for p in PAPER}
    assert all(TOKENS[name.rsplit("-", 1)[1]] == tokens for name, tokens in gpu_hours.RUNS)
