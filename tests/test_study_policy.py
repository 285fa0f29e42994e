"""The learned study strategy (piece 5): the operators' texts, the policy's REINFORCE step (against autograd) and
that it learns a synthetic reward, its JSON, GapStudy rendering through it in the same budget, the command line,
and the training loop end to end on a tiny model."""

import json
import random

import pytest
import torch

from hope.cli import main
from hope.continual.method import StudyItem
from hope.continual.methods import Compose, GapStudy, LayerwiseLRDecay, LoRA, Replay, TaskLoop
from hope.continual.study_policy import OPERATORS, StudyPolicy, applies, render
from hope.evaluation.retention import SyntheticFacts
from hope.evaluation.retention.study_policy import Episode, advantages, evaluate, train
from hope.tokenizer import Tokenizer
from tests.test_eval_retention import safetensors_checkpoint  # noqa: F401 (a fixture)
from tests.test_finetune_params import tiny_model
from tests.test_methods_self_study import LOOP, facts_task

FORMS = {
    "paraphrase": ["Ada is a native of Ostrella.", "The town of Ostrella is where Ada comes from."],
    "qa": ["Q: Where was Ada born? A: Ostrella."],
    "reverse": ["Among the people born in Ostrella is Ada."],
    "implication": ["The birth record of Ada is kept in Ostrella."],
}
SOURCES = ["Ada was born in Ostrella.", "Ostrella is the hometown of Ada.", "Ada grew up in Ostrella."]
ITEM = StudyItem(SOURCES, "Ada was born in", "Ostrella", ["Ostrella", "Zalvia"], "birthplace", FORMS)
BARE = StudyItem(SOURCES[:2], "Ada was born in", "Ostrella", ["Ostrella", "Zalvia"], "occupation")  # no forms


def test_each_operator_writes_the_intended_text():
    rng = random.Random(0)
    expected = {
        "source": SOURCES,
        "repeat": [SOURCES[0]] * 3,
        "paraphrase": [FORMS["paraphrase"][0], FORMS["paraphrase"][1], FORMS["paraphrase"][0]],
        "qa": FORMS["qa"] * 3,
        "reverse": FORMS["reverse"] * 3,
        "implication": FORMS["implication"] * 3,
        "replay": [SOURCES[0], "Earlier text.", SOURCES[1]],
    }
    for op in OPERATORS:
        assert render(op, ITEM, rng, ["Earlier text."]) == expected[op], op
    assert render("replay", ITEM, rng, []) == SOURCES  # nothing to replay yet
    assert render("qa", BARE, rng, []) == ["Q: Ada was born in ...? A: Ostrella."] * 2  # the item's own prompt
    assert [op for op in OPERATORS if applies(op, BARE)] == ["source", "repeat", "qa", "replay"]
    with pytest.raises(ValueError, match="needs the item's form 'reverse'"):
        render("reverse", BARE, rng, [])


def test_facts_write_every_form_about_the_fact_and_apart_from_train_and_test():
    task = SyntheticFacts(n_tasks=1, people_per_task=3, seed=4).tasks()[0]
    prompts = {item.prompt for item in task.test.items}
    for item, question in zip(task.study, task.test.items, strict=True):  # aligned: the training loop relies on it
        assert (item.prompt, item.answer) == (question.prompt, question.answer)
        assert set(item.forms) == {"paraphrase", "qa", "reverse", "implication"} and item.relation
        person = item.prompt.split(" was ")[0].split(" loves")[0].split(" works")[0]
        for texts in item.forms.values():
            for text in texts:
                assert item.answer in text and person in text and text not in task.train
                assert not any(text.startswith(p) for p in prompts)


def test_update_is_the_reinforce_gradient():
    torch.manual_seed(0)
    rows = {"birthplace": torch.randn(7).tolist(), "occupation": torch.randn(7).tolist()}
    policy = StudyPolicy(logits={k: list(v) for k, v in rows.items()})
    items = [ITEM, BARE, ITEM, ITEM, BARE]
    chosen, adv = ["qa", "repeat", "qa", "reverse", "source"], torch.randn(5).tolist()
    policy.update(items, chosen, adv, lr=0.3)
    for key, item in (("birthplace", ITEM), ("occupation", BARE)):
        theta = torch.tensor(rows[key], dtype=torch.float64, requires_grad=True)
        usable = torch.tensor([applies(op, item) for op in OPERATORS])
        logp = theta.masked_fill(~usable, float("-inf")).log_softmax(0)
        mine = [i for i, it in enumerate(items) if it is item]
        objective = sum(adv[i] * logp[OPERATORS.index(chosen[i])] for i in mine) / len(mine)
        objective.backward()
        assert torch.allclose(torch.tensor(policy.logits[key], dtype=torch.float64), theta + 0.3 * theta.grad)
    assert sum(policy.probabilities(BARE)) == pytest.approx(1) and policy.probabilities(BARE)[2] == 0


