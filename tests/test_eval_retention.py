"""`hope eval retention`: the suites, the two methods, the harness's protocol and matrix, and the command."""

import json

import pytest
import torch
import yaml

from hope.cli import main
from hope.config import ModelConfig
from hope.continual.method import ContinualMethod, EvalContext, Task
from hope.continual.methods import EpochFinetune, FullFinetune, InContext, TaskLoop
from hope.data.blocks import pack_blocks
from hope.evaluation import metrics
from hope.evaluation.retention import (
    CandidateRanking,
    ClassIncremental,
    DomainSequence,
    QAItem,
    SyntheticFacts,
    TaskSuite,
    run_retention,
)
from hope.evaluation.retention.domains import GENERAL_VAL_FRACTION
from hope.model import HopeLM
from hope.tokenizer import Tokenizer


def tiny_model(max_seq_len: int = 64) -> HopeLM:
    torch.manual_seed(0)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64, max_seq_len=max_seq_len)
    return HopeLM(config).eval()


# -- suites ---------------------------------------------------------------------------------------------------------
def test_facts_are_seeded_disjoint_and_held_out():
    settings = dict(n_tasks=3, people_per_task=2, paraphrases=3, n_candidates=5, test_template="heldout", seed=7)
    tasks, again = SyntheticFacts(**settings).tasks(), SyntheticFacts(**settings).tasks()
    assert [t.train for t in tasks] == [t.train for t in again]
    assert [t.train for t in tasks] != [t.train for t in SyntheticFacts(n_tasks=3, people_per_task=2, seed=8).tasks()]
    people = [
        {
            i.prompt.removeprefix("The birthplace of ").removesuffix(" is")
            for i in t.test.items
            if i.prompt.startswith("The birthplace of ")
        }
        for t in tasks
    ]
    assert all(len(p) == 2 for p in people) and not (people[0] & people[1] or people[1] & people[2])
    for task in tasks:
        assert len(task.train) == 2 * 4 * 3 and len(task.test.items) == 2 * 4  # people x relations (x paraphrases)
        assert task.test.chance == pytest.approx(1 / 5)
        for item in task.test.items:
            assert item.answer in item.candidates and len(set(item.candidates)) == 5
            assert not any(item.prompt in line for line in task.train)  # the cloze wording is never trained on
            assert any(item.answer in line for line in task.train)


def test_facts_seen_template_is_trained_on():
    task = SyntheticFacts(n_tasks=1, people_per_task=1, paraphrases=1, test_template="seen").tasks()[0]
    for item in task.test.items:
        assert any(line.startswith(f"{item.prompt} {item.answer}") for line in task.train)


def test_domain_sequence_splits_files():
    tasks = DomainSequence(domains=["json", "email"], train_tokens=2000, test_tokens=300).tasks()
    assert [t.name for t in tasks] == ["json", "email"]
    for task in tasks:
        assert task.train and task.test.texts and task.test.metric == "perplexity"
        assert not set(task.train) & set(task.test.texts)
        assert sum(map(len, task.train)) <= 2000 * 3.5
    assert len(tasks[0].test.tokens(Tokenizer.default())) == 300
    with pytest.raises(ValueError, match="not a package"):
        DomainSequence(domains=["nope"]).tasks()
    assert GENERAL_VAL_FRACTION == 0.01  # the general metric's files (hope fit's default split) stay out


# -- methods --------------------------------------------------------------------------------------------------------
def test_pack_blocks_scores_every_token_once():
    inputs, labels = pack_blocks(list(range(10, 21)), seq_len=4)  # 11 tokens -> 10 targets -> 3 blocks
    assert inputs.tolist() == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 0]]
    assert labels.tolist() == [[11, 12, 13, 14], [15, 16, 17, 18], [19, 20, -100, -100]]


def test_full_finetune_learns_the_task():
    model, tok = tiny_model(), Tokenizer.default()
    task = SyntheticFacts(n_tasks=1, people_per_task=2).tasks()[0]
    stats = EpochFinetune(lr=3e-3, epochs=8, seq_len=32).learn(model, task, tok)
    assert stats["steps"] > 0 and stats["loss_last"] < stats["loss_first"] - 1.0
    assert not model.training


def test_epoch_finetune_is_full_finetune_with_flat_options():
    """One implementation: the harness's EpochFinetune is hope.finetune's FullFinetune, weight for weight."""
    tok, task = Tokenizer.default(), SyntheticFacts(n_tasks=1, people_per_task=1).tasks()[0]
    trained = []
    for method in (
        EpochFinetune(lr=3e-3, epochs=2, seq_len=32, weight_decay=0.1),
        FullFinetune(loop=TaskLoop(lr=3e-3, epochs=2, seq_len=32, weight_decay=0.1)),
    ):
        model = tiny_model()
        method.setup(model, tok)
        method.learn(model, task, tok)
        trained.append(model.state_dict())
    assert isinstance(EpochFinetune(), FullFinetune)
    assert trained[0].keys() == trained[1].keys() and all(v.equal(trained[1][k]) for k, v in trained[0].items())
    assert not trained[0]["head.weight"].equal(tiny_model().state_dict()["head.weight"])
    assert EpochFinetune(lr=0.5).config() == {**vars(TaskLoop()), "lr": 0.5}


