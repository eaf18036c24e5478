"""The delayed-ground-truth accuracy trigger (serve_app/sequential.py), checked as it will be used:
after every label. Seeded simulations of many runs at once (arrays of cumulative counts): false
rollbacks of an equally good candidate stay under alpha, a clearly worse one is caught, and a
fixed-sample z-test repeated after every label is shown to exceed alpha. No Ray."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest

from serve_app.sequential import AccuracyMonitor, _lgamma, log_e_value

ALPHA, MARGIN, MIN_LABELS = 0.05, 0.02, 50
RUNS, LABELS_EACH = 200, 3000  # the horizon: labels per variant in each simulated run
Z_ONE_SIDED = 1.6448536269514722  # the standard normal's 95% quantile


@lru_cache(maxsize=None)
def simulate(stable_accuracy: float, candidate_accuracy: float, seed: int):
    """RUNS experiments whose labels arrive one at a time, alternating stable then candidate. Column
    j holds the cumulative counts after j + 1 labels: (stable correct, stable n, candidate correct,
    candidate n), the n shared by every run."""
    rng = np.random.default_rng(seed)
    stable = np.cumsum(rng.random((RUNS, LABELS_EACH)) < stable_accuracy, axis=1)
    candidate = np.cumsum(rng.random((RUNS, LABELS_EACH)) < candidate_accuracy, axis=1)
    each = np.arange(1, LABELS_EACH + 1)
    stable_correct = np.repeat(stable, 2, axis=1)  # a stable label, then the candidate's
    candidate_correct = np.repeat(np.hstack([np.zeros((RUNS, 1), int), candidate]), 2, axis=1)[:, 1:-1]
    stable_n, candidate_n = np.repeat(each, 2), np.repeat(each, 2) - np.tile([1, 0], LABELS_EACH)
    return stable_correct, stable_n, candidate_correct, candidate_n


def first_rollback(stable_accuracy: float, candidate_accuracy: float, seed: int):
    """Per run: whether the monitor ever fired within the horizon, and the labels per variant then."""
    stable_correct, stable_n, candidate_correct, candidate_n = simulate(stable_accuracy, candidate_accuracy, seed)
    statistic = log_e_value(stable_correct, stable_n, candidate_correct, candidate_n, MARGIN)
    fires = (statistic >= math.log(1 / ALPHA)) & (np.minimum(stable_n, candidate_n) >= MIN_LABELS)
    fired = fires.any(axis=1)
    return fired, stable_n[fires.argmax(axis=1)][fired]


def naive_z_rejections(stable_accuracy: float, candidate_accuracy: float, seed: int) -> np.ndarray:
    """A one-sided fixed-sample z-test of the same hypotheses, applied after every label: per label
    position, whether it rejects (no correction for the repeated looks)."""
    stable_correct, stable_n, candidate_correct, candidate_n = simulate(stable_accuracy, candidate_accuracy, seed)
    p_s, p_c = stable_correct / stable_n, candidate_correct / np.maximum(candidate_n, 1)
    error = np.sqrt(p_s * (1 - p_s) / stable_n + p_c * (1 - p_c) / np.maximum(candidate_n, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p_s - p_c - MARGIN) / error
    return (z > Z_ONE_SIDED) & (np.minimum(stable_n, candidate_n) >= MIN_LABELS)


@pytest.mark.parametrize("stable_accuracy, candidate_accuracy, case", [
    (0.80, 0.80, "equally good"),
    (0.80, 0.80 - MARGIN, "worse by exactly the margin (the hardest case H0 allows)"),
])
def test_false_rollbacks_stay_under_alpha_checked_after_every_label(stable_accuracy, candidate_accuracy, case):
    fired, _ = first_rollback(stable_accuracy, candidate_accuracy, seed=1)
    print(f"\n{case}: false rollbacks in {fired.mean():.1%} of {RUNS} runs, checked after each of "
          f"{2 * LABELS_EACH} labels (alpha {ALPHA})")
    assert fired.mean() <= ALPHA + 0.02


def test_a_clearly_worse_candidate_is_caught():
    fired, labels = first_rollback(0.80, 0.70, seed=2)
    median, p90 = np.percentile(labels, [50, 90])
    print(f"\n0.80 vs 0.70, margin {MARGIN}: detected in {fired.mean():.1%} of {RUNS} runs within "
          f"{LABELS_EACH} labels per variant; labels per variant to detection: median {median:.0f}, "
          f"90th percentile {p90:.0f}")
    assert fired.mean() >= 0.95
    assert labels.min() >= MIN_LABELS


def test_a_fixed_sample_z_test_repeated_after_every_label_exceeds_alpha():
    rejects = naive_z_rejections(0.80, 0.80 - MARGIN, seed=1)
    repeated, once = rejects.any(axis=1).mean(), rejects[:, -1].mean()
    fired, _ = first_rollback(0.80, 0.80 - MARGIN, seed=1)  # the same runs
    print(f"\nz-test at level {ALPHA}: false rollbacks {once:.1%} looking once at the horizon, {repeated:.1%} "
          f"looking after every label; the sequential monitor {fired.mean():.1%} on the same runs")
    assert repeated > ALPHA + 0.1
    assert once <= ALPHA + 0.05


def test_the_monitor_fires_where_the_vectorised_statistic_does():
    stable_correct, stable_n, candidate_correct, candidate_n = simulate(0.80, 0.70, seed=2)
    fired, labels = first_rollback(0.80, 0.70, seed=2)
    run = int(np.flatnonzero(fired)[labels.argmin()])  # the quickest detection: fewest scalar calls
    monitor = AccuracyMonitor(ALPHA, MARGIN, MIN_LABELS)
    for j in range(stable_n.size):
        verdict = monitor.update(int(stable_correct[run, j]), int(stable_n[j]),
                                 int(candidate_correct[run, j]), int(candidate_n[j]))
        if verdict.rollback:
            break
    assert verdict.rollback and stable_n[j] == labels.min()
    assert verdict.statistic >= verdict.threshold == pytest.approx(math.log(1 / ALPHA))
    assert "below the stable" in verdict.reason
    latched = monitor.update(int(stable_correct[run, j]), int(stable_n[j]) + 500,
                             int(candidate_correct[run, j]) + 500, int(candidate_n[j]) + 500)
    assert latched.rollback and latched.statistic < latched.threshold  # later evidence does not undo it
    monitor.reset()
    assert not monitor.update(10, 10, 0, 10).rollback


def test_the_e_value_has_expectation_at_most_one_under_the_null():
    """Exactly, over every outcome of 30 labels per variant at a null point: E[E] <= 1 is the
    property Ville's inequality turns into the time-uniform guarantee."""
    n, p_s, p_c = 30, 0.8, 0.8 - MARGIN
    k = np.arange(n + 1)
    log_binomial = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    pmf_s = np.exp(log_binomial + k * math.log(p_s) + (n - k) * math.log(1 - p_s))
    pmf_c = np.exp(log_binomial + k * math.log(p_c) + (n - k) * math.log(1 - p_c))
    e_values = np.exp(log_e_value(k[:, None], n, k[None, :], n, MARGIN))
    assert 0 < float(pmf_s @ e_values @ pmf_c) <= 1