def test_reinforce_moves_probability_to_the_rewarded_operator():
    policy, rng = StudyPolicy(), random.Random(0)
    items = [ITEM] * 20
    for _ in range(30):
        chosen = [policy.choose(item, rng) for item in items]
        gains = [1.0 if op == "implication" else 0.1 * rng.random() for op in chosen]
        policy.update(items, chosen, advantages(gains), lr=1.0)
    probs = dict(zip(OPERATORS, policy.probabilities(ITEM), strict=True))
    assert probs["implication"] > 0.6 and max(p for op, p in probs.items() if op != "implication") < 0.15
    assert policy.probabilities(BARE) == pytest.approx([0.25, 0.25, 0, 0.25, 0, 0, 0.25])  # its row never trained
    argmax = StudyPolicy(policy.operators, policy.condition, policy.logits, "argmax")
    assert {argmax.choose(ITEM, rng) for _ in range(5)} == {"implication"}


def test_advantages_remove_the_episode_baseline():
    assert advantages([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]
    adv = advantages([0.0, 0.0, 1.0])
    assert adv[2] > 0 > adv[0] == adv[1]


def test_policy_json_round_trips_and_checks_its_fields(tmp_path):
    policy = StudyPolicy(["qa", "source"], "none", {"*": [0.5, -1.25]}, "argmax")
    assert StudyPolicy.load(policy.save(tmp_path / "p" / "policy.json")) == policy
    with pytest.raises(ValueError, match="distinct operators"):
        StudyPolicy(["qa", "notes"])
    with pytest.raises(ValueError, match="has 1 values for 2 ops"):
        StudyPolicy(["qa", "source"], logits={"*": [1.0]})
    with pytest.raises(ValueError, match="condition in"):
        StudyPolicy(condition="person")
    (tmp_path / "old.json").write_text(json.dumps({"operators": ["qa"], "temperature": 1.0}))
    with pytest.raises(ValueError, match=r"unknown fields \['temperature'\]"):
        StudyPolicy.load(tmp_path / "old.json")
    with pytest.raises(FileNotFoundError, match="train one with"):
        StudyPolicy.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="would not use notes"):
        GapStudy(focus="uniform", notes=StudyPolicy())
    with pytest.raises(ValueError, match="no operator of"):
        StudyPolicy(["paraphrase"]).probabilities(BARE)


def decoded(inputs: torch.Tensor, tok: Tokenizer) -> str:
    return tok.decode([t for t in inputs.flatten().tolist() if t >= 0])


@pytest.mark.parametrize("focus", ["gap", "all"])
def test_gap_study_renders_through_the_policy_in_the_uniform_budget(focus):
    model, tok, task = tiny_model(), Tokenizer.default(), facts_task()
    uniform, _ = GapStudy(focus="uniform", loop=LOOP).epoch_blocks(model, task, tok, 32, epoch=0)
    method = GapStudy(focus=focus, min_gap=-1, notes=StudyPolicy(["qa", "reverse"], condition="none"), loop=LOOP)
    inputs, _ = method.epoch_blocks(model, task, tok, 32, epoch=0)
    assert inputs.shape == uniform.shape  # the baseline's steps, whatever the operators write
    (chosen,) = method.chosen_operators()
    assert len(chosen) == len(task.study) and set(chosen) == {"qa", "reverse"}
    text = decoded(inputs, tok)
    assert not any(source in text for item in task.study for source in item.sources)
    # every whole text of the epoch is a form its item's operator wrote (the epoch's end may cut the last one)
    ids, bos = inputs.flatten().tolist(), tok.bos_id
    starts = [k for k, t in enumerate(ids) if t == bos]
    texts = [
        tok.decode([t for t in ids[a + 1 : b] if t >= 0]).strip() for a, b in zip(starts[:-1], starts[1:], strict=True)
    ]
    written = {form for item, op in zip(task.study, chosen, strict=True) for form in item.forms[op]}
    assert len(texts) >= len(task.study) and set(texts) <= written
    again = GapStudy(focus=focus, min_gap=-1, notes=StudyPolicy(["qa", "reverse"], condition="none"), loop=LOOP)
    assert torch.equal(again.epoch_blocks(model, task, tok, 32, epoch=0)[0], inputs)  # seeded


