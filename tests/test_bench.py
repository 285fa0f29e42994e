"""bench/throughput.py end to end on tiny shapes: preset specs with overrides, ratios, per-preset CPU peak memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_throughput(tmp_path, *presets):
    out = tmp_path / "throughput.json"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--presets", *presets]
    cmd += ["--seq_len", "16", "--batch_size", "2", "--steps", "1", "--warmup", "1", "--rounds", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    return proc, out


def test_throughput_table_json_and_overrides(tmp_path):
    big, small = "debug:vocab_size=100000", "debug:n_layer=1,intermediate_size=64"
    proc, out = run_throughput(tmp_path, big, small)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["preset"] for r in rows] == [big, small]
    assert rows[0]["params_M"] > 25 > 3 > rows[1]["params_M"]  # the overrides reached the models
    assert rows[0]["ratio_to_first"] == 1.0 and rows[1]["ratio_to_first"] > 0
    # each preset's peak is its own, from a fresh process: the small model's is not the high-water mark of the
    # timing process, which holds the big one's ~100M floats (weights, gradients, AdamW state)
    assert 0 < rows[1]["peak_mem_GiB"] < 0.5 * rows[0]["peak_mem_GiB"]
    assert f"| {small} |" in proc.stdout


@pytest.mark.parametrize("spec", ["debug:n_layer", "debug:no_such_field=1"])
def test_bad_preset_spec_says_which(tmp_path, spec):
    proc, _ = run_throughput(tmp_path, spec)
    assert proc.returncode != 0
    assert spec.split(":")[1].split("=")[0] in proc.stderr