def test_in_context_uses_only_learned_tasks():
    tok = Tokenizer.default()
    t1, t2 = (Task(name, [f"{name} text."], None) for name in ("one", "two"))
    seen = InContext()
    seen.setup(None, tok)
    assert seen.eval_context(None, t1, tok).tokens == []
    seen.learn(None, t1, tok)
    assert tok.decode(seen.eval_context(None, t2, tok).tokens) == "one text.\n"  # task-agnostic: all it has seen
    assert seen.eval_context(None, None, tok).tokens == []  # nothing for the general metric
    only_own = InContext(scope="task")
    only_own.setup(None, tok)
    only_own.learn(None, t1, tok)
    assert only_own.eval_context(None, t2, tok).tokens == []
    only_own.learn(None, t2, tok)
    assert tok.decode(only_own.eval_context(None, t2, tok).tokens) == "two text.\n"
    assert len(InContext(max_tokens=2).config()) == 2


class BagOfTokens(torch.nn.Module):
    """Uniform logits plus 5 on every token already in the input (causally): it "knows" only what its context
    window shows, so it answers a question exactly when the answer is in the window."""

    def __init__(self, max_seq_len: int = 64) -> None:
        super().__init__()
        self.config = ModelConfig(max_seq_len=max_seq_len)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, state=None):
        seen = torch.nn.functional.one_hot(idx, self.config.padded_vocab_size).cumsum(1) > 0
        return 5.0 * seen.float(), [None]


def test_candidate_ranking_uses_the_context():
    model, tok = BagOfTokens(), Tokenizer.default()
    # one-token candidates: without context both get the same log-probability at the same position, an exact tie
    test = CandidateRanking([QAItem("The code word is", "delta", ["value", "delta"])])
    assert test.evaluate(model, tok, EvalContext()) == 0.0  # a tie: the first candidate wins
    assert test.chance == 0.5
    assert test.evaluate(model, tok, EvalContext(tok.encode("The code word is delta.", bos=False))) == 1.0
    far = tok.encode("The code word is delta." + " filler" * 200, bos=False)  # the answer falls out of the window
    assert test.evaluate(model, tok, EvalContext(far)) == 0.0


# -- the harness ----------------------------------------------------------------------------------------------------
class Table:
    """A test set whose score is looked up from how many tasks the method has learned."""

    metric, higher_is_better, chance = "accuracy", True, 0.5

    def __init__(self, method, column, table):
        self.method, self.column, self.table = method, column, table

    def evaluate(self, model, tokenizer, context):
        return self.table[self.method.learned][self.column]


class Recording(ContinualMethod):
    name = "recording"

    def __init__(self):
        self.learned, self.calls = 0, []

    def setup(self, model, tokenizer):
        self.calls.append("setup")

    def learn(self, model, task, tokenizer):
        self.calls.append(f"learn {task.name}")
        self.learned += 1
        return {"loss": 1.0 / self.learned}

    def eval_context(self, model, task, tokenizer):
        self.calls.append(f"context {task.name if task else None}")
        return EvalContext()


class TableSuite(TaskSuite):
    name = "table"

    def __init__(self, method, table):
        self._tasks = [Task(f"t{j}", ["x"], Table(method, j, table)) for j in range(len(table[0]))]

    def tasks(self):
        return self._tasks


def test_harness_builds_the_matrix_in_protocol_order(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    table = [[0.1, 0.2], [0.8, 0.3], [0.6, 0.9]]  # row 0: before learning, row i: after task i
    method = Recording()
    writer = SummaryWriter(str(tmp_path))
    report = run_retention(
        tiny_model(), Tokenizer.default(), TableSuite(method, table), method, writer=writer, progress=False
    )
    writer.close()
    assert report["matrix"] == table[1:] and report["initial"] == table[0]
    assert report["summary"] == pytest.approx(metrics.continual_summary(table[1:], table[0]))
    assert report["summary"]["backward_transfer"] == pytest.approx(0.6 - 0.8)
    assert report["summary"]["forward_transfer"] == pytest.approx(0.3 - 0.2)
    assert [s["loss"] for s in report["learn_stats"]] == [1.0, 0.5]
    assert method.calls == [
        "setup",
        "context t0",
        "context t1",
        "learn t0",
        "context t0",
        "context t1",
        "learn t1",
        "context t0",
        "context t1",
    ]


def test_tasks_must_share_a_metric():
    method = Recording()
    suite = TableSuite(method, [[0.1, 0.2], [0.1, 0.2], [0.1, 0.2]])
    suite._tasks[1].test.metric = "perplexity"
    with pytest.raises(ValueError, match="one metric"):
        run_retention(tiny_model(), Tokenizer.default(), suite, method, progress=False)


# -- the command ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def safetensors_checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("ckpt")
    model = tiny_model(max_seq_len=128)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "model_config.yaml").write_text(yaml.safe_dump(model.config.to_dict()))
    return folder / "model.safetensors"


