"""TestTimeLearning and DynamicEvaluation in the retention harness: a task is learned by reading its text, kept in
the state or consolidated within the cap, a HOPE-only method refuses other families, and the command runs them."""

import json

import pytest
import torch
import yaml

from hope.cli import main
from hope.config import ModelConfig
from hope.continual.methods import DynamicEvaluation, TestTimeLearning
from hope.dynamic import DynamicConfig
from hope.evaluation.retention import LocalDomains, run_retention
from hope.model import HopeLM
from hope.online import TTLConfig
from hope.tokenizer import Tokenizer

HOPE = dict(
    family="hope",
    n_layer=1,
    n_head=2,
    n_embd=32,
    max_seq_len=64,
    hope_chunk_size=4,
    hope_memory_chunk_size=8,
    cms_levels=[{"hidden": 32, "tokens_per_update": 16}, {"hidden": 32, "tokens_per_update": 32}],
)


def model(family: str = "hope") -> HopeLM:
    torch.manual_seed(0)
    config = HOPE if family == "hope" else dict(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=64)
    return HopeLM(ModelConfig(**config)).eval()


def write_domains(root) -> list[str]:
    """Two small domains of distinct, repetitive text (one document per file)."""
    paths = []
    for name, line in (
        ("animals", "the {i} cats sat on {i} mats and purred."),
        ("code", "x{i} = os.path.join(y, {i})"),
    ):
        folder = root / name
        folder.mkdir()
        for i in range(12):
            (folder / f"{i:02d}.txt").write_text("\n".join(line.format(i=i + j) for j in range(4)) + "\n")
        paths.append(str(folder))
    return paths


@pytest.fixture
def suite(tmp_path):
    return LocalDomains(write_domains(tmp_path), train_tokens=200, test_tokens=64, chunk=32)


def test_ttl_keeps_what_it_learned_in_the_state(suite):
    hope = model()
    weights = {k: v.clone() for k, v in hope.state_dict().items()}
    method = TestTimeLearning(TTLConfig(inner_lr=0.05))
    report = run_retention(hope, Tokenizer.default(), suite, method, progress=False)
    R, initial = report["matrix"], report["initial"]
    assert R[0][0] < 0.9 * initial[0] and R[1][1] < 0.9 * initial[1]  # each domain learned from its text
    assert all(torch.equal(v, weights[k]) for k, v in hope.state_dict().items())  # nothing consolidated
    state = method.eval_context(hope, None, Tokenizer.default()).state
    assert all(s.mixer is None and s.cms.delta[0] is not None for s in state)  # fast weights, no mixer context
    assert report["learn_stats"][0]["tokens"] > 100 and report["method"]["config"]["ttl"]["inner_lr"] == 0.05


def test_ttl_consolidates_within_the_cap(suite):
    hope, cap = model(), 0.02
    levels = [list(level.weights()) for level in hope.blocks[0].cms.levels]
    before = [[w.detach().clone() for w in ws] for ws in levels]
    method = TestTimeLearning(TTLConfig(inner_lr=0.5, consolidate=True, max_change=cap), passes=2)
    report = run_retention(hope, Tokenizer.default(), LocalDomains(suite.paths[:1], chunk=32), method, progress=False)
    assert method.eval_context(hope, None, Tokenizer.default()).state is None  # the weights hold it
    for ws, olds in zip(levels, before, strict=True):  # one task, one consolidation: each level moved by the cap
        change = sum(float((w.detach() - o).pow(2).sum()) for w, o in zip(ws, olds, strict=True)) ** 0.5
        assert change == pytest.approx(cap * sum(float(o.pow(2).sum()) for o in olds) ** 0.5, rel=1e-5)
    assert report["matrix"][0][0] < report["initial"][0]


def test_ttl_with_zero_step_learns_nothing(suite):
    report = run_retention(
        model(), Tokenizer.default(), suite, TestTimeLearning(TTLConfig(inner_lr=0.0)), None, progress=False
    )
    for row in report["matrix"]:
        assert row == pytest.approx(report["initial"], rel=1e-6)


def test_ttl_refuses_a_model_without_cms_levels(suite):
    with pytest.raises(ValueError, match="family='transformer' has no CMS levels"):
        run_retention(model("transformer"), Tokenizer.default(), suite, TestTimeLearning(), progress=False)


def test_dynamic_evaluation_consolidates(suite):
    """(Every family reads alike: tests/test_dynamic.py.)"""
    net = model("transformer")
    method = DynamicEvaluation(DynamicConfig(lr=3e-3, segment=16), max_change=0.05)
    report = run_retention(net, Tokenizer.default(), suite, method, progress=False)
    assert report["matrix"][0][0] < 0.9 * report["initial"][0]
    stats = report["learn_stats"][0]
    assert stats["steps"] > 5 and 0 < stats["relative_change"] <= 0.05 * (1 + 1e-6)
    assert method.eval_context(net, None, Tokenizer.default()).state is None


def test_retention_command_with_the_new_methods(tmp_path):
    from safetensors.torch import save_file

    hope = HopeLM(ModelConfig(**{**HOPE, "vocab_size": 8192}))
    save_file({k: v.contiguous() for k, v in hope.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump(hope.config.to_dict()))
    paths = json.dumps(write_domains(tmp_path))
    common = ["--suite", "LocalDomains", "--suite.paths", paths, "--suite.train_tokens", "200"]
    common += ["--suite.test_tokens", "64", "--general_tokens", "0", "--progress", "false"]
    for method in (
        ["--method", "TestTimeLearning", "--method.ttl.inner_lr", "0.05", "--method.ttl.consolidate", "true"],
        ["--method", "DynamicEvaluation", "--method.dynamic.lr", "1e-3", "--method.max_change", "0.1"],
    ):
        out = tmp_path / method[1]
        main(["eval", "retention", "--checkpoint", str(tmp_path / "model.safetensors"), *common, *method,
              "--out_dir", str(out)])  # fmt: skip
        report = json.loads((out / "retention.json").read_text())
        assert report["suite"] == "local" and report["task_names"] == ["animals", "code"]
        assert report["method"]["class"] == method[1]
