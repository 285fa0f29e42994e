"""Domain sequence: T text domains learned in order, each tested by its held-out perplexity.

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

from hope.continual.method import Task
from hope.data.sources import default_corpus_files, is_validation
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
            train_texts = _read_until(train, int(self.train_tokens * 3.5), self.max_file_chars)
            test_texts = _read_until(test, int(self.test_tokens * 6), self.max_file_chars)  # HeldOutPerplexity cuts
            tasks.append(Task(domain, train_texts, HeldOutPerplexity(test_texts, self.test_tokens, self.chunk)))
        return tasks


def _read_until(paths, max_chars: int, max_file_chars: int) -> list[str]:
    """The first ``max_file_chars`` characters of each file, in order, until ``max_chars`` in all."""
    texts, total = [], 0
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")[: min(max_chars - total, max_file_chars)]
        if text:
            texts.append(text)
            total += len(text)
        if total >= max_chars:
            break
    return texts