def test_the_null_maximum_is_found():
    a, n_s, b, n_c = 800, 1000, 700, 1000
    p = np.linspace(MARGIN + 1e-9, 1 - 1e-9, 400_001)
    brute = (a * np.log(p) + (n_s - a) * np.log1p(-p) + b * np.log(p - MARGIN) + (n_c - b) * np.log1p(MARGIN - p)).max()
    mixture = (math.lgamma(a + 1) + math.lgamma(n_s - a + 1) - math.lgamma(n_s + 2)
               + math.lgamma(b + 1) + math.lgamma(n_c - b + 1) - math.lgamma(n_c + 2))
    assert float(log_e_value(a, n_s, b, n_c, MARGIN)) == pytest.approx(mixture - brute, abs=1e-6)
    # Estimates inside H0, or a variant without labels: the mixture never beats the best null fit.
    assert float(log_e_value(800, 1000, 790, 1000, MARGIN)) <= 0
    assert float(log_e_value(0, 0, 0, 40, MARGIN)) <= 0 and float(log_e_value(40, 40, 0, 0, MARGIN)) <= 0
    assert np.isfinite(log_e_value(40, 40, 0, 40, 0.0)) and float(log_e_value(40, 40, 0, 40, 0.0)) > 20


def test_lgamma_matches_the_standard_library():
    x = np.concatenate([np.arange(1.0, 3000.0), [1.5, 2.25, 1e5 + 0.5, 1e7, 3e9]])
    expected = np.array([math.lgamma(v) for v in x])
    assert np.allclose(_lgamma(x), expected, rtol=1e-12, atol=1e-9)


def test_waits_for_labels_and_refuses_bad_counts():
    monitor = AccuracyMonitor(ALPHA, MARGIN, min_labels=100)
    verdict = monitor.update(99, 99, 0, 99)  # overwhelming, but too few labels
    assert not verdict.rollback and verdict.statistic > verdict.threshold and "waiting" in verdict.reason
    assert monitor.update(100, 100, 0, 100).rollback
    monitor = AccuracyMonitor(ALPHA, MARGIN, 10)
    monitor.update(5, 20, 5, 20)
    with pytest.raises(ValueError, match="cumulative"):  # windowed counts would forget evidence
        monitor.update(5, 19, 5, 20)
    assert not monitor.update(4, 20, 5, 20).rollback  # a relabel corrects an outcome: n stays, correct moves
    with pytest.raises(ValueError, match="more correct"):
        AccuracyMonitor().update(5, 4, 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        AccuracyMonitor().update(-1, 4, 0, 0)
    for bad in ({"alpha": 0}, {"alpha": 1.5}, {"margin": -0.1}, {"min_labels": -1}):
        with pytest.raises(ValueError):
            AccuracyMonitor(**bad)
