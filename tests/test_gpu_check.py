"""bench/gpu_check.sh starts and runs every stage: its --dry-run does on CPU, at debug sizes, what it does on a GPU
(kernel tests, bench/throughput.py rows, bench/precision.py, the merged table), so that a GPU session's one call
does not die of a typo."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_the_table(tmp_path):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in (tmp_path / "gpu_check_cpu-dry-run_tests.txt").read_text()
    merged = json.loads((tmp_path / "throughput_cpu-dry-run.json").read_text())
    presets = [r["preset"] for r in merged["results"]]
    assert presets[0] == "transformer-debug" and "hope-debug:memory_recompute=true" in presets and len(presets) == 7
    assert all("tokens_per_s" in r for r in merged["results"]), merged["results"]
    precision = json.loads((tmp_path / "precision_cpu-dry-run.json").read_text())["results"]
    assert precision[0]["row"] == "float32" and precision[0]["y"] < 1e-4  # float32 is close to float64
    table = (tmp_path / "throughput_cpu-dry-run.md").read_text()
    assert "| titans-mac-debug:memory_kernel=triton | 64 x 2 |" in table
