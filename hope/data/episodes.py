"""Episodes for in-context continual learning (Irie, Csordás, Schmidhuber: "Metalearning Continual Learning
Algorithms", the ACL objective): sequences of tasks learned in context, scored on every task seen so far.

An episode is one token sequence ``[bos] demos_1 queries_1 demos_2 queries_2 ... demos_T queries_T``:

- Task i is a fresh random mapping from ``items_per_task`` inputs to ``n_labels`` labels. ``kind="words"``: words
  to capital letters (`` range C``), the words drawn from the tokenizer's one-token lowercase words, so that a
  key is one token and its label the next one (associative recall); ``kind="facts"``: made-up people (two
  made-up names, several tokens) to objects under a relation drawn for the task (`` Rusa Temo owns a key``), a
  harder key. Every label is one token, so an answer is one prediction.
- ``demos_i``: ``demos_per_task`` demonstrations of task i, each item at least once, in random order.
- ``queries_i``: ``queries_per_task`` questions on each task j <= i, shuffled together (`` range ?``). The answer
  is the label of the position before ``?``; the input there is ``?``, never the answer, so a query teaches the
  model nothing: later queries on task j measure what the state kept of demos_j, not of earlier queries.
- Labels (the loss) are -100 everywhere except at query answers. ``objective="acl"`` scores every query: at step i,
  -sum_{j<=i} log p(y_j | x_j; W_{1..i}), the generalisation to T tasks of ACL's
  -[log p(y_A|x_A; W_A) + log p(y_B|x_B; W_{A,B}) + log p(y_A|x_A; W_{A,B})]. ``objective="current"`` scores only
  j = i, "learn the task just shown": the baseline without the backward-transfer terms. Both objectives see the
  same tokens; only the loss mask differs.

Everything is a pure function of ``(seed, split, index)``: episode ``index`` of ``split`` (``train``, ``val`` or
``test``) is generated on demand, offline, the same on every machine. ``hope fit --data.episodes.n_tasks 3 ...``
meta-trains any family on them (``hope.lit.datamodule``); ``hope eval in-context-retention`` reports the
accuracy matrix R[i][j] (task j's queries after tasks 1..i were shown).
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from hope.tokenizer import Tokenizer

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_NAMES = ["".join(pair) for pair in itertools.product(_SYLLABLES, repeat=2)]  # 4900 made-up names
_LETTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OBJECTS = ["key", "map", "box", "star", "shell", "file", "tree", "table", "window", "field", "list", "node", "word"]
_RELATIONS = [" owns a", " keeps a", " found a", " drew a", " lost a", " sold a", " wants a", " hid a"]
KINDS = ("words", "facts")
OBJECTIVES = ("acl", "current")


@dataclass
class EpisodeConfig:
    """Options of the in-context continual-learning episodes (``data.episodes.*``; module docstring)."""

    kind: str = "words"
    """``words`` (one-token words -> capital letters) or ``facts`` (made-up people -> objects, one relation per
    task)."""
    n_tasks: int = 3
    """Tasks T per episode, shown one after the other."""
    items_per_task: int = 4
    """Inputs (words, people) of each task's random mapping."""
    demos_per_task: int = 4
    """Demonstrations k of each task (>= items_per_task: every item is shown at least once)."""
    queries_per_task: int = 4
    """Questions on each seen task after each task's demonstrations (<= items_per_task; distinct items)."""
    n_labels: int = 4
    """Labels a task maps to (chance = 1 / n_labels); shared by all tasks."""
    objective: str = "acl"
    """Query answers in the loss: ``acl`` (every task seen so far, ACL) or ``current`` (only the task just shown)."""
    n_train: int = 100_000
    """Training episodes (drawn in a seeded, shuffled, endless order; each one generated when read)."""
    n_val: int = 64
    """Validation episodes."""
    seed: int = 0
    """Every episode is a function of (seed, split, index)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field (``data.episodes.<field>``), its value and a fix."""
        where = "data.episodes"
        if self.kind not in KINDS:
            raise ValueError(f"{where}.kind={self.kind!r} is unknown; choose one of {KINDS}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{where}.objective={self.objective!r} is unknown; choose one of {OBJECTIVES}.")
        for name in ("n_tasks", "items_per_task", "queries_per_task", "n_train", "n_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}.{name}={getattr(self, name)} must be >= 1.")
        if self.demos_per_task < self.items_per_task:
            raise ValueError(
                f"{where}.demos_per_task={self.demos_per_task} < items_per_task={self.items_per_task}: every item "
                "must be shown at least once. Raise demos_per_task or lower items_per_task."
            )
        if self.queries_per_task > self.items_per_task:
            raise ValueError(
                f"{where}.queries_per_task={self.queries_per_task} > items_per_task={self.items_per_task}; queries "
                "ask distinct items. Lower queries_per_task."
            )
        pool = _LETTERS if self.kind == "words" else _OBJECTS
        if not 2 <= self.n_labels <= len(pool):
            raise ValueError(f"{where}.n_labels={self.n_labels} must be in 2..{len(pool)} for kind={self.kind!r}.")
        if self.kind == "facts" and self.n_tasks > len(_RELATIONS):
            raise ValueError(f"{where}.n_tasks={self.n_tasks}: kind='facts' has {len(_RELATIONS)} relations.")


