"""Domain sequences: T text domains learned in order, each tested by its held-out perplexity.

``DomainSequence`` takes packages of the default corpus; ``LocalDomains`` takes your own folders or files of text
(``--suite LocalDomains --suite.paths '[dir_a, dir_b, ...]'``), described at the class.

The domains are packages of the default corpus (the Python standard library): ``tkinter``, ``email``,
``asyncio``, ... Their files split three ways by a stable hash of the path: the default corpus's validation
files (``is_validation(path, 0.01)``, the general-ability set of ``hope eval retention``) are never used, about
``test_fraction`` of the rest are the domain's test split, the others its training split. Each split takes the
beginning of its files, in a seeded order, up to a token budget (``train_tokens``, ``test_tokens``), so the
suite stays small and still samples many files.

A model pretrained on the default corpus has seen most of these training files (only its validation files are
held out), so on such a model the suite measures re-specialisation and interference between code domains rather
than learning something new. Held-out perplexity differences between domains are still large (``tkinter`` GUI
code and ``email`` parsing read very differently) and forgetting shows as rising perplexity on earlier domains.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from hope.continual.method import Task
from hope.data.sources import default_corpus_files, is_validation, iter_documents
from hope.evaluation.retention.tasks import HeldOutPerplexity, TaskSuite

DEFAULT_DOMAINS = ("tkinter", "email", "asyncio", "xml", "multiprocessing", "unittest", "ctypes", "importlib")
GENERAL_VAL_FRACTION = 0.01


class DomainSequence(TaskSuite):
    """Packages of the default corpus as a sequence of language-modelling domains (see the module docstring).

    Args:
        domains: package names (top-level folders of the standard library); ``None``: the first ``n_tasks`` of
            ``tkinter, email, asyncio, xml, multiprocessing, unittest, ctypes, importlib``.
        n_tasks: number of domains when ``domains`` is not given.
        train_tokens: approximate training budget per domain (characters / 3.5, cut on file boundaries).
        test_tokens: test tokens per domain (``HeldOutPerplexity.max_tokens``).
        test_fraction: share of a domain's files held out for testing (at least one file).
        chunk: tokens per perplexity chunk (``HeldOutPerplexity.chunk``).
        max_file_chars: at most this many characters from each file (files are taken in a seeded order), so
            both splits sample many files of the package.
    """

    name = "domains"

    def __init__(
        self,
        domains: list[str] | None = None,
        n_tasks: int = 3,
        train_tokens: int = 16384,
        test_tokens: int = 2048,
        test_fraction: float = 0.2,
        chunk: int = 128,
        max_file_chars: int = 6000,
    ) -> None:
        if domains is None:
            if not 1 <= n_tasks <= len(DEFAULT_DOMAINS):
                raise ValueError(f"n_tasks={n_tasks} must be in 1..{len(DEFAULT_DOMAINS)}, or list --suite.domains")
            domains = list(DEFAULT_DOMAINS[:n_tasks])
        self.domains, self.train_tokens, self.test_tokens = list(domains), train_tokens, test_tokens
        self.test_fraction, self.chunk, self.max_file_chars = test_fraction, chunk, max_file_chars

    def tasks(self) -> list[Task]:
        """One task per domain: the start of its training files to learn, perplexity on its held-out files as test."""
        files = default_corpus_files()
        known = sorted({rel.split("/")[0] for rel, _ in files if "/" in rel})
        tasks = []
        for domain in self.domains:
            if domain not in known:
                raise ValueError(f"domain {domain!r} is not a package of the default corpus; choose from {known}")
            paths = [
                (rel, p)
                for rel, p in files
                if rel.startswith(domain + "/") and not is_validation(rel, GENERAL_VAL_FRACTION)
            ]
            test = [p for rel, p in paths if is_validation("domain-test:" + rel, self.test_fraction)]
            test = test or [paths[-1][1]]
            train = [p for _, p in paths if p not in test]
            if not train:
                raise ValueError(f"domain {domain!r} has too few files for a train/test split")
            # Many files, a piece of each, so a budget is not spent on the first (often huge) file of a package.
            random.Random(f"{domain}/train").shuffle(train)
            random.Random(f"{domain}/test").shuffle(test)
            tasks.append(self._task(domain, (_read(p) for p in train), (_read(p) for p in test)))
        return tasks

    def _task(self, name: str, train: Iterable[str], test: Iterable[str]) -> Task:
        """A task from train and test texts in their (seeded) order: the budgets taken from the front."""
        train_texts = _take(train, int(self.train_tokens * 3.5), self.max_file_chars)
        test_texts = _take(test, int(self.test_tokens * 6), self.max_file_chars)  # HeldOutPerplexity cuts
        if not train_texts or not test_texts:
            raise ValueError(f"domain {name!r} has no text on its {'train' if not train_texts else 'test'} side")
        return Task(name, train_texts, HeldOutPerplexity(test_texts, self.test_tokens, self.chunk))


def _read(path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _take(texts: Iterable[str], max_chars: int, max_file_chars: int) -> list[str]:
    """The first ``max_file_chars`` characters of each text, in order, until ``max_chars`` in all (``texts`` is
    consumed lazily: files past the budget are never read)."""
    taken, total = [], 0
    for text in texts:
        text = text[: min(max_chars - total, max_file_chars)]
        if text:
            taken.append(text)
            total += len(text)
        if total >= max_chars:
            break
    return taken


class LocalDomains(DomainSequence):
    """Your own folders or files of text as a domain sequence, each domain tested by its held-out perplexity.

    Each entry of ``paths`` is one domain (a task), learned in order, with the budgets of ``DomainSequence``.

    An entry is a folder or a file of text (anything ``data.source`` reads: ``.txt``/``.md`` files, one document
    each; ``.jsonl``/``.json``/``.parquet`` rows from ``text_field``), split into train and test by a stable hash of
    each document's text (about ``test_fraction`` of the documents are tested; at least one each side); a domain of
    a single document is cut into pieces of ``max_file_chars`` at line ends first. An entry can also be a pair
    ``[train, test]`` of such paths, used as given. Both sides are taken in a seeded order up to their budgets.

    Args:
        paths: one entry per domain, in learning order: a path, or a ``[train_path, test_path]`` pair.
        names: task names (default: each entry's folder or file name; a pair's train path's).
        train_tokens: approximate training budget per domain (characters / 3.5, cut on document boundaries).
        test_tokens: test tokens per domain (``HeldOutPerplexity.max_tokens``).
        test_fraction: share of a domain's documents held out for testing (hash split).
        chunk: tokens per perplexity chunk (``HeldOutPerplexity.chunk``).
        max_file_chars: at most this many characters from each document.
        text_field: column with the text in json/jsonl/parquet files.
    """

    name = "local"

    def __init__(
        self,
        paths: list[str | tuple[str, str]],
        names: list[str] | None = None,
        train_tokens: int = 16384,
        test_tokens: int = 2048,
        test_fraction: float = 0.2,
        chunk: int = 128,
        max_file_chars: int = 6000,
        text_field: str = "text",
    ) -> None:
        if not paths or (names is not None and len(names) != len(paths)):
            raise ValueError(f"LocalDomains needs paths (got {paths!r}) and, if given, one name per path")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
        names = names or _unique([Path(p if isinstance(p, str) else p[0]).stem for p in paths])
        super().__init__(names, len(paths), train_tokens, test_tokens, test_fraction, chunk, max_file_chars)
        self.paths, self.text_field = [p if isinstance(p, str) else list(p) for p in paths], text_field

    def tasks(self) -> list[Task]:
        """One task per entry: its train side to learn, perplexity on its test side."""
        tasks = []
        for name, entry in zip(self.domains, self.paths, strict=True):
            if isinstance(entry, str):
                train, test = self._split(name, self._documents(entry))
            else:
                train, test = (self._documents(side) for side in entry)
            random.Random(f"{name}/train").shuffle(train)
            random.Random(f"{name}/test").shuffle(test)
            tasks.append(self._task(name, train, test))
        return tasks

    def _documents(self, path: str) -> list[str]:
        """The non-empty documents at ``path`` (a clear error if it does not exist or holds none)."""
        if not Path(path).expanduser().exists():
            raise ValueError(f"--suite.paths: {path!r} does not exist")
        docs = [text for _, text in iter_documents(path, self.text_field, field="--suite.paths") if text.strip()]
        if not docs:
            raise ValueError(f"--suite.paths: {path!r} holds no text")
        return docs

    def _split(self, name: str, docs: list[str]) -> tuple[list[str], list[str]]:
        """(train, test) documents by a stable hash of their text; one document is cut into pieces first."""
        if len(docs) == 1:
            docs = _pieces(docs[0], self.max_file_chars)
        if len(docs) < 2:
            raise ValueError(f"domain {name!r} is too short to split into train and test; give a [train, test] pair")
        tested = [is_validation(f"local-test:{d}", self.test_fraction) for d in docs]
        tested[-1] = tested[-1] or not any(tested)  # at least one document on each side
        tested[0] = tested[0] and not all(tested)
        return [d for d, t in zip(docs, tested, strict=True) if not t], [
            d for d, t in zip(docs, tested, strict=True) if t
        ]


def _pieces(text: str, size: int) -> list[str]:
    """``text`` cut at line ends into pieces of at most ``size`` characters (a longer line is a piece of its own)."""
    pieces, current = [], ""
    for line in text.splitlines(keepends=True):
        if current and len(current) + len(line) > size:
            pieces.append(current)
            current = ""
        current += line
    return [*pieces, current] if current else pieces


def _unique(names: list[str]) -> list[str]:
    """Names made unique with ``-2``, ``-3``, ... suffixes."""
    out: list[str] = []
    for name in names:
        candidate, k = name, 2
        while candidate in out:
            candidate, k = f"{name}-{k}", k + 1
        out.append(candidate)
    return out
