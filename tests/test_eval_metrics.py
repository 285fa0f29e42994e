"""Metric formulas against hand-computed values (hope.evaluation.metrics)."""

import math
import random
import statistics

import numpy as np
import pytest

from hope.evaluation import metrics as M

# R[i][j]: task j after learning task i. Task 0 peaks after task 1 (0.85 > 0.8): forgetting uses the peak, BWT not.
R = [[0.80, 0.10, 0.20], [0.85, 0.90, 0.30], [0.50, 0.70, 0.95]]
B = [0.10, 0.20, 0.25]


def test_language_model_formulas():
    ll = -10 * math.log(4)  # ten tokens at probability 1/4
    assert M.token_perplexity(ll, 10) == pytest.approx(4.0)
    assert M.weighted_perplexity(ll, 5) == pytest.approx(16.0)  # the same total over 5 words
    assert M.bits_per_byte(-16 * math.log(2), 8) == pytest.approx(2.0)  # 16 bits over 8 bytes
    assert M.byte_perplexity(-16 * math.log(2), 8) == pytest.approx(4.0)  # 2 bits/byte = perplexity 4 per byte
    assert M.word_perplexity(-3 * math.log(10), 3) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        M.token_perplexity(-1.0, 0)


def test_batch_means_and_their_standard_error_match_a_plain_loop():
    rng = random.Random(0)
    values = [rng.gauss(0.0, 1.0) for _ in range(103)]
    means = [sum(values[i * 10 : (i + 1) * 10]) / 10 for i in range(10)]  # the last 3 values left out
    assert M.batch_means(values, 10) == pytest.approx(means)
    assert M.mean_standard_error(M.batch_means(values, 10)) == pytest.approx(statistics.stdev(means) / math.sqrt(10))
    assert M.mean_standard_error(M.batch_means(values[:19], 10)) is None  # one full batch: no spread
    with pytest.raises(ValueError, match="batch=0"):
        M.batch_means(values, 0)


def test_paired_log_ratio_is_the_mean_and_error_of_batch_differences():
    a, b = [2.0, 3.0, 5.0, 4.0], [1.5, 2.9, 4.0, 3.9]  # batch k of a and b: the same tokens, two evaluations
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, se = M.paired_log_ratio(a, b)
    assert mean == pytest.approx(statistics.mean(diffs))
    assert se == pytest.approx(statistics.stdev(diffs) / 2)
    assert se < M.mean_standard_error(a)  # pairing removes the hard-batch variance both share
    with pytest.raises(ValueError, match="differ in number"):
        M.paired_log_ratio(a, b[:3])


def test_batch_means_see_the_serial_correlation_that_the_iid_formula_misses():
    """AR(1) with phi 0.8 and unit innovations: the mean's standard error is 1/(1-phi)/sqrt(n) = 5/sqrt(n), three
    times the i.i.d. formula's sd/sqrt(n) (sd = 1/sqrt(1-phi^2)). Batch means of 400 recover it."""
    phi, n = 0.8, 40_000
    noise = np.random.default_rng(0).standard_normal(n)
    x = np.empty(n)
    x[0] = noise[0] / math.sqrt(1 - phi**2)  # start in the stationary distribution
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    truth = 1 / (1 - phi) / math.sqrt(n)
    assert M.mean_standard_error(M.batch_means(x, 400)) == pytest.approx(truth, rel=0.25)
    assert x.std(ddof=1) / math.sqrt(n) < 0.5 * truth


def test_perplexity_interval():
    lo, hi = M.perplexity_interval(math.log(100.0), 0.1)
    assert lo == pytest.approx(100 * math.exp(-0.196)) and hi == pytest.approx(100 * math.exp(0.196))
    assert M.perplexity_interval(1.0, None) is None


def test_counting_follows_lm_eval():
    assert M.count_words("a  b\tc") == 3
    assert M.count_words("a b c\n") == 4  # lm-eval's re.split(r"\s+") counts the empty string after the newline
    assert M.count_bytes("héllo") == 6


def test_continual_scores_hand_computed():
    assert M.average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)
    assert M.learning_accuracy(R) == pytest.approx((0.80 + 0.90 + 0.95) / 3)
    assert M.backward_transfer(R) == pytest.approx(((0.50 - 0.80) + (0.70 - 0.90)) / 2)  # -0.25
    assert M.forward_transfer(R, B) == pytest.approx(((0.10 - 0.20) + (0.30 - 0.25)) / 2)  # -0.025
    assert M.forgetting(R) == pytest.approx(((0.85 - 0.50) + (0.90 - 0.70)) / 2)  # 0.275: the peak, not R[0][0]


def test_gem_code_averages_over_all_tasks():
    """GEM's metrics.py averages BWT over T terms (the last is 0): (T-1)/T of the paper's value used here."""
    T = len(R)
    gem_code_bwt = sum(R[-1][t] - R[t][t] for t in range(T)) / T
    assert gem_code_bwt == pytest.approx(M.backward_transfer(R) * (T - 1) / T)


def test_lower_is_better_is_negated():
    ppl = [[10.0, 50.0], [20.0, 12.0]]
    assert M.average_accuracy(ppl) == pytest.approx(16.0)  # reported in perplexity itself
    assert M.backward_transfer(ppl, higher_is_better=False) == pytest.approx(-10.0)  # 10 -> 20: worse by 10
    assert M.forgetting(ppl, higher_is_better=False) == pytest.approx(10.0)
    assert M.forward_transfer(ppl, [40.0, 60.0], higher_is_better=False) == pytest.approx(10.0)  # 60 -> 50: better


def test_single_task_and_bad_shapes():
    assert M.backward_transfer([[0.7]]) == 0.0 and M.forgetting([[0.7]]) == 0.0
    assert M.forward_transfer([[0.7]], [0.1]) == 0.0
    with pytest.raises(ValueError, match="square"):
        M.backward_transfer([[0.1, 0.2]])
    with pytest.raises(ValueError, match="baseline"):
        M.forward_transfer(R, [0.1])


def test_relative_drop_smf_convention():
    assert M.relative_drop(0.40, 0.044) == pytest.approx(0.89)  # SMF: "NQ F1 drops 89%"
    assert M.relative_drop(10.0, 15.0, higher_is_better=False) == pytest.approx(0.5)  # perplexity +50%
    assert M.relative_drop(10.0, 8.0, higher_is_better=False) == pytest.approx(-0.2)  # improved: negative
    with pytest.raises(ValueError):
        M.relative_drop(0.0, 1.0)


def test_summary_keys():
    summary = M.continual_summary(R, B)
    assert set(summary) == {
        "average_accuracy",
        "learning_accuracy",
        "backward_transfer",
        "forward_transfer",
        "forgetting",
    }