def test_retention_command_facts_finetune(safetensors_checkpoint, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "facts"
    main(
        [
            "eval",
            "retention",
            "--checkpoint",
            str(safetensors_checkpoint),
            "--suite",
            "SyntheticFacts",
            "--suite.n_tasks",
            "2",
            "--suite.people_per_task",
            "1",
            "--method",
            "EpochFinetune",
            "--method.epochs",
            "2",
            "--method.seq_len",
            "32",
            "--general_tokens",
            "128",
            "--out_dir",
            str(out),
            "--progress",
            "false",
        ]
    )
    report = json.loads((out / "retention.json").read_text())
    assert report["suite"] == "facts" and report["method"]["config"]["epochs"] == 2
    assert len(report["matrix"]) == 2 and len(report["matrix_with_initial"]) == 3
    assert all(0 <= v <= 1 for row in report["matrix"] for v in row)
    assert report["general"]["before"] > 0 and "relative_drop" in report["general"]
    assert (out / "retention_matrix.png").stat().st_size > 1000 and (out / "retention_curves.png").exists()
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "task/facts-1/accuracy",
        "average/accuracy",
        "general/perplexity",
        "learn/loss_last",
        "summary/backward_transfer",
        "summary/general_relative_drop",
    } <= tags
    assert "backward_transfer" in capsys.readouterr().out
    # the same method by its hope.finetune name (jsonargparse resolves every finetune method's class name)
    main(
        [
            "eval",
            "retention",
            "--checkpoint",
            str(safetensors_checkpoint),
            "--suite",
            "SyntheticFacts",
            "--suite.n_tasks",
            "2",
            "--suite.people_per_task",
            "1",
            "--method",
            "FullFinetune",
            "--method.loop.epochs",
            "2",
            "--method.loop.seq_len",
            "32",
            "--general_tokens",
            "128",
            "--out_dir",
            str(tmp_path / "full"),
            "--progress",
            "false",
        ]
    )
    full = json.loads((tmp_path / "full" / "retention.json").read_text())
    assert report["method"]["class"] == "EpochFinetune" and full["method"]["class"] == "FullFinetune"
    assert full["matrix_with_initial"] == report["matrix_with_initial"] and full["general"] == report["general"]


def test_retention_command_domains_in_context(safetensors_checkpoint, tmp_path):
    out = tmp_path / "domains"
    main(
        [
            "eval",
            "retention",
            "--checkpoint",
            str(safetensors_checkpoint),
            "--suite",
            "DomainSequence",
            "--suite.domains",
            "[json, email]",
            "--suite.train_tokens",
            "200",
            "--suite.test_tokens",
            "64",
            "--suite.chunk",
            "32",
            "--method",
            "InContext",
            "--general_tokens",
            "0",
            "--out_dir",
            str(out),
            "--progress",
            "false",
        ]
    )
    report = json.loads((out / "retention.json").read_text())
    assert report["metric"] == "perplexity" and not report["higher_is_better"] and "general" not in report
    assert report["method"]["name"] == "in_context"
    assert all(v > 1 for row in report["matrix_with_initial"] for v in row)


def test_class_incremental_on_a_generated_stand_in(tmp_path):
    """A small generated stand-in for CLINC150/Banking77/DBpedia14: classes split into groups, every question
    ranks all classes of the suite."""
    rows = [
        {"text": f"please {verb} my {thing} number {i}", "label": f"{verb}_{thing}"}
        for verb in ("check", "block", "renew")
        for thing in ("card", "loan")
        for i in range(12)
    ]
    data = tmp_path / "intents.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = ClassIncremental(str(data), n_tasks=2, classes_per_task=3, train_per_class=4, test_per_class=2)
    tasks = suite.tasks()
    labels = [{line.split("Label: ")[1] for line in t.train} for t in tasks]
    assert all(len(group) == 3 for group in labels) and not labels[0] & labels[1]
    assert labels[0] | labels[1] == {f"{v} {t}" for v in ("check", "block", "renew") for t in ("card", "loan")}
    for task, group in zip(tasks, labels, strict=True):
        assert task.test.chance == pytest.approx(1 / 6)
        assert {item.answer for item in task.test.items} == group
        assert not {item.prompt.split("\n")[0] for item in task.test.items} & {
            line.split("\n")[0] for line in task.train
        }
    report = run_retention(
        tiny_model(), Tokenizer.default(), suite, EpochFinetune(epochs=1, seq_len=32), progress=False
    )
    assert report["suite"] == "classes" and len(report["matrix"]) == 2
    with pytest.raises(ValueError, match="classes"):
        ClassIncremental(str(data), n_tasks=4, classes_per_task=2).tasks()
