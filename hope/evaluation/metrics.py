"""Metric formulas: language-modelling perplexities and continual-learning scores from an accuracy matrix.

Language modelling (lm-evaluation-harness definitions, ``lm_eval/api/metrics.py`` and the ``wikitext`` task):

- ``weighted_perplexity(ll, units) = exp(-sum(ll) / sum(units))``: token, word and byte perplexity are this with
  tokens, words or UTF-8 bytes as the unit.
- ``bits_per_byte(ll, n_bytes) = -sum(ll) / (sum(n_bytes) * ln 2)``.
- Words are counted as lm-eval's ``wikitext`` counts them: ``len(re.split(r"\\s+", text))`` on the original text.

``ll`` is a natural-log likelihood (a negative number). Token perplexity divides by the number of *scored*
tokens; bits per byte and word perplexity divide the same total by the bytes or words of the text, which makes
them comparable across tokenizers.

Spread (not in lm-eval, which reports none for perplexity): the per-token negative log-likelihoods of a text are
serially correlated (a hard passage is hard for many tokens), so the i.i.d. formula ``sd / sqrt(n)`` understates
the error of their mean. ``batch_means`` cuts the series into consecutive batches (non-overlapping batch means,
Flegal & Jones 2010): with batches much longer than the correlation length their means are nearly independent, and
``mean_standard_error`` of them is the error of the series' mean. A perplexity's interval is
``exp(nll ± 1.96 se)``; its standard error by the delta method ``ppl * se``. Two evaluations of the same text are
compared by ``paired_log_ratio`` on their batch means.

Continual learning. ``R[i][j]`` is the score on task ``j`` after learning tasks ``0..i`` (T x T, row ``i`` =
after task ``i``), ``b[j]`` the score of the model before it learned anything (GEM uses a randomly initialised
model; we start from a pretrained checkpoint, so its starting score is the reference). With T tasks:

- ``average_accuracy = mean_j R[T-1][j]`` (GEM "ACC": the final row).
- ``learning_accuracy = mean_j R[j][j]`` (how well each task is learned right after learning it).
- ``backward_transfer = 1/(T-1) * sum_{j<T-1} (R[T-1][j] - R[j][j])`` (GEM paper, Lopez-Paz & Ranzato 2017,
  Eq. 3). Negative means forgetting. GEM's code averages over all T tasks (the last term is 0), i.e. it reports
  (T-1)/T of this value.
- ``forward_transfer = 1/(T-1) * sum_{j>=1} (R[j-1][j] - b[j])`` (GEM paper): how much learning earlier tasks
  helps a task before it is learned. GEM's code again averages over T (with a 0 for task 0).
- ``forgetting = 1/(T-1) * sum_{j<T-1} (max_{j<=l<=T-2} R[l][j] - R[T-1][j])`` (Chaudhry et al. 2018, as in
  Avalanche's stream forgetting): the best score a task had at any step after it was learned and before the last,
  minus its final score, averaged over every task except the last. Avalanche's per-experience ``forgetting``
  (score right after learning minus last score) averages to ``-backward_transfer``.

Scores whose lower values are better (perplexity) are negated before these formulas (``higher_is_better=False``),
so in every case a negative BWT and a positive forgetting mean the model got worse, in the metric's own units.

Learning efficiency (the ladder, ``hope.finetune.ladder``): a task's ``target_score`` is the score ``fraction`` of the
way from its score before learning to a reference score (e.g. naive finetuning's right after learning it), in log
units for perplexity; ``steps_to_target`` is the number of training steps at the first point of the task's learning
curve, ``(steps, score)`` pairs, that reaches the target (None if none does).

General-ability drop (SMF's "NQ F1 drop"; Lin et al. 2025): ``relative_drop = (before - after) / before`` for a
higher-is-better metric; for a lower-is-better one (perplexity) the analogous relative *increase*
``(after - before) / before``. Positive means worse in both cases; 0.89 is SMF's "drops 89%".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

LN2 = math.log(2)


# -- language modelling ----------------------------------------------------------------------------------------
def weighted_perplexity(loglikelihood: float, units: float) -> float:
    """``exp(-sum(ll) / sum(units))``: perplexity per token, word or byte (lm-eval ``weighted_perplexity``)."""
    if units <= 0:
        raise ValueError(f"perplexity needs a positive number of units, got {units}")
    return math.exp(-loglikelihood / units)


def token_perplexity(loglikelihood: float, n_tokens: int) -> float:
    """Perplexity per scored token: ``exp(mean negative log-likelihood)``."""
    return weighted_perplexity(loglikelihood, n_tokens)


def word_perplexity(loglikelihood: float, n_words: int) -> float:
    """Perplexity per word (lm-eval ``word_perplexity``); see ``count_words``."""
    return weighted_perplexity(loglikelihood, n_words)


def byte_perplexity(loglikelihood: float, n_bytes: int) -> float:
    """Perplexity per UTF-8 byte (lm-eval ``byte_perplexity``)."""
    return weighted_perplexity(loglikelihood, n_bytes)


def bits_per_byte(loglikelihood: float, n_bytes: int) -> float:
    """``-sum(ll) / (n_bytes * ln 2)`` (lm-eval ``bits_per_byte``): bits needed to encode each byte of the text."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs a positive number of bytes, got {n_bytes}")
    return -loglikelihood / (n_bytes * LN2)


