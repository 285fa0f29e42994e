"""Class-incremental text classification: the classes of a labelled dataset arrive in groups, one group per task.

Each task trains on "text / label" statements of its own classes only; its test asks for the label of held-out
texts of those classes, ranking *every* class name of the whole suite by log-likelihood (class-incremental: the
model is never told which group an input came from; chance = 1 / all classes). This is the setting of the
continual-learning results on CLINC150, Banking77 and DBpedia14 reported for HOPE.

Datasets: ``clinc150`` (``clinc_oos``, config ``plus``), ``banking77`` (``PolyAI/banking77``), ``dbpedia14``
(``fancyzhx/dbpedia_14``) through ``datasets`` (network or a local copy in the HF cache), or any local
``.jsonl``/``.json``/``.csv``/``.parquet`` file with a text and a label column (then a stable hash of the text
picks about 20% of each class, at least one example, for testing).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from pathlib import Path

import datasets

from hope.continual.method import Task
from hope.evaluation.retention.tasks import CandidateRanking, QAItem, TaskSuite

PRESETS = {  # name -> (hub name, config, text column, label column)
    "clinc150": ("clinc_oos", "plus", "text", "intent"),
    "banking77": ("PolyAI/banking77", None, "text", "label"),
    "dbpedia14": ("fancyzhx/dbpedia_14", None, "content", "label"),
}


class ClassIncremental(TaskSuite):
    """Groups of classes of a labelled dataset as a task sequence (see the module docstring).

    Args:
        source: ``clinc150``, ``banking77``, ``dbpedia14``, or a local labelled file.
        n_tasks: number of class groups (tasks).
        classes_per_task: classes per task, drawn at random (seeded) from the dataset's classes.
        train_per_class: training examples per class.
        test_per_class: test examples per class.
        text_field: text column of a local file (presets know theirs).
        label_field: label column of a local file (strings or integers).
        seed: class grouping and example sampling.
    """

    name = "classes"

    def __init__(
        self,
        source: str = "clinc150",
        n_tasks: int = 5,
        classes_per_task: int = 3,
        train_per_class: int = 16,
        test_per_class: int = 8,
        text_field: str = "text",
        label_field: str = "label",
        seed: int = 0,
    ) -> None:
        self.source, self.n_tasks, self.classes_per_task = source, n_tasks, classes_per_task
        self.train_per_class, self.test_per_class = train_per_class, test_per_class
        self.text_field, self.label_field, self.seed = text_field, label_field, seed

    def tasks(self) -> list[Task]:
        """``n_tasks`` groups of random classes: "text / Label" lines to train on, all-class ranking as the test."""
        train, test = self._examples()
        classes = sorted(set(train) & set(test))
        needed = self.n_tasks * self.classes_per_task
        if len(classes) < needed:
            raise ValueError(
                f"{self.source!r} has {len(classes)} classes with train and test examples; "
                f"n_tasks * classes_per_task = {needed}"
            )
        rng = random.Random(self.seed)
        chosen = rng.sample(classes, needed)
        names = sorted(chosen)  # every task's questions rank all classes of the suite
        tasks = []
        for t in range(self.n_tasks):
            group = chosen[t * self.classes_per_task : (t + 1) * self.classes_per_task]
            lines, items = [], []
            for label in group:
                lines += [f"{text}\nLabel: {label}" for text in _sample(rng, train[label], self.train_per_class)]
                items += [
                    QAItem(f"{text}\nLabel:", label, names) for text in _sample(rng, test[label], self.test_per_class)
                ]
            rng.shuffle(lines)
            tasks.append(Task(f"classes-{t + 1}", lines, CandidateRanking(items)))
        return tasks

    def _examples(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """``(train, test)``: texts per readable class name."""
        if self.source in PRESETS:
            return self._hub_examples(*PRESETS[self.source])
        path = Path(self.source).expanduser()
        if not path.is_file():
            raise ValueError(f"source={self.source!r}: not a preset ({sorted(PRESETS)}) and not a file")
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
        if builder is None:
            raise ValueError(f"source={self.source!r}: use a .jsonl, .json, .csv or .parquet file")
        rows = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)  # no cache
        per_class = defaultdict(list)
        for row in rows:
            per_class[_readable(row[self.label_field])].append(str(row[self.text_field]))
        train, test = {}, {}
        for label, texts in per_class.items():
            # ~20% of each class by a stable hash of the text, at least one example on each side
            order = sorted(texts, key=lambda text: _hash_fraction(f"{label}/{text}"))
            n_test = min(max(1, round(0.2 * len(order))), len(order) - 1)
            test[label], train[label] = order[:n_test], order[n_test:]
        return train, test

    def _hub_examples(self, name: str, config: str | None, text: str, label: str):
        out = []
        for split in ("train", "test"):
            ds = datasets.load_dataset(name, config, split=split)
            names = ds.features[label].names if hasattr(ds.features[label], "names") else None
            per_class = defaultdict(list)
            for row in ds:
                value = names[row[label]] if names else row[label]
                per_class[_readable(value)].append(str(row[text]))
            out.append(per_class)
        return out[0], out[1]


def _readable(label) -> str:
    """``card_arrival`` -> ``card arrival``: label names read as words, which a language model can score."""
    return str(label).replace("_", " ").strip()


def _sample(rng: random.Random, texts: list[str], n: int) -> list[str]:
    return rng.sample(texts, min(n, len(texts)))


def _hash_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
