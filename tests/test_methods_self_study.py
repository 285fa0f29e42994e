"""Gap-focused self-study: the model's own open- vs closed-book quiz (checked against the evaluation's scorer), the
largest gaps studied first in the baseline's step budget, the counts it reports, and its errors."""

import pytest
import torch

from hope.continual.method import StudyItem, Task
from hope.continual.methods import Compose, GapStudy, LoRA, TaskLoop
from hope.continual.methods.self_study import answer_probabilities
from hope.evaluation.retention import SyntheticFacts
from hope.evaluation.retention.tasks import encode_pair
from hope.evaluation.scoring import continuation_token_scores, summed
from hope.tokenizer import Tokenizer
from tests.test_finetune_params import tiny_model

LOOP = TaskLoop(epochs=2, batch_size=4, seq_len=32)


def facts_task(people: int = 2) -> Task:
    return SyntheticFacts(n_tasks=1, people_per_task=people, paraphrases=2, n_candidates=4).tasks()[0]


def test_study_items_come_from_the_training_material():
    task = facts_task()
    assert len(task.study) == 8  # one per fact: 2 people x 4 relations
    for item in task.study:
        assert set(item.sources) <= set(task.train) and item.answer in item.candidates
        assert item.sources[0].startswith(item.prompt) and len(item.candidates) == 4


@pytest.mark.parametrize("open_book", [False, True])
def test_quiz_probabilities_match_the_evaluation_scorer(open_book):
    model, tok, items = tiny_model(), Tokenizer.default(), facts_task().study[:3]
    model.eval()
    fast = answer_probabilities(model, tok, items, open_book, rows_per_batch=5)  # batches cut across items
    for item, probs in zip(items, fast, strict=True):
        context = f"{item.sources[0]} {item.prompt}" if open_book else item.prompt
        pairs = [encode_pair(tok, context, " " + c) for c in item.candidates]
        scores = summed(continuation_token_scores(model, [tok.bos_id] + pairs[0][0], [c for _, c in pairs]))
        reference = torch.softmax(torch.tensor([s for s, _ in scores], dtype=torch.float64), 0)
        assert torch.allclose(probs, reference, atol=1e-5)


def test_gap_focus_studies_the_largest_gaps_first_in_the_uniform_budget():
    model, tok, task = tiny_model(), Tokenizer.default(), facts_task()
    method = GapStudy(loop=LOOP)
    gaps, _, _ = method.gaps(model, tok, task.study)
    inputs, _ = method.epoch_blocks(model, task, tok, 32, epoch=0)
    uniform, _ = GapStudy(focus="uniform", loop=LOOP).epoch_blocks(model, task, tok, 32, epoch=0)
    assert inputs.shape == uniform.shape  # the same steps as the baseline
    top = task.study[max(range(len(gaps)), key=lambda i: gaps[i])]
    first = tok.encode(top.sources[0], bos=True, eos=True)
    assert inputs[0, : len(first)].tolist() == first
    text = tok.decode([t for t in inputs.flatten().tolist() if t >= 0])
    for item, gap in zip(task.study, gaps, strict=True):  # studied: the items with a gap; the others not at all
        assert all((source in text) == (gap > 0) for source in item.sources)
    assert 0 < sum(g > 0 for g in gaps) < len(gaps)
    never = GapStudy(min_gap=0.99, loop=LOOP).epoch_blocks(model, task, tok, 32, epoch=0)[0]
    assert torch.equal(never, uniform)  # no gap that large: the uniform epoch


def test_learn_reports_gaps_found_and_closed_in_the_same_steps_as_uniform_study():
    tok, task = Tokenizer.default(), facts_task()
    stats = {}
    for focus in ("gap", "uniform"):
        model, method = tiny_model(), GapStudy(focus=focus, loop=TaskLoop(epochs=1, batch_size=4, seq_len=32))
        method.setup(model, tok)
        stats[focus] = method.learn(model, task, tok)
    assert stats["gap"]["steps"] == stats["uniform"]["steps"]
    for s in stats.values():
        assert s["study_items"] == 8 and 0 <= s["gaps_closed"] <= s["gaps_found"] <= 8
        assert set(s) >= {"mean_gap_before", "mean_gap_after", "studied_items"}
    assert stats["gap"]["gaps_found"] == stats["uniform"]["gaps_found"]  # same model, same quiz before the task


def test_gap_study_composes_with_lora():
    tok, task, model = Tokenizer.default(), facts_task(), tiny_model()
    method = Compose([LoRA(rank=2), GapStudy()], loop=LOOP)
    method.setup(model, tok)
    stats = method.learn(model, task, tok)
    assert stats["study_items"] == 8 and method.name == "lora+gap_study"


class OtherStudy(GapStudy):
    """A second part that chooses what to study."""


def test_errors():
    with pytest.raises(ValueError, match="focus"):
        GapStudy(focus="random")
    with pytest.raises(ValueError, match="has no study items"):
        GapStudy().epoch_blocks(tiny_model(), Task("t", ["text"], None), Tokenizer.default(), 32, 0)
    with pytest.raises(ValueError, match="only the retention harness has"):
        GapStudy().check_finetune()
    with pytest.raises(ValueError, match="GapStudy and OtherStudy both choose what to study"):
        Compose([GapStudy(), OtherStudy()])
    item = StudyItem(["a " * 80], "b " * 10, "c", ["c", "d"])
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        answer_probabilities(tiny_model(), Tokenizer.default(), [item], open_book=True)
