"""Synthetic facts: procedurally generated facts about fictional people, in disjoint sets, one set per task.

Every person (a made-up name such as "Dravo Kelmin") gets one value for each relation: a birthplace (a made-up
town), a birth year, an occupation and a favourite colour. The facts cannot be known before training, so the
starting model scores at chance, and a method must learn them from the training statements.

- Training text: ``paraphrases`` statements per fact, drawn from the relation's training templates ("Dravo Kelmin
  was born in Ostrella.", "Ostrella is the hometown of Dravo Kelmin.", ...), shuffled within the task.
- Study items (``Task.study``, for self-study methods such as ``GapStudy``): per fact its training statements, the
  first one cut before the value as the question, and ``n_candidates`` values of the relation (drawn apart from the
  test's), all from the training material. With ``test_template="seen"`` the question is the test's wording. Each
  item also carries the fact in the study operators' forms (``StudyItem.forms``: two other wordings, a question
  with its answer, the reversed relation, an implication; ``Relation.study``), which no training or test text uses.
- Test: one closed-book cloze per fact, scored by ranking ``n_candidates`` values of the same relation by
  log-likelihood (``CandidateRanking``; chance = 1 / n_candidates), with a binomial standard error. With
  ``test_template="seen"`` (default) the cloze is the first training template cut before the value ("Dravo Kelmin
  was born in"): recall of a trained fact, as closed-book QA after finetuning. With ``"heldout"`` it is a wording
  never trained on ("The birthplace of Dravo Kelmin is"), so a correct answer needs the fact, not the sentence.

The defaults (70 people per task: 280 questions, so every accuracy has a standard error <= 0.030; all 4 training
templates per fact; the seen cloze) are what the debug model learns well above chance: the 400-step debug
Transformer++ (``configs/pretrain/debug.yaml``, val ppl 161), finetuned on one task with ``EpochFinetune``'s
defaults, went from 0.136 to 0.371 +- 0.029 (chance 0.125). With the held-out cloze it reached only
0.236 +- 0.025: a ~3M-parameter model trained on code barely generalises a fact to a new wording.

Tasks are disjoint in people, and share the value pools, so later tasks compete for the same answers (the
interference that causes forgetting). Everything is a pure function of ``seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hope.continual.method import StudyItem, Task
from hope.evaluation.retention.tasks import CandidateRanking, QAItem, TaskSuite

_SYLLABLES = [
    "dra",
    "vo",
    "kel",
    "min",
    "or",
    "sa",
    "tel",
    "ben",
    "ri",
    "ma",
    "lo",
    "qua",
    "zen",
    "fa",
    "rud",
    "ith",
    "mor",
    "ka",
    "vel",
    "an",
    "tis",
    "gro",
    "pel",
    "ny",
    "sol",
    "bar",
    "ce",
    "dun",
    "ela",
    "wy",
]
_TOWNS = [
    "Ostrella",
    "Varnholm",
    "Quillmere",
    "Dastovo",
    "Brenmoor",
    "Ketterby",
    "Lunagrad",
    "Fennick",
    "Morrowdale",
    "Zalvia",
    "Tirnaven",
    "Pollux Bay",
    "Hesketh",
    "Grauvik",
    "Sablemont",
    "Ivelle",
]
_OCCUPATIONS = [
    "baker",
    "pilot",
    "sculptor",
    "chemist",
    "carpenter",
    "violinist",
    "farmer",
    "lawyer",
    "astronomer",
    "tailor",
    "nurse",
    "librarian",
    "fisherman",
    "architect",
    "jeweller",
    "surgeon",
]
_COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "black",
    "white",
    "grey",
    "pink",
    "brown",
    "silver",
    "gold",
    "teal",
    "violet",
    "crimson",
]
_YEARS = [str(y) for y in range(1702, 1999, 19)]


@dataclass(frozen=True)
class Relation:
    """One relation of the synthetic facts: its name, candidate values, training templates and test cloze."""

    name: str
    values: list[str]
    train_templates: list[str]
    test_template: str
    """Cloze ending right before the value (the value follows after a space)."""
    study: dict[str, list[str]]
    """Templates of the study operators' forms (``StudyItem.forms``), never trained on or tested: ``paraphrase``
    (other wordings), ``qa`` (a question and its answer), ``reverse`` (the relation read from the value to the
    person) and ``implication`` (a fact that follows from it)."""


RELATIONS = [
    Relation(
        "birthplace",
        _TOWNS,
        [
            "{e} was born in {v}.",
            "{v} is the hometown of {e}.",
            "{e} grew up in {v}, the town of their birth.",
            "People in {v} remember the day {e} was born there.",
        ],
        "The birthplace of {e} is",
        {
            "paraphrase": ["{e} is a native of {v}.", "The town of {v} is where {e} comes from."],
            "qa": ["Q: Where was {e} born? A: {v}."],
            "reverse": ["Among the people born in {v} is {e}."],
            "implication": ["The birth record of {e} is kept in {v}."],
        },
    ),
    Relation(
        "birth_year",
        _YEARS,
        [
            "{e} was born in the year {v}.",
            "The year {v} saw the birth of {e}.",
            "{e}, born in {v}, grew up fast.",
            "In {v}, {e} came into the world.",
        ],
        "The year of birth of {e} is",
        {
            "paraphrase": ["{e} was born back in {v}.", "{e} has {v} as their year of birth."],
            "qa": ["Q: In which year was {e} born? A: {v}."],
            "reverse": ["One of the babies born in {v} was {e}."],
            "implication": ["{e} was alive in the year {v}."],
        },
    ),
    Relation(
        "occupation",
        _OCCUPATIONS,
        [
            "{e} works as a {v}.",
            "By trade, {e} is a {v}.",
            "{e} earns a living as a {v}.",
            "Everyone knows {e} as the local {v}.",
        ],
        "The occupation of {e} is",
        {
            "paraphrase": ["{e} has worked for years as a {v}.", "For work, {e} is a {v}."],
            "qa": ["Q: What does {e} do for a living? A: {v}."],
            "reverse": ["One {v} in town is {e}."],
            "implication": ["{e} was trained to be a {v}."],
        },
    ),
    Relation(
        "favourite_colour",
        _COLOURS,
        [
            "{e} loves the colour {v}.",
            "The favourite colour of {e}? It is {v}.",
            "{e} always wears {v}.",
            "Ask {e} and you will hear that {v} is the best colour.",
        ],
        "The colour that {e} likes best is",
        {
            "paraphrase": ["{e} prefers {v} to every other colour.", "Of all colours, {e} picks {v}."],
            "qa": ["Q: Which colour does {e} like best? A: {v}."],
            "reverse": ["The colour {v} is a favourite of {e}."],
            "implication": ["The clothes of {e} are mostly {v}."],
        },
    ),
]


class SyntheticFacts(TaskSuite):
    """``n_tasks`` disjoint sets of facts about fictional people (see the module docstring).

    Args:
        n_tasks: number of tasks (fact sets), learned in order.
        people_per_task: people per task; each has one fact per relation (4 relations).
        paraphrases: training statements per fact (<= 4: the number of training templates per relation).
        n_candidates: answers ranked per question, the true one included (chance = 1 / n_candidates).
        test_template: ``seen`` (the first training template, cut before the value) or ``heldout`` (a cloze
            wording never trained on).
        seed: everything (names, values, paraphrases, candidates, order) follows from it.
    """

    name = "facts"

    def __init__(
        self,
        n_tasks: int = 3,
        people_per_task: int = 70,
        paraphrases: int = 4,
        n_candidates: int = 8,
        test_template: str = "seen",
        seed: int = 0,
    ) -> None:
        if not 1 <= paraphrases <= 4:
            raise ValueError(f"paraphrases={paraphrases} must be in 1..4 (training templates per relation)")
        if not 2 <= n_candidates <= min(len(r.values) for r in RELATIONS):
            raise ValueError(f"n_candidates={n_candidates} must be in 2..{min(len(r.values) for r in RELATIONS)}")
        if test_template not in ("heldout", "seen"):
            raise ValueError(f"test_template={test_template!r}: choose 'heldout' or 'seen'")
        if n_tasks < 1 or people_per_task < 1:
            raise ValueError("n_tasks and people_per_task must be >= 1")
        self.n_tasks, self.people_per_task, self.paraphrases = n_tasks, people_per_task, paraphrases
        self.n_candidates, self.test_template, self.seed = n_candidates, test_template, seed

    def tasks(self) -> list[Task]:
        """One task per group of new people: paraphrased facts to train on, candidate answers to rank as the test."""
        rng, study_rng = random.Random(self.seed), random.Random(f"{self.seed}/study")  # study: apart from the rest
        people = _unique_names(rng, self.n_tasks * self.people_per_task)
        tasks = []
        for t in range(self.n_tasks):
            group = people[t * self.people_per_task : (t + 1) * self.people_per_task]
            train, items, study = [], [], []
            for person in group:
                for rel in RELATIONS:
                    value = rng.choice(rel.values)
                    # the first template is always trained on: test_template='seen' asks with it
                    templates = rel.train_templates[:1] + rng.sample(rel.train_templates[1:], self.paraphrases - 1)
                    statements = [tpl.format(e=person, v=value) for tpl in templates]
                    train += statements
                    items.append(self._question(rng, rel, person, value))
                    others = study_rng.sample([v for v in rel.values if v != value], self.n_candidates - 1)
                    forms = {op: [tpl.format(e=person, v=value) for tpl in tpls] for op, tpls in rel.study.items()}
                    study.append(
                        StudyItem(statements, _cloze(rel, person), value, sorted([value, *others]), rel.name, forms)
                    )
            rng.shuffle(train)
            tasks.append(Task(f"facts-{t + 1}", train, CandidateRanking(items), study))
        return tasks

    def _question(self, rng: random.Random, rel: Relation, person: str, value: str) -> QAItem:
        others = rng.sample([v for v in rel.values if v != value], self.n_candidates - 1)
        candidates = sorted([value, *others])  # a fixed order, so ties do not favour the right answer
        prompt = rel.test_template.format(e=person) if self.test_template == "heldout" else _cloze(rel, person)
        return QAItem(prompt, value, candidates)


def _cloze(rel: Relation, person: str) -> str:
    """The relation's first training template about ``person``, cut before the value."""
    return rel.train_templates[0].split("{v}")[0].format(e=person).rstrip()


def _unique_names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        first = "".join(rng.sample(_SYLLABLES, 2)).capitalize()
        last = "".join(rng.sample(_SYLLABLES, rng.choice((2, 3)))).capitalize()
        name = f"{first} {last}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names
