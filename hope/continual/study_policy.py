"""Learned study strategy (issue 16, piece 5): how each item a method studies is turned into training text.

A study operator writes one item (``StudyItem``) as training text, as many statements as the item has sources, so
no operator buys extra tokens per item:

===============  ==================================================================================================
``source``       the item's training statements as they are (what ``GapStudy`` studies without a policy)
``repeat``       the first statement (the one the test asks in ``SyntheticFacts``), repeated
``paraphrase``   other wordings of the fact (``StudyItem.forms``)
``qa``           the fact as a question and its answer (the suite's question; else the item's prompt and answer)
``reverse``      the relation read backwards, from the value to the entity (``forms``)
``implication``  a related fact that follows from it (``forms``)
``replay``       the statements interleaved with texts of earlier tasks (the method's replay pool)
===============  ==================================================================================================

At debug scale the model cannot write its own notes, so the operators are programmatic: the suite writes the forms
(``SyntheticFacts``: two unseen wordings, a question, the reversed relation and an implication per fact). An
operator whose form the suite does not write does not apply to the item: ``source``, ``repeat``, ``qa`` and
``replay`` apply to every item, the others only where ``forms`` has them.

``StudyPolicy`` is a softmax over the operators' logits, one row per item relation (``condition="relation"``) or one
for all items, trained by REINFORCE (``update``; the loop is ``hope.evaluation.retention.study_policy``) and saved
as JSON. ``GapStudy(notes=...)`` renders the items it studies through it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from hope.continual.method import StudyItem

OPERATORS = ("source", "repeat", "paraphrase", "qa", "reverse", "implication", "replay")
FORMS = ("paraphrase", "reverse", "implication")
"""Operators that apply only where the suite wrote the item's form."""
CONDITIONS = ("relation", "none")
CHOICES = ("sample", "argmax")


def applies(operator: str, item: StudyItem) -> bool:
    """Whether ``operator`` can write ``item`` (the form-based ones need the suite's form)."""
    return operator not in FORMS or bool(item.forms.get(operator))


def render(operator: str, item: StudyItem, rng: random.Random, replay: list[str]) -> list[str]:
    """``item`` written by ``operator`` as ``len(item.sources)`` training texts (``replay``: the replay pool)."""
    if not applies(operator, item):
        raise ValueError(f"study operator {operator!r} needs the item's form {operator!r}, which the suite lacks")
    n = len(item.sources)
    if operator == "source":
        return list(item.sources)
    if operator == "repeat":
        return [item.sources[0]] * n
    if operator == "replay":  # sources and replayed texts alternate; an empty pool leaves the sources
        return (
            [item.sources[k // 2] if k % 2 == 0 else rng.choice(replay) for k in range(n)]
            if replay
            else list(item.sources)
        )
    forms = item.forms.get(operator) or [f"Q: {item.prompt} ...? A: {item.answer}."]  # only qa has a fallback
    return [forms[k % len(forms)] for k in range(n)]


@dataclass
class StudyPolicy:
    """A softmax over study operators, per item relation or one for all (module docstring); JSON on disk."""

    operators: list[str] = field(default_factory=lambda: list(OPERATORS))
    """The operators it chooses among (a single one is a fixed strategy: ``["source"]`` repeats the source)."""
    condition: str = "relation"
    """``relation``: one row of logits per ``StudyItem.relation``; ``none``: one row for every item."""
    logits: dict[str, list[float]] = field(default_factory=dict)
    """Logits by condition key (the relation, or ``*``), one per operator; a key missing is all zeros (uniform)."""
    choice: str = "sample"
    """``sample`` an operator per item from the softmax, or take the most likely one (``argmax``)."""

    def __post_init__(self) -> None:
        unknown = [op for op in self.operators if op not in OPERATORS]
        if not self.operators or unknown or len(set(self.operators)) < len(self.operators):
            raise ValueError(f"StudyPolicy.operators={self.operators}: list distinct operators of {OPERATORS}")
        if self.condition not in CONDITIONS or self.choice not in CHOICES:
            raise ValueError(
                f"StudyPolicy needs condition in {CONDITIONS} and choice in {CHOICES} "
                f"(got {self.condition!r}, {self.choice!r})"
            )
        for key, row in self.logits.items():
            if len(row) != len(self.operators):
                raise ValueError(f"StudyPolicy.logits[{key!r}] has {len(row)} values for {len(self.operators)} ops")

    def key(self, item: StudyItem) -> str:
        """The row of logits that chooses for ``item``."""
        return (item.relation or "*") if self.condition == "relation" else "*"

    def probabilities(self, item: StudyItem) -> list[float]:
        """Probability of each operator for ``item``: the softmax over those that apply to it (0 elsewhere)."""
        row = self.logits.get(self.key(item), [0.0] * len(self.operators))
        usable = [applies(op, item) for op in self.operators]
        if not any(usable):
            raise ValueError(f"no operator of {self.operators} applies to an item of relation {item.relation!r}")
        top = max(x for x, ok in zip(row, usable, strict=True) if ok)
        weights = [math.exp(x - top) if ok else 0.0 for x, ok in zip(row, usable, strict=True)]
        return [w / sum(weights) for w in weights]

    def choose(self, item: StudyItem, rng: random.Random) -> str:
        """An operator for ``item``: drawn from ``probabilities`` with ``rng``, or the most likely (``argmax``)."""
        probs = self.probabilities(item)
        if self.choice == "argmax":
            return self.operators[max(range(len(probs)), key=probs.__getitem__)]
        return rng.choices(self.operators, weights=probs)[0]

    def update(self, items: list[StudyItem], chosen: list[str], advantages: list[float], lr: float) -> None:
        """One REINFORCE step (Williams 1992): each row of logits += lr * mean_i A_i * grad log pi(chosen_i | item_i)
        over the items it chose for, where the gradient of a softmax's log-probability is ``onehot(chosen) -
        probabilities``."""
        grads: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for item, op, advantage in zip(items, chosen, advantages, strict=True):
            key, probs = self.key(item), self.probabilities(item)
            row, counts[key] = grads.setdefault(key, [0.0] * len(self.operators)), counts.get(key, 0) + 1
            for k, p in enumerate(probs):
                row[k] += advantage * ((self.operators[k] == op) - p)
        for key, grad in grads.items():
            row = self.logits.setdefault(key, [0.0] * len(self.operators))
            self.logits[key] = [x + lr * g / counts[key] for x, g in zip(row, grad, strict=True)]

    def save(self, path: str | Path) -> Path:
        """Write the policy as JSON (``load`` reads it back)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> StudyPolicy:
        """The policy ``save`` wrote to ``path``."""
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"study policy {path} not found: train one with python -m "
                "hope.evaluation.retention.study_policy, or pass a StudyPolicy"
            )
        fields = json.loads(Path(path).read_text())
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"study policy {path} has unknown fields {unknown}; it holds operators, condition, logits and choice"
            )
        return cls(**fields)
