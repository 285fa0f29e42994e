"""Gap-focused self-study (Autonomous Learning, ACL 2025 Findings; SEAL 2025): study first what the model can
understand but has not memorised.

Before every epoch of a task the model quizzes itself on the task's material (``Task.study``: each item is a
piece of the training text, a question about it, its answer and candidate answers). Each item is scored twice
by the model itself, by the probability of the answer among the candidates (their summed log-likelihoods after
the question, softmax over candidates, as ``CandidateRanking`` ranks them):

- open book: the item's first source statement, then the question (the fact is in context);
- closed book: the question alone (the fact must be in the weights).

The gap is ``p_open - p_closed``. A large gap is an item the model can use when it reads it but does not know:
that is what the epoch studies. Items with a gap above ``min_gap`` are ordered largest gap first, their source
statements repeated in that order until the epoch holds as many blocks as the uniform epoch (the task's texts
shuffled; ``FinetuneMethod.epoch_blocks``), so the step budget is the baseline's exactly. Items already known
closed-book, or not understood even open-book, are not studied. With no gap left, the epoch is the uniform one.
``focus="uniform"`` trains as the baseline but quizzes the same way: the control that reports the same counts.
``focus="all"`` studies every item, in a shuffled order, without quizzing (what training a study policy needs).

With a study policy (``notes``: a ``hope.continual.study_policy.StudyPolicy`` or the path of its JSON; piece 5),
each item is written by the operator the policy chooses for it (paraphrase, question and answer, reversed relation,
...) instead of as its source statements; the operators are drawn once per task (seeded by ``loop.seed`` and the
task) and the epoch is filled to the same number of blocks. ``replay`` mixes in the training texts of the earlier
tasks (the task's own for the first). Without ``notes`` the epochs are the source statements, as above.

Reported per task (``learn``'s result): ``study_items``, ``gaps_found`` (open book right, closed book wrong,
before the task), ``gaps_closed`` (of those, right closed-book after it), ``mean_gap_before``/``_after`` and
``studied_items`` (items above ``min_gap`` in the first epoch). At debug scale the model cannot write its own
questions, so the suites write them programmatically from the same training statements (``SyntheticFacts``:
the first statement of a fact cut before the value, candidates of the same relation); the scoring, the ranking and
the study are the model's own.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from torch import nn

from hope.continual.finetune import FinetuneMethod, TaskLoop
from hope.continual.method import StudyItem, Task
from hope.continual.study_policy import StudyPolicy, render
from hope.data.blocks import text_blocks
from hope.loss import next_token_loss
from hope.tokenizer import Tokenizer

FOCUS = ("gap", "uniform", "all")


@torch.no_grad()
def answer_probabilities(
    model: nn.Module, tokenizer: Tokenizer, items: list[StudyItem], open_book: bool, rows_per_batch: int = 64
) -> list[torch.Tensor]:
    """Per item, the probability of each candidate among the candidates (softmax of the summed log-likelihood of
    `` candidate`` after the question, with the item's first source before it if ``open_book``)."""
    rows, lengths = [], []
    for item in items:
        context = f"{item.sources[0]} {item.prompt}" if open_book else item.prompt
        n_context = len(tokenizer.encode(context, bos=True))
        for candidate in item.candidates:
            # lm-eval's split: the candidate's tokens are those of the whole text past the context's
            whole = tokenizer.encode(f"{context} {candidate}", bos=True)
            rows.append(whole)
            lengths.append(len(whole) - n_context)
    if max(len(r) for r in rows) - 1 > model.config.max_seq_len:
        raise ValueError(f"a study question with its candidate exceeds max_seq_len={model.config.max_seq_len}")
    device = next(model.parameters()).device
    logliks = []
    for start in range(0, len(rows), rows_per_batch):
        chunk, n_scored = rows[start : start + rows_per_batch], lengths[start : start + rows_per_batch]
        width = max(len(r) for r in chunk)
        tokens_BT = torch.zeros(len(chunk), width, dtype=torch.long)
        labels_BT = torch.full((len(chunk), width - 1), -100, dtype=torch.long)
        for i, (row, n) in enumerate(zip(chunk, n_scored, strict=True)):
            tokens_BT[i, : len(row)] = torch.tensor(row)
            labels_BT[i, len(row) - 1 - n : len(row) - 1] = tokens_BT[i, len(row) - n : len(row)]  # the candidate
        logits_BTV, _ = model(tokens_BT[:, :-1].to(device))
        logits_BTV = logits_BTV[..., : model.config.vocab_size]  # the padded vocabulary tail is never a target
        nll_BT = next_token_loss(logits_BTV, labels_BT.to(device), reduction="none").view(len(chunk), -1)
        logliks.append(-nll_BT.sum(1).double().cpu())
    flat = torch.cat(logliks).split([len(item.candidates) for item in items])
    return [torch.softmax(scores, 0) for scores in flat]


def quiz(model: nn.Module, tokenizer: Tokenizer, items: list[StudyItem], open_book: bool) -> tuple[list, list]:
    """``(p(answer) among the candidates, answer ranked first)`` per item, open- or closed-book; eval mode."""
    was_training = model.training
    model.eval()
    probs = answer_probabilities(model, tokenizer, items, open_book)
    model.train(was_training)
    answer = [item.candidates.index(item.answer) for item in items]
    return [float(p[a]) for p, a in zip(probs, answer, strict=True)], [
        int(p.argmax()) == a for p, a in zip(probs, answer, strict=True)
    ]


class GapStudy(FinetuneMethod):
    """Full finetuning that studies the largest open- vs closed-book gaps first, in the same steps (module docstring).

    Args:
        focus: ``gap`` (study the items above ``min_gap``, largest first), ``uniform`` (the baseline's epochs,
            quizzed the same way: the control) or ``all`` (every item, shuffled, no quiz).
        min_gap: smallest ``p_open - p_closed`` of an item that is studied.
        notes: a study policy (``StudyPolicy``, or the path of its JSON) that writes each studied item through
            its operators; None studies the source statements.
        loop: how ``learn`` trains on a task of the retention harness.
    """

    name = "gap_study"

    def __init__(
        self,
        focus: str = "gap",
        min_gap: float = 0.0,
        notes: StudyPolicy | str | None = None,
        loop: TaskLoop | None = None,
    ) -> None:
        super().__init__(loop)
        if focus not in FOCUS or not -1 <= min_gap < 1:
            raise ValueError(f"GapStudy needs focus in {FOCUS} and -1 <= min_gap < 1 (got {focus!r}, {min_gap}).")
        if focus == "uniform" and notes is not None:
            raise ValueError("GapStudy(focus='uniform') trains on the task's texts and would not use notes; drop one.")
        self.focus, self.min_gap = focus, min_gap
        self.notes = StudyPolicy.load(notes) if isinstance(notes, str | Path) else notes
        self._chosen: list[list[str]] = []  # per task, the operator of each study item
        self._earlier: list[str] = []  # the training texts of the tasks before: replay's pool
        self._pool: list[str] = []
        self._tokenizer: Tokenizer | None = None
        self._model: nn.Module | None = None
        self._items: list[StudyItem] = []
        self._before: dict[str, float] = {}
        self._found: list[int] = []

    def check_finetune(self) -> None:
        """Raise: ``hope finetune`` streams data without the tasks' study items."""
        raise ValueError(
            "GapStudy quizzes itself on a task's study items, which only the retention harness has (`hope eval "
            "retention --suite SyntheticFacts --method GapStudy`); `hope finetune` streams data without them."
        )

    def gaps(self, model: nn.Module, tokenizer: Tokenizer, items: list[StudyItem]) -> tuple[list, list, list]:
        """``(p_open - p_closed, open book right and closed book wrong, closed book right)`` per item."""
        p_open, right_open = quiz(model, tokenizer, items, open_book=True)
        p_closed, right_closed = quiz(model, tokenizer, items, open_book=False)
        gaps = [o - c for o, c in zip(p_open, p_closed, strict=True)]
        return gaps, [o and not c for o, c in zip(right_open, right_closed, strict=True)], right_closed

    def epoch_blocks(
        self, model: nn.Module, task: Task, tokenizer: Tokenizer, seq_len: int, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quiz the task's items; the epoch's blocks are the largest-gap items' statements, as many as uniform's."""
        if not task.study:
            raise ValueError(
                f"GapStudy: task {task.name!r} has no study items (Task.study); use a suite that writes them "
                "(SyntheticFacts), or another method."
            )
        uniform = super().epoch_blocks(model, task, tokenizer, seq_len, epoch)
        if epoch == 0:
            self._model, self._tokenizer, self._items = model, tokenizer, task.study
            self._begin_notes(task)
        if self.focus == "all":
            studied = list(range(len(task.study)))
            random.Random(f"{self.loop.seed}/{self._tasks_learned}/{epoch}/order").shuffle(studied)
        else:
            gaps, gap_found, _ = self.gaps(model, tokenizer, task.study)
            studied = sorted((i for i, g in enumerate(gaps) if g > self.min_gap), key=lambda i: -gaps[i])
            if epoch == 0:
                self._found = [i for i, found in enumerate(gap_found) if found]
                self._before = {"mean_gap_before": sum(gaps) / len(gaps), "studied_items": float(len(studied))}
        if self.focus == "uniform" or not studied:
            return uniform
        texts = self._study_texts(task, studied, epoch)
        repeats = 1
        while True:  # the gap-ordered statements, repeated until they fill the uniform epoch's blocks
            inputs, labels = text_blocks(texts * repeats, tokenizer, seq_len)
            if len(inputs) >= len(uniform[0]):
                return inputs[: len(uniform[0])], labels[: len(uniform[0])]
            repeats = math.ceil(repeats * len(uniform[0]) / len(inputs)) + 1

    def _begin_notes(self, task: Task) -> None:
        """A new task: the policy's operator for each item, and replay's pool (the earlier tasks' texts)."""
        self._pool = list(self._earlier or task.train)
        self._earlier += task.train
        if self.notes is not None:
            rng = random.Random(f"{self.loop.seed}/{self._tasks_learned}/notes")
            self._chosen.append([self.notes.choose(item, rng) for item in task.study])

    def _study_texts(self, task: Task, studied: list[int], epoch: int) -> list[str]:
        """The studied items' texts in order: their sources, or as the policy's operators write them."""
        if self.notes is None:
            return [source for i in studied for source in task.study[i].sources]
        rng = random.Random(f"{self.loop.seed}/{self._tasks_learned}/{epoch}/render")
        chosen = self._chosen[-1]
        return [text for i in studied for text in render(chosen[i], task.study[i], rng, self._pool)]

    def chosen_operators(self) -> list[list[str]]:
        """Per task learned with ``notes``, the operator the policy chose for each study item (in ``Task.study``'s
        order); what a study policy is trained on."""
        return self._chosen

    def task_stats(self) -> dict[str, float]:
        """Items, gaps found before the task and closed after it, mean gaps, items studied in the first epoch;
        with ``notes``, the items each operator wrote (``notes_<operator>``)."""
        chosen = [] if self.notes is None else self._chosen[-1]
        counts = {} if self.notes is None else {f"notes_{op}": float(chosen.count(op)) for op in self.notes.operators}
        if self.focus == "all":
            return {"study_items": float(len(self._items)), **counts}
        gaps, _, right_closed = self.gaps(self._model, self._tokenizer, self._items)
        return {
            **counts,
            "study_items": float(len(self._items)),
            "gaps_found": float(len(self._found)),
            "gaps_closed": float(sum(right_closed[i] for i in self._found)),
            **self._before,
            "mean_gap_after": sum(gaps) / len(gaps),
        }