def test_the_source_operator_is_gap_study_without_a_policy():
    model, tok, task = tiny_model(), Tokenizer.default(), facts_task()
    plain = GapStudy(loop=LOOP).epoch_blocks(model, task, tok, 32, epoch=0)
    source = GapStudy(notes=StudyPolicy(["source"]), loop=LOOP).epoch_blocks(model, task, tok, 32, epoch=0)
    assert torch.equal(plain[0], source[0]) and torch.equal(plain[1], source[1])


def test_all_five_pieces_compose_with_the_policy_in_one_part():
    tok, model = Tokenizer.default(), tiny_model()
    tasks = SyntheticFacts(n_tasks=2, people_per_task=1, paraphrases=2, n_candidates=4).tasks()
    parts = [LoRA(rank=2), Replay(), LayerwiseLRDecay(), GapStudy(notes=StudyPolicy(["qa", "paraphrase"]))]
    method = Compose(parts, loop=TaskLoop(epochs=1, batch_size=4, seq_len=32))
    method.setup(model, tok)
    stats = [method.learn(model, task, tok) for task in tasks]
    assert [s["notes_qa"] + s["notes_paraphrase"] for s in stats] == [4, 4] and "gaps_found" in stats[1]
    assert method.name == "lora+replay+llrd+gap_study" and len(parts[3].chosen_operators()) == 2


def test_replay_mixes_in_the_earlier_tasks_texts():
    tasks = SyntheticFacts(n_tasks=2, people_per_task=2, paraphrases=2, n_candidates=4).tasks()
    model, tok = tiny_model(), Tokenizer.default()
    method = GapStudy(focus="all", notes=StudyPolicy(["replay"]), loop=TaskLoop(epochs=1, batch_size=4, seq_len=32))
    method.setup(model, tok)
    first = decoded(method.epoch_blocks(model, tasks[0], tok, 32, 0)[0], tok)
    assert not any(text in first for text in tasks[1].train)  # the first task has no earlier text: its own
    method.learn(model, tasks[0], tok)
    inputs, _ = method.epoch_blocks(model, tasks[1], tok, 32, 0)
    assert any(text in decoded(inputs, tok) for text in tasks[0].train)


def test_gap_study_with_notes_from_the_command_line(safetensors_checkpoint, tmp_path):  # noqa: F811
    path = StudyPolicy(["qa"]).save(tmp_path / "policy.json")
    args = ["eval", "retention", "--checkpoint", str(safetensors_checkpoint), "--suite", "SyntheticFacts"]
    args += ["--suite.n_tasks", "1", "--suite.people_per_task", "1", "--method", "GapStudy", "--method.focus", "all"]
    args += ["--method.notes", str(path), "--method.loop.epochs", "1", "--method.loop.seq_len", "32"]
    main([*args, "--general_tokens", "0", "--out_dir", str(tmp_path / "out"), "--progress", "false"])
    report = json.loads((tmp_path / "out" / "retention.json").read_text())
    assert report["method"]["config"]["notes"]["operators"] == ["qa"]
    assert report["learn_stats"][0]["notes_qa"] == 4 and report["learn_stats"][0]["study_items"] == 4


def test_training_loop_runs_and_writes_its_outputs(safetensors_checkpoint, tmp_path):  # noqa: F811
    size = Episode(tasks=2, people=1, epochs=1, batch_size=4, seq_len=32)
    policy = train(checkpoint=str(safetensors_checkpoint), episodes=2, size=size, out=str(tmp_path))
    assert StudyPolicy.load(tmp_path / "policy.json") == policy and set(policy.logits) <= {
        "birthplace",
        "birth_year",
        "occupation",
        "favourite_colour",
    }
    log = json.loads((tmp_path / "episodes.json").read_text())["log"]
    assert [e["seed"] for e in log] == [1000, 1001]
    for e in log:
        assert e["reward"] == pytest.approx(e["learned"] - e["forgotten"])
        assert sum(e["probabilities"].values()) == pytest.approx(1)
    assert (tmp_path / "preferences.png").stat().st_size > 1000 and (tmp_path / "tensorboard").is_dir()
    report = evaluate(
        checkpoint=str(safetensors_checkpoint),
        policy=str(tmp_path / "policy.json"),
        episodes=2,
        size=size,
        out=str(tmp_path),
    )
    assert set(report["summary"]) == {"learned", "learned_argmax", "uniform", "source"}
    assert json.loads((tmp_path / "evaluation.json").read_text())["seeds"] == [5000, 5001]
