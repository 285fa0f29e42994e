"""bench/ scripts end to end on tiny shapes: throughput (preset specs with overrides, ratios, per-preset CPU peak
memory), split agreement and test-time-learning gains of a HOPE checkpoint."""

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


def save_hope_checkpoint(path, cms_inner_lr=3e-3):
    """A tiny HOPE model that learns in context, saved as `hope fit` saves (``state_dict`` under ``model.``)."""
    import torch

    from hope.config import ModelConfig
    from hope.model import HopeLM

    levels = [{"hidden": 16, "tokens_per_update": 4}, {"hidden": 16, "tokens_per_update": 8}]
    config = ModelConfig(
        family="hope", n_layer=1, n_embd=32, n_head=2, vocab_size=8192, hope_chunk_size=4, hope_memory_chunk_size=4,
        cms_levels=levels, cms_learn_in_context=True, cms_objective="reconstruction", cms_inner_lr=cms_inner_lr,
    )  # fmt: skip
    torch.manual_seed(0)
    model = HopeLM(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "model_config": config.to_dict()}, path)
    return path


@pytest.fixture
def hope_checkpoint(tmp_path):
    return save_hope_checkpoint(tmp_path / "tiny.ckpt")


def run_bench(script, *args):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_split_agreement_table_and_json(tmp_path, hope_checkpoint, text_corpus):
    out = tmp_path / "split.json"
    args = ["--checkpoint", str(hope_checkpoint), "--source", str(text_corpus), "--tokens", "64", "--windows", "4"]
    run_bench("split_agreement.py", *args, "16", "--overrides", "hope_safe_step=true", "--out", str(out))
    result = json.loads(out.read_text())
    rows = {(r["precision"], r["window"]): r for r in result["rows"]}
    assert set(rows) == {(p, w) for p in ("float64", "float32", "bf16") for w in (4, 16)}
    assert rows["float64", 16]["max_abs_split_difference"] < 1e-12  # exact streaming: only rounding differs
    assert (
        0 < rows["float32", 4]["max_abs_err_vs_float64"]["64"] < 1e-4 < rows["bf16", 4]["max_abs_err_vs_float64"]["64"]
    )
    assert result["overrides"] == {"hope_safe_step": True}


def test_ttl_gain_modes(tmp_path, text_corpus):
    """The model learns in its forward on the reconstruction objective at the learner's lr, so "forward" and
    "ttl-reconstruction" are the same computation; "frozen" and "ttl-teach" are not (an inner lr large enough that
    the tiny random model's CMS moves visibly in 48 tokens)."""
    out, checkpoint = tmp_path / "ttl.json", save_hope_checkpoint(tmp_path / "tiny.ckpt", cms_inner_lr=1.0)
    args = ["--checkpoints", str(checkpoint), "--sources", str(text_corpus), "--tokens", "48", "--window", "16"]
    proc = run_bench("ttl_gain.py", *args, "--reconstruction_lr", "1.0", "--teach_lr", "1.0", "--out", str(out))
    ppl = json.loads(out.read_text())["rows"][0]["perplexity"]
    assert ppl["forward"] == pytest.approx(ppl["ttl-reconstruction"], rel=1e-5)
    assert ppl["frozen"] != pytest.approx(ppl["forward"], rel=1e-3)
    assert ppl["ttl-teach"] != pytest.approx(ppl["forward"], rel=1e-3)
    assert proc.stdout.splitlines()[0] == "| checkpoint | source | frozen | forward | ttl-teach | ttl-reconstruction |"
    capped = tmp_path / "capped.json"  # the same forward with every in-context step capped: a different number
    run_bench("ttl_gain.py", *args, "--modes", "forward", "--overrides", "cms_max_step=0.0001", "--out", str(capped))
    report = json.loads(capped.read_text())
    assert report["overrides"] == {"cms_max_step": 0.0001}
    assert report["rows"][0]["perplexity"]["forward"] != pytest.approx(ppl["forward"], rel=1e-3)
