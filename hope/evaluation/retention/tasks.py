"""Test sets and task suites for the sequential-task (continual-learning) harness.

A ``Task`` (``hope.continual.method``) is data: ``name``, ``train`` (texts a method learns from) and ``test`` (a
``TestSet``, which knows its metric and evaluates a model). A test set scores the model *as the method presents
it*: the method may hand over an ``EvalContext`` with tokens to prepend (in-context learning) and/or a recurrent
state to start from (test-time memory). Two test sets cover the built-in suites:

- ``CandidateRanking`` (metric ``accuracy``): a prompt and candidate answers; the answer counts as correct when
  its summed log-likelihood after the prompt is the highest (lm-eval's ``acc`` for multiple choice, with its
  binomial standard error, ``standard_error``). For tiny models this is far more robust than exact-match on
  greedy generations, which stays at 0 until a model is strong, and its chance level (1 / candidates) is known.
- ``HeldOutPerplexity`` (metric ``perplexity``): token perplexity of held-out text, in chunks of ``chunk``
  tokens; each chunk's first token is context only, so the same tokens are scored with and without a prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hope.continual.method import EvalContext, Task
from hope.evaluation import metrics
from hope.evaluation.scoring import Window, continuation_token_scores, read_context, score_windows, summed
from hope.tokenizer import Tokenizer


@dataclass
class QAItem:
    """A closed-book question: ``prompt`` is followed by one of ``candidates``; ``answer`` is the right one."""

    prompt: str
    answer: str
    candidates: list[str]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: encode ``context + continuation`` whole and cut at the length of ``context`` alone, so
    the continuation is tokenized as it would be in running text."""
    whole = tokenizer.encode(context + continuation, bos=False)
    ctx = tokenizer.encode(context, bos=False)
    return ctx, whole[len(ctx) :]


class CandidateRanking:
    """Accuracy of picking the right answer among candidates by log-likelihood (ties go to the first)."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, items: list[QAItem]) -> None:
        if not items:
            raise ValueError("CandidateRanking needs at least one item")
        self.items = items
        self.chance = sum(1 / len(item.candidates) for item in items) / len(items)

    def evaluate(self, model: nn.Module, tokenizer: Tokenizer, context: EvalContext) -> float:
        """Share of items whose right answer has the highest summed log-likelihood after context and prompt."""
        return sum(self.correct(self.candidate_scores(model, tokenizer, context))) / len(self.items)

    @torch.no_grad()
    def candidate_scores(self, model: nn.Module, tokenizer: Tokenizer, context: EvalContext) -> list[list[float]]:
        """Per item, the summed log-likelihood of each candidate after the context and the prompt."""
        prefix = _bos(tokenizer) + list(context.tokens)
        scores = []
        for item in self.items:
            pairs = [encode_pair(tokenizer, item.prompt, " " + c) for c in item.candidates]
            summed_scores = summed(
                continuation_token_scores(model, prefix + pairs[0][0], [c for _, c in pairs], context.state)
            )
            scores.append([s for s, _ in summed_scores])
        return scores

    def correct(self, scores: list[list[float]]) -> list[bool]:
        """Per item, whether its right answer has the highest of ``candidate_scores`` (ties go to the first)."""
        return [
            item.candidates[max(range(len(s)), key=s.__getitem__)] == item.answer
            for item, s in zip(self.items, scores, strict=True)
        ]

    def standard_error(self, accuracy: float) -> float:
        """Binomial standard error of an accuracy over these items, sqrt(p (1 - p) / (n - 1)) (lm-eval's)."""
        return math.sqrt(accuracy * (1 - accuracy) / max(len(self.items) - 1, 1))


class HeldOutPerplexity:
    """Token perplexity of held-out texts, at most ``max_tokens`` of them, in chunks of ``chunk`` tokens.

    ``standard_error(score)`` is the standard error of a perplexity this set returned: by the delta method,
    ``ppl * se(mean NLL)``, with se by batch means over the chunks (each chunk's predictions one batch; see
    ``hope.evaluation.metrics``); ``nll_batches(score)`` the chunks' mean NLLs, for paired comparisons of two
    evaluations. Both are kept per returned score, since the harness asks after the whole sequence.
    """

    metric = "perplexity"
    higher_is_better = False
    chance = None

    def __init__(self, texts: list[str], max_tokens: int = 4096, chunk: int = 128) -> None:
        if chunk < 2:
            raise ValueError(f"chunk={chunk} must be >= 2 (its first token is context only)")
        self.texts, self.max_tokens, self.chunk = texts, max_tokens, chunk
        self._tokens: dict[str, list[int]] = {}  # per tokenizer fingerprint: tokenized once, reused every row
        self._batches: dict[float, list[float]] = {}  # perplexity returned -> its chunks' mean NLLs

    def tokens(self, tokenizer: Tokenizer) -> list[int]:
        """The test stream ``[bos] text [eos] ...``, cut to ``max_tokens``."""
        if tokenizer.fingerprint not in self._tokens:
            stream: list[int] = []
            for ids in tokenizer.encode_batch(self.texts, bos=True, eos=True):
                stream += ids
                if len(stream) >= self.max_tokens:
                    break
            self._tokens[tokenizer.fingerprint] = stream[: self.max_tokens]
        return self._tokens[tokenizer.fingerprint]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, tokenizer: Tokenizer, context: EvalContext) -> float:
        """Token perplexity of the test stream, chunk by chunk, each after the method's context (prefix, state)."""
        stream = self.tokens(tokenizer)
        room = max(model.config.max_seq_len + 1 - self.chunk, 0)  # prefix tokens that fit in a window with a chunk
        prefix, state = read_context(model, context.tokens, room, context.state)
        nlls: list[torch.Tensor] = []
        for start in range(0, len(stream) - 1, self.chunk):
            piece = stream[start : start + self.chunk]
            if len(piece) < 2:
                break
            seq = prefix + piece
            scored = score_windows(model, seq, [Window(0, len(seq) - 1, len(piece) - 1)], state, carry=False)
            nlls.append(-scored.logprobs[-(len(piece) - 1) :].double())
        if not nlls:
            raise ValueError("HeldOutPerplexity: the test texts have fewer than 2 tokens")
        nll_N = torch.cat(nlls).numpy()
        perplexity = math.exp(float(nll_N.sum()) / len(nll_N))
        self._batches[perplexity] = [float(x) for x in metrics.batch_means(nll_N, self.chunk - 1)]
        return perplexity

    def nll_batches(self, perplexity: float) -> list[float]:
        """The chunks' mean NLLs behind a perplexity this set returned (full chunks only)."""
        if perplexity not in self._batches:
            raise KeyError(f"perplexity {perplexity} was not returned by this test set's evaluate")
        return self._batches[perplexity]

    def standard_error(self, perplexity: float) -> float | None:
        """Standard error of a perplexity this set returned (None with fewer than two chunks)."""
        nll_se = metrics.mean_standard_error(self.nll_batches(perplexity))
        return None if nll_se is None else perplexity * nll_se


def _bos(tokenizer: Tokenizer) -> list[int]:
    return [tokenizer.bos_id] if tokenizer.bos_id is not None else []


class TaskSuite:
    """A named, seeded sequence of tasks. Subclasses implement ``tasks`` (and take their options in __init__,
    so ``hope eval retention --suite NAME --suite.option value`` configures them)."""

    name = "suite"

    def tasks(self) -> list[Task]:
        """The suite's tasks in learning order; subclasses build them from their seeded options."""
        raise NotImplementedError

    def config(self) -> dict:
        """The suite's options, for the report."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