def count_words(text: str) -> int:
    """Words as lm-eval's ``wikitext`` task counts them: ``len(re.split(r"\\s+", text))``.

    Leading or trailing whitespace adds an empty "word", exactly as in lm-eval, so numbers stay comparable.
    """
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (the denominator of bits per byte and byte perplexity)."""
    return len(text.encode("utf-8"))


def batch_means(values: Sequence[float] | np.ndarray, batch: int) -> np.ndarray:
    """Means of consecutive ``batch``-value batches of ``values`` (a last partial batch left out)."""
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    n_batches = len(values) // batch
    kept = np.asarray(values[: n_batches * batch], dtype=np.float64)
    return kept.reshape(n_batches, batch).mean(axis=1)  # [n_batches]


def mean_standard_error(samples: Sequence[float] | np.ndarray) -> float | None:
    """``sd / sqrt(n)`` of nearly independent samples (e.g. batch means); None with fewer than two (no spread)."""
    if len(samples) < 2:
        return None
    return float(np.std(np.asarray(samples, dtype=np.float64), ddof=1) / math.sqrt(len(samples)))


def paired_log_ratio(nll_batches_a: Sequence[float], nll_batches_b: Sequence[float]) -> tuple[float, float | None]:
    """``log(ppl_a / ppl_b)`` and its standard error from the batch means of two evaluations of the *same* text
    (batch k of both covers the same tokens): the mean and the standard error of the per-batch differences. Pairing
    removes what makes one passage hard for both, which dominates an unpaired error."""
    if len(nll_batches_a) != len(nll_batches_b):
        raise ValueError(f"paired batches differ in number: {len(nll_batches_a)} vs {len(nll_batches_b)}")
    diff = np.asarray(nll_batches_a, dtype=np.float64) - np.asarray(nll_batches_b, dtype=np.float64)
    return float(diff.mean()), mean_standard_error(diff)


def perplexity_interval(nll: float, nll_standard_error: float | None, z: float = 1.96) -> list[float] | None:
    """``[exp(nll - z se), exp(nll + z se)]``: the perplexity's 95 % interval (z = 1.96) from its mean NLL's error."""
    if nll_standard_error is None:
        return None
    return [math.exp(nll - z * nll_standard_error), math.exp(nll + z * nll_standard_error)]


# -- continual learning ----------------------------------------------------------------------------------------
def _scores(R: Sequence[Sequence[float]], higher_is_better: bool) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square T x T matrix (row i = after task i), got shape {R.shape}")
    return R if higher_is_better else -R


def average_accuracy(R) -> float:
    """Mean final score over all tasks, ``mean_j R[T-1][j]`` (in the metric's units, never negated)."""
    return float(np.mean(np.asarray(R, dtype=np.float64)[-1]))


def learning_accuracy(R) -> float:
    """Mean score on each task right after learning it, ``mean_j R[j][j]``."""
    return float(np.mean(np.diag(np.asarray(R, dtype=np.float64))))


def backward_transfer(R, higher_is_better: bool = True) -> float:
    """GEM BWT: ``mean_{j<T-1} (R[T-1][j] - R[j][j])``; negative = forgetting; 0 for a single task."""
    S = _scores(R, higher_is_better)
    T = len(S)
    return 0.0 if T < 2 else float(np.mean(S[-1, :-1] - np.diag(S)[:-1]))


def forward_transfer(R, baseline, higher_is_better: bool = True) -> float:
    """GEM FWT: ``mean_{j>=1} (R[j-1][j] - b[j])``; 0 for a single task."""
    S = _scores(R, higher_is_better)
    b = np.asarray(baseline, dtype=np.float64) * (1 if higher_is_better else -1)
    T = len(S)
    if b.shape != (T,):
        raise ValueError(f"baseline must have one score per task ({T}), got shape {b.shape}")
    return 0.0 if T < 2 else float(np.mean([S[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting(R, higher_is_better: bool = True) -> float:
    """``mean_{j<T-1} (max_{j<=l<=T-2} R[l][j] - R[T-1][j])``: best score after learning minus final score."""
    S = _scores(R, higher_is_better)
    T = len(S)
    if T < 2:
        return 0.0
    return float(np.mean([S[j : T - 1, j].max() - S[-1, j] for j in range(T - 1)]))


def target_score(
    before: float, reference: float, fraction: float, higher_is_better: bool = True, log_scale: bool = False
) -> float | None:
    """The score ``fraction`` of the way from ``before`` to ``reference`` (geometrically if ``log_scale``); None if
    ``reference`` is no better than ``before`` (there is no gain to reach a share of)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    if (reference <= before) if higher_is_better else (reference >= before):
        return None
    if log_scale:
        return math.exp(math.log(before) + fraction * (math.log(reference) - math.log(before)))
    return before + fraction * (reference - before)


def steps_to_target(curve: Sequence[tuple[int, float]], target: float | None, higher_is_better: bool = True):
    """Steps of the first ``(steps, score)`` point of ``curve`` whose score reaches ``target``; None if none does
    (or there is no target)."""
    if target is None:
        return None
    return next((s for s, v in curve if (v >= target if higher_is_better else v <= target)), None)


def relative_drop(before: float, after: float, higher_is_better: bool = True) -> float:
    """SMF-style relative drop of a held-out metric; positive = worse.

    ``(before - after) / before`` if higher is better (F1, accuracy), ``(after - before) / before`` otherwise
    (perplexity: the relative increase).
    """
    if before == 0:
        raise ValueError("relative drop is undefined when the metric before learning is 0")
    return (before - after) / before if higher_is_better else (after - before) / before


def continual_summary(R, baseline, higher_is_better: bool = True) -> dict[str, float]:
    """All continual-learning scores of one run, keyed by name."""
    return {
        "average_accuracy": average_accuracy(R),
        "learning_accuracy": learning_accuracy(R),
        "backward_transfer": backward_transfer(R, higher_is_better),
        "forward_transfer": forward_transfer(R, baseline, higher_is_better),
        "forgetting": forgetting(R, higher_is_better),
    }