def _one_token_words(tokenizer: Tokenizer) -> list[int]:
    """Ids of the tokenizer's pieces that are a whole lowercase word of 3 to 8 letters after a space (``▁range``)."""
    sp = tokenizer.processor
    return [i for i in range(sp.get_piece_size()) if re.fullmatch("\u2581[a-z]{3,8}", sp.id_to_piece(i))]


class Query(NamedTuple):
    """One question of an episode: the answer is predicted at ``position`` (``labels[position]`` when scored)."""

    position: int
    task: int
    """j: the task asked about (0-based)"""
    after: int
    """i: the question comes after the demonstrations of tasks 0..i"""
    answer: int
    """index of the right label in ``EpisodeGenerator.label_ids``"""


@dataclass
class Episode:
    """One episode: ``tokens`` (model input), ``labels`` (-100 except scored answers) and every query."""

    tokens: list[int]
    labels: list[int]
    queries: list[Query]


class EpisodeGenerator:
    """Episodes of ``config`` in ``tokenizer``'s ids; ``episode(index, split)`` builds one (module docstring)."""

    def __init__(self, config: EpisodeConfig, tokenizer: Tokenizer) -> None:
        self.config, self.tokenizer = config, tokenizer
        pool = _LETTERS if config.kind == "words" else _OBJECTS
        single = [w for w in pool if len(tokenizer.encode(" " + w, bos=False)) == 1]
        if len(single) < config.n_labels:
            raise ValueError(
                f"data.episodes.n_labels={config.n_labels}, but only {len(single)} labels of kind={config.kind!r} "
                f"are one token in {tokenizer.path.name} ({single}). Lower n_labels."
            )
        self.label_words = single[: config.n_labels]
        self.words = _one_token_words(tokenizer) if config.kind == "words" else []
        if config.kind == "words" and len(self.words) < config.n_tasks * config.items_per_task:
            raise ValueError(
                f"{tokenizer.path.name} has {len(self.words)} one-token lowercase words, fewer than data.episodes."
                f"n_tasks * items_per_task = {config.n_tasks * config.items_per_task}. Lower one of them."
            )
        self.label_ids = [tokenizer.encode(" " + w, bos=False)[0] for w in self.label_words]
        self.unknown, self.newline = tokenizer.encode(" ?", bos=False), tokenizer.encode("\n", bos=False)
        self.bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        self._encoded: dict[str, list[int]] = {}

    @property
    def chance(self) -> float:
        """Accuracy of guessing: 1 / n_labels."""
        return 1 / self.config.n_labels

    @property
    def max_tokens(self) -> int:
        """An upper bound on an episode's length: every prompt as long as the longest one can be."""
        cfg = self.config
        longest = lambda texts: max(len(self.tokenizer.encode(t, bos=False)) for t in texts)
        names = 2 * longest(" " + w.capitalize() for w in _NAMES) if cfg.kind == "facts" else 0
        prompt = 1 if cfg.kind == "words" else names + longest(_RELATIONS)
        demo, query = prompt + 1 + len(self.newline), prompt + len(self.unknown) + len(self.newline)
        n_queries = cfg.queries_per_task * cfg.n_tasks * (cfg.n_tasks + 1) // 2
        return len(self.bos) + cfg.n_tasks * cfg.demos_per_task * demo + n_queries * query

    def _encode(self, text: str) -> list[int]:
        if text not in self._encoded:
            self._encoded[text] = self.tokenizer.encode(text, bos=False)
        return self._encoded[text]

    def _prompts(self, rng: random.Random) -> list[list[list[int]]]:
        """Per task, per item: the tokens before the answer (`` range`` or `` Rusa Temo owns a``)."""
        cfg = self.config
        n = cfg.n_tasks * cfg.items_per_task
        if cfg.kind == "words":
            prompts = [[w] for w in rng.sample(self.words, n)]
        else:
            first, last = rng.sample(_NAMES, n), rng.sample(_NAMES, n)
            relations = rng.sample(_RELATIONS, cfg.n_tasks)
            name = lambda w: self._encode(" " + w.capitalize())
            prompts = [
                name(a) + name(b) + self._encode(relations[i // cfg.items_per_task])
                for i, (a, b) in enumerate(zip(first, last, strict=True))
            ]
        return [prompts[t * cfg.items_per_task : (t + 1) * cfg.items_per_task] for t in range(cfg.n_tasks)]

    def episode(self, index: int, split: str = "train") -> Episode:
        """Episode ``index`` of ``split``; the same for the same (seed, split, index) everywhere."""
        cfg = self.config
        rng = random.Random(f"hope-episodes/{cfg.seed}/{split}/{index}")
        prompts = self._prompts(rng)
        answers = [[rng.randrange(cfg.n_labels) for _ in task] for task in prompts]
        tokens, labels, queries = list(self.bos), [-100] * len(self.bos), []
        for i in range(cfg.n_tasks):
            items = list(range(cfg.items_per_task))
            shown = items + [rng.randrange(cfg.items_per_task) for _ in range(cfg.demos_per_task - len(items))]
            rng.shuffle(shown)
            for item in shown:  # demonstrations: prompt, label, newline; nothing scored
                line = prompts[i][item] + [self.label_ids[answers[i][item]]] + self.newline
                tokens += line
                labels += [-100] * len(line)
            asked = [(j, item) for j in range(i + 1) for item in rng.sample(items, cfg.queries_per_task)]
            rng.shuffle(asked)
            for j, item in asked:  # queries: prompt, "?", newline; the answer is the label before "?"
                tokens += prompts[j][item]
                labels += [-100] * (len(prompts[j][item]) - 1)
                scored = cfg.objective == "acl" or j == i
                labels.append(self.label_ids[answers[j][item]] if scored else -100)
                queries.append(Query(len(tokens) - 1, j, i, answers[j][item]))
                tokens += self.unknown + self.newline
                labels += [-100] * (len(self.unknown) + len(self.newline))
        return Episode(tokens, labels, queries)


class EpisodeSet(Dataset):
    """``n`` episodes of one split as ``{"input_ids", "labels"}`` [seq_len] (padded with EOS and -100).

    Args:
        generator: makes the episodes.
        split: ``train``, ``val`` or ``test``.
        n: number of episodes.
        seq_len: length every episode is padded to; a longer episode is an error that says how to fix it.
    """

    def __init__(self, generator: EpisodeGenerator, split: str, n: int, seq_len: int) -> None:
        self.generator, self.split, self.n, self.seq_len = generator, split, n, seq_len
        eos = generator.tokenizer.eos_id
        self.pad_id = eos if eos is not None else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(f"episode {index} out of range for {self.n} episodes")
        episode = self.generator.episode(index, self.split)
        pad = self.seq_len - len(episode.tokens)
        if pad < 0:
            self.check_lengths()  # (the bound is the longest possible episode, so this raises)
        return {
            "input_ids": torch.tensor(episode.tokens + [self.pad_id] * pad),
            "labels": torch.tensor(episode.labels + [-100] * pad),
        }

    def check_lengths(self) -> None:
        """Raise now, not minutes into training, if an episode could be longer than ``seq_len``."""
        bound = self.generator.max_tokens
        if bound > self.seq_len:
            raise ValueError(
                f"data.episodes makes episodes of up to {bound} tokens, more than data.seq_len={self.seq_len}. Fix: "
                "raise data.seq_len (and the model's max_seq_len), or lower data.episodes.n_tasks, demos_per_task "
                "or queries_per_task."
            )
