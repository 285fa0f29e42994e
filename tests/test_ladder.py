"""The five-pieces ladder: the stages build the intended methods, the epoch probe only reads, the scores on
hand-made matrices, the command end to end on tiny models, and its errors on bad input."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from hope.config import ModelConfig
from hope.continual.ladder import LadderSettings, build_stage, describe
from hope.continual.methods import Compose, FullFinetune, GapStudy, LayerwiseLRDecay, LoRA, Replay, TaskLoop
from hope.continual.study_policy import StudyPolicy
from hope.evaluation import metrics
from hope.evaluation.retention import LocalDomains, SyntheticFacts, run_retention
from hope.evaluation.retention.ladder_report import (
    EpochCurve,
    aggregate,
    composite_error,
    score_run,
    verdict,
    write_section,
)
from hope.finetune.ladder import ladder
from hope.model import HopeLM
from hope.online import TTLConfig
from hope.optim import OptimConfig
from hope.tokenizer import Tokenizer

SMALL = LadderSettings(TaskLoop(epochs=2, batch_size=4, seq_len=32), general_ratio=0.0, llrd_decay=0.5)


def tiny(family: str = "transformer", n_layer: int = 2) -> HopeLM:
    torch.manual_seed(0)
    if family == "hope":
        config = ModelConfig(
            family="hope", n_layer=1, n_head=2, n_embd=32, max_seq_len=64, hope_chunk_size=4,
            hope_memory_chunk_size=8, cms_levels=[{"hidden": 32, "tokens_per_update": 16}],
        )  # fmt: skip
    else:
        config = ModelConfig(n_layer=n_layer, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=64)
    return HopeLM(config).eval()


def save(model: HopeLM, folder) -> str:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "model_config.yaml").write_text(yaml.safe_dump(model.config.to_dict()))
    return str(folder / "model.safetensors")


# -- the stages -----------------------------------------------------------------------------------------------------
def test_stages_build_the_intended_methods():
    a, b, c, d, e = (build_stage(s, SMALL) for s in "abcde")
    assert type(a) is FullFinetune and a.loop.lr == SMALL.loop.lr
    assert type(b) is LoRA and b.loop.lr == SMALL.lora_lr
    classes = [[type(p) for p in m.parts] for m in (c, d, e)]
    assert classes == [[LoRA, Replay], [LoRA, Replay, LayerwiseLRDecay], [LoRA, Replay, LayerwiseLRDecay, GapStudy]]
    assert all(isinstance(m, Compose) and m.loop == b.loop for m in (c, d, e))  # one loop, the adapters' lr
    # the same loop but the lr: the same steps per task
    assert {m.loop.epochs for m in (a, b, c, d, e)} == {SMALL.loop.epochs} and a.loop.seq_len == e.loop.seq_len
    # without study items (LocalDomains), (e) is (d); the labels say so, and when no learned strategy is given
    assert [type(p) for p in build_stage("e", SMALL, study=False).parts] == classes[1]
    assert "= (d)" in describe("e", study=False) and "no learned study strategy" in describe("e")
    assert describe("e", study_policy="p.json").endswith("learned study strategy") and describe("b") == "LoRA"


def test_llrd_scales_the_lora_adapters_by_depth():
    model, method = tiny(n_layer=2), build_stage("d", SMALL)
    method.setup(model, Tokenizer.default())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_a", ".lora_b")) for n in trainable)
    scales = method.lr_scales(model)
    block0 = {scales[n] for n in trainable if n.startswith("blocks.0.")}
    block1 = {scales[n] for n in trainable if n.startswith("blocks.1.")}
    assert block0 == {0.5**2} and block1 == {0.5}  # lr · decay^(n_layer + 1 - depth)
    constant = OptimConfig(lr=SMALL.lora_lr, weight_decay=0.0, warmup_steps=0, min_lr_ratio=1.0)
    groups = method.build_optimizer(model, constant, 1)["optimizer"].param_groups
    assert {g["lr"] for g in groups if g["params"]} == {SMALL.lora_lr * 0.25, SMALL.lora_lr * 0.5}


def test_replay_stage_mixes_earlier_rows():
    model, method = tiny(), build_stage("c", SMALL)
    method.setup(model, Tokenizer.default())
    rows = torch.zeros(4, 32, dtype=torch.long)
    method.end_task(model, rows + 7, rows + 7)  # the buffer fills with a first task's sequences
    mixed = method.mix_batch({"input_ids": rows, "labels": rows}, step=0)
    assert len(mixed["input_ids"]) > 4 and (mixed["input_ids"][4:] == 7).all()


def test_stage_e_writes_its_items_with_the_learned_study_strategy(tmp_path):
    path = tmp_path / "policy.json"
    StudyPolicy(operators=["qa"]).save(path)
    study = build_stage("e", SMALL, study_policy=str(path)).parts[-1]
    assert isinstance(study, GapStudy) and study.notes.operators == ["qa"]
    assert build_stage("e", SMALL).parts[-1].notes is None
    with pytest.raises((ValueError, FileNotFoundError)):
        build_stage("e", SMALL, study_policy=str(tmp_path / "missing.json"))


# -- the epoch probe ------------------------------------------------------------------------------------------------
def test_epoch_probe_only_reads_and_ends_on_the_learned_score():
    suite, tok = SyntheticFacts(n_tasks=2, people_per_task=1), Tokenizer.default()
    plain, probed = tiny(), tiny()
    report = run_retention(plain, tok, suite, build_stage("a", SMALL), progress=False)
    method = build_stage("a", SMALL)
    curve = EpochCurve(method, tok)
    method.probe_epochs(curve)
    probed_report = run_retention(probed, tok, suite, method, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), probed.parameters(), strict=True))
    assert probed_report["matrix"] == report["matrix"]
    steps = [s["steps"] for s in report["learn_stats"]]
    for j, name in enumerate(report["task_names"]):
        assert [s for s, _ in curve.curves[name]] == [steps[j] / 2, steps[j]]  # after each of 2 epochs
        assert curve.curves[name][-1][1] == report["matrix"][j][j]  # the last epoch is the learned score


# -- scores on hand-made matrices ------------------------------------------------------------------------------------
def test_target_and_steps_to_target():
    assert metrics.target_score(0.2, 0.6, 0.5) == pytest.approx(0.4)
    assert metrics.target_score(100.0, 25.0, 0.5, higher_is_better=False, log_scale=True) == pytest.approx(50.0)
    assert metrics.target_score(0.5, 0.4, 0.8) is None  # no gain to reach a share of
    curve = [(0, 0.1), (5, 0.3), (10, 0.45), (15, 0.5)]
    assert metrics.steps_to_target(curve, 0.4) == 10 and metrics.steps_to_target(curve, 0.9) is None
    assert metrics.steps_to_target([(0, 90.0), (4, 60.0), (8, 40.0)], 50.0, higher_is_better=False) == 8
    with pytest.raises(ValueError, match="fraction"):
        metrics.target_score(0.1, 0.2, 0.0)


def report(R, initial, higher=True, stats_steps=(10, 10), errors=None) -> dict:
    rows = [initial, *R]
    out = {
        "higher_is_better": higher,
        "matrix": R,
        "initial": initial,
        "matrix_with_initial": rows,
        "task_names": ["t1", "t2"],
        "learn_stats": [{"steps": s} for s in stats_steps],
        "seconds": 3.0,
    }
    if errors is not None:
        out["standard_errors"] = {"average_accuracy": errors}
    return out


def test_score_run_on_a_hand_made_accuracy_matrix():
    R = [[0.6, 0.1], [0.3, 0.8]]
    curves = {"t1": [(5, 0.4), (10, 0.6)], "t2": [(5, 0.7), (10, 0.8)]}
    run = score_run(report(R, [0.1, 0.1], errors=0.02), curves, reference=[0.5, 0.9], fraction=0.8)
    assert run["composite"] == pytest.approx(0.55) and run["composite_test_se"] == 0.02
    assert run["forgetting"] == pytest.approx(0.3) and run["backward_transfer"] == pytest.approx(-0.3)
    # targets 0.1 + 0.8 * (0.5 - 0.1) = 0.42 and 0.1 + 0.8 * 0.8 = 0.74
    assert run["steps_to_target"] == [10, 10] and run["learned"] == [0.6, 0.8] and run["final"] == [0.3, 0.8]
    assert run["initial"] == [0.1, 0.1]
    assert score_run(report(R, [0.1, 0.1]), None, None, 0.8)["steps_to_target"] == [None, None]


def test_score_run_on_perplexity_uses_logs():
    R = [[50.0, 200.0], [100.0, 25.0]]
    run = score_run(report(R, [200.0, 200.0], higher=False), {"t1": [], "t2": [(4, 30.0)]}, [50.0, 20.0], 0.5)
    assert run["composite"] == pytest.approx(50.0)  # geometric mean of 100 and 25
    assert run["forgetting"] == pytest.approx(math.log(2))  # 50 -> 100: log 2 nats/token
    # t1: target sqrt(200 * 50) = 100, its curve only the score before learning (200): not reached;
    # t2: target sqrt(200 * 20) = 63.2, first reached at step 4 (30)
    assert run["steps_to_target"] == [None, 4]
    assert run["composite_test_se"] is None  # no standard errors in the report
    errors = {"matrix_with_initial": [[1.0, 1.0], [1.0, 1.0], [5.0, 2.0]], "average_accuracy": 99.0}
    # G = 50; relative errors 5/100 and 2/25: 50 * sqrt(0.05^2 + 0.08^2) / 2
    assert composite_error(errors, np.array([100.0, 25.0]), False) == pytest.approx(25 * math.hypot(0.05, 0.08))
    errors["matrix_with_initial"][-1][0] = None
    assert composite_error(errors, np.array([100.0, 25.0]), False) is None


def test_aggregate_and_verdict():
    runs = [
        {**score_run(report([[0.6, 0.1], [0.3, 0.8]], [0.1, 0.1], errors=0.03), None, None, 0.8)},
        {**score_run(report([[0.6, 0.1], [0.5, 0.8]], [0.1, 0.1], errors=0.04), None, None, 0.8)},
    ]
    row = aggregate("a", "naive", runs)
    assert row["composite"] == pytest.approx(0.6) and row["composite_seed_se"] == pytest.approx(0.05)
    assert row["composite_test_se"] == pytest.approx(0.025) and row["composite_se"] == pytest.approx(0.05)
    assert row["targets_reached"] == 0 and row["targets"] == 4 and row["initial"] == [0.1, 0.1]
    rows = [
        {"stage": "a", "composite": 0.2, "composite_se": 0.01},
        {"stage": "b", "composite": 0.3, "composite_se": 0.01},
        {"stage": "c", "composite": 0.31, "composite_se": 0.01},
        {"stage": "d", "composite": 0.1, "composite_se": 0.01},
        {"stage": "e", "composite": 0.1, "composite_se": None},
    ]
    assert [p["call"] for p in verdict(rows, True)] == ["better", "within noise", "worse", "no s.e."]
    assert [p["call"] for p in verdict(rows[:2], False)] == ["worse"]  # perplexity: higher is worse


def test_write_section_replaces_only_its_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# Title\n\nhand-written\n")
    write_section(path, "first")
    write_section(path, "second")
    text = path.read_text()
    assert text.startswith("# Title\n\nhand-written\n") and "second" in text and "first" not in text


# -- the command ----------------------------------------------------------------------------------------------------
def domains(root) -> list[str]:
    paths = []
    for name, line in (("animals", "the {i} cats sat on {i} mats."), ("code", "x{i} = os.path.join(y, {i})")):
        (root / name).mkdir()
        for i in range(8):
            (root / name / f"{i}.txt").write_text("\n".join(line.format(i=i + j) for j in range(4)) + "\n")
        paths.append(str(root / name))
    return paths


def test_ladder_on_one_suite_and_two_stages(tmp_path, capsys):
    results = ladder(
        save(tiny(), tmp_path / "tf"),
        suite=["facts"],
        facts=SyntheticFacts(n_tasks=2, people_per_task=1),
        settings=SMALL,
        stages=["a", "b"],
        general_tokens=0,
        out=str(tmp_path / "docs"),
        reports=str(tmp_path / "reports"),
    )
    rows = results["suites"]["facts"]["rows"]
    assert [r["stage"] for r in rows] == ["a", "b"] and rows[0]["general_before"] is None
    assert "'seed': \"each run's\"" in results["suites"]["facts"]["name"]
    assert "| (b) | LoRA |" in (tmp_path / "docs" / "README.md").read_text()
    assert "the HOPE test-time-learning row is skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_ladder_end_to_end_writes_its_outputs(tmp_path, capsys):
    checkpoint, hope = save(tiny(), tmp_path / "tf"), save(tiny("hope"), tmp_path / "hope")
    out = tmp_path / "docs"
    results = ladder(
        checkpoint,
        facts=SyntheticFacts(n_tasks=2, people_per_task=1),
        domains=LocalDomains(domains(tmp_path), train_tokens=100, test_tokens=48, chunk=16),
        settings=SMALL,
        hope_checkpoint=hope,
        ttl=TTLConfig(inner_lr=0.01, consolidate=True, max_change=0.05),
        general_tokens=64,
        out=str(out),
        reports=str(tmp_path / "reports"),
    )
    facts, local = results["suites"]["facts"], results["suites"]["domains"]
    assert [r["stage"] for r in facts["rows"]] == ["a", "b", "c", "d", "e", "ttl"]
    assert local["runs"]["e"] == local["runs"]["d"] and "(no study items: = (d))" in local["rows"][4]["pieces"]
    a = local["rows"][0]
    assert a["targets_reached"] == a["targets"] == 2  # (a) reaches a share of its own gain on repetitive text
    assert len({tuple(r["steps_per_task"]) for r in facts["rows"][:5]}) == 1  # one step budget for all stages
    assert facts["rows"][-1]["steps_to_target"] == [None, None]  # TTL: no epochs to probe
    assert json.loads((out / "ladder.json").read_text())["seeds"] == [0]
    assert (out / "ladder.png").stat().st_size > 1000
    readme = (out / "README.md").read_text()
    assert "(a) < (b) < (c) < (d) < (e) on the composite" in readme and "| (e) |" in readme
    assert (tmp_path / "reports" / "domains" / "ttl" / "seed0" / "retention.json").exists()
    assert "stage (e) runs GapStudy without a learned study strategy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"suite": ["facts", "books"]}, "--suite"),
        ({"suite": ["domains"]}, "--domains.paths"),
        ({"suite": ["facts"], "stages": ["b", "c"]}, "--stages"),
        ({"suite": ["facts"], "stages": ["a", "z"]}, "--stages"),
        ({"suite": ["facts"], "seeds": [0, 0]}, "--seeds"),
        ({"suite": ["facts"], "target_fraction": 1.5}, "--target_fraction"),
        ({"suite": ["facts"], "study_policy": "missing.json"}, "--study_policy"),
        ({"suite": ["facts"], "hope_checkpoint": "missing.ckpt"}, "--hope_checkpoint"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ladder("no-checkpoint-needed-to-fail-first", **kwargs)


def test_settings_check_their_fields():
    with pytest.raises(ValueError, match="settings.loop.epochs"):
        LadderSettings(TaskLoop(epochs=0))
    with pytest.raises(ValueError, match="settings.lora_lr"):
        LadderSettings(lora_lr=0.0)
