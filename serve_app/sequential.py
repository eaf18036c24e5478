"""An accuracy trigger for delayed ground truth that stays valid when it is checked all the time.

True labels arrive long after the predictions, a few at a time, and the trigger is checked every
second. Each labelled prediction is a Bernoulli outcome: the variant was right (1) or wrong (0).
With a stable accuracy p_s and a candidate accuracy p_c, the hypotheses are

    H0: p_c >= p_s - margin   (the candidate is fine: keep it)
    H1: p_c <  p_s - margin   (the candidate is worse by more than the margin: roll back)

The statistic is a likelihood-ratio e-process (the sequential form of "universal inference"):
Wasserman, Ramdas & Balakrishnan, "Universal inference", PNAS 117(29):16880-16890 (2020), with
the Bayes-mixture numerator of Robbins, "Statistical methods related to the law of the iterated
logarithm", Ann. Math. Statist. 41(5) (1970). With a of n_s stable labels correct and b of n_c
candidate labels correct, the likelihood of the labels, in whatever order they arrived, is

    L(p_s, p_c) = p_s^a (1 - p_s)^(n_s - a) * p_c^b (1 - p_c)^(n_c - b)

(which variant's label comes next cancels from every ratio below, so cumulative counts suffice).
Mixing it over independent uniform priors gives the numerator in closed form,

    Lbar = B(a + 1, n_s - a + 1) * B(b + 1, n_c - b + 1),      E = Lbar / sup_{H0} L,

and the trigger fires once log E >= log(1 / alpha).

Why it stays valid under continuous monitoring: for the true (p_s, p_c), Lbar / L(p_s, p_c) is
a nonnegative martingale that starts at 1 (each new label multiplies it by the mixture's
predictive probability of that label over the truth's, whose expectation is 1). If the truth
lies in H0, E is at most that martingale, since the denominator is a supremum over a set that
contains the truth. Ville's inequality (1939) bounds the chance that such a martingale EVER
reaches 1/alpha by alpha, so P(log E crosses log(1/alpha) at any time) <= alpha: checking after
every label, every second, or stopping whenever is all covered. A fixed-sample test controls
alpha at one pre-planned look only; repeated at every label its errors add up (and, by the law of
the iterated logarithm, a fixed-level test repeated forever rejects with probability 1 when the
candidate is worse by exactly the margin, a case H0 allows).

The price of being valid at every look: the mixture pays about (1/2) log n nats per variant
against the best fit, so evidence takes longer to reach the threshold than a single fixed-sample
test would, and the false-alarm rate in practice sits well below alpha. In simulation
(tests/test_sequential.py) a candidate at 70% against a stable 80%, margin 2 points, is caught
after a median of about 1,000 labels per variant, 90% of runs within about 1,800.

Assumptions: each variant's labelled outcomes are independent Bernoulli draws of its accuracy,
and whether and when a label arrives does not depend on whether that prediction was right. The
counts must be cumulative since the experiment began, never over a sliding window: forgetting
labels would break the martingale (decreasing counts are refused).

The supremum over H0: the log-likelihood is concave, so if the unconstrained estimates
(a / n_s, b / n_c) already satisfy H0 then E <= 1 (the mixture never beats the maximum). Otherwise
the constrained maximum lies on the line p_c = p_s - margin, a concave problem in one variable
whose derivative is decreasing, found by bisection. Everything is vectorised with numpy so that
simulations can score thousands of runs at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_BISECTION_STEPS = 50  # halves [margin, 1] to ~1e-15: far below any effect on the log-likelihood
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _lgamma(x: np.ndarray) -> np.ndarray:
    """log Gamma(x) for x >= 1, vectorised (numpy has none): Stirling's series at x + 8, where its
    first omitted term is below 1e-11, brought back down by Gamma(x) = Gamma(x + 8) / (x (x+1) ... (x+7))."""
    z = x + 8.0
    inv, inv2 = 1.0 / z, 1.0 / (z * z)
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    stirling = (z - 0.5) * np.log(z) - z + _HALF_LOG_2PI + series
    rising = x * (x + 1) * (x + 2) * (x + 3) * (x + 4) * (x + 5) * (x + 6) * (x + 7)
    return stirling - np.log(rising)


def _log_beta_mixture(correct: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """log of the likelihood mixed over a uniform prior: log B(correct + 1, wrong + 1)."""
    return _lgamma(correct + 1) + _lgamma(wrong + 1) - _lgamma(correct + wrong + 2)


def _log_likelihood(correct: np.ndarray, wrong: np.ndarray, p: np.ndarray) -> np.ndarray:
    """correct log p + wrong log(1 - p), with 0 log 0 = 0 (an accuracy of 0 or 1 is possible)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        right = np.where(correct > 0, correct * np.log(p), 0.0)
        wrong_part = np.where(wrong > 0, wrong * np.log1p(-p), 0.0)
    return right + wrong_part


def log_e_value(stable_correct, stable_n, candidate_correct, candidate_n, margin: float) -> np.ndarray:
    """log E for H0 p_c >= p_s - margin, elementwise over arrays (or scalars) of cumulative counts."""
    a, n_s, b, n_c = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in
                                           (stable_correct, stable_n, candidate_correct, candidate_n)))
    a_wrong, b_wrong = n_s - a, n_c - b
    p_s = np.divide(a, n_s, out=np.zeros_like(a), where=n_s > 0)
    p_c = np.divide(b, n_c, out=np.ones_like(b), where=n_c > 0)
    # With no labels for a variant its accuracy is free, so some point of H0 fits as well as anything.
    in_null = (n_s == 0) | (n_c == 0) | (p_c >= p_s - margin)
    null_fit = np.array(_log_likelihood(a, a_wrong, p_s) + _log_likelihood(b, b_wrong, p_c))  # writable, 0-d too

    out = ~in_null  # only these need the constrained maximum, on the line p_c = p_s - margin
    if out.any():
        ca, cw, cb, cbw = a[out], a_wrong[out], b[out], b_wrong[out]
        low, high = np.full(ca.shape, float(margin)), np.ones(ca.shape)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (low + high)  # strictly inside (margin, 1): no division by zero below
            slope = ca / mid - cw / (1 - mid) + cb / (mid - margin) - cbw / (1 + margin - mid)
            rising = slope > 0
            low, high = np.where(rising, mid, low), np.where(rising, high, mid)
        p = 0.5 * (low + high)
        null_fit[out] = _log_likelihood(ca, cw, p) + _log_likelihood(cb, cbw, p - margin)
    return _log_beta_mixture(a, a_wrong) + _log_beta_mixture(b, b_wrong) - null_fit


@dataclass(frozen=True)
class Verdict:
    rollback: bool
    statistic: float  # log E in nats; it never needs a correction for how often it was looked at
    threshold: float  # log(1 / alpha)
    reason: str


class AccuracyMonitor:
    """Rolls the candidate back once log E reaches log(1/alpha) with at least `min_labels` labels
    per variant. The verdict latches: the guarantee covers the first crossing, and evidence that
    later dilutes does not undo it. One monitor per experiment; `reset` starts a new one."""

    def __init__(self, alpha: float = 0.05, margin: float = 0.02, min_labels: int = 50):
        if not 0 < alpha < 1:
            raise ValueError("alpha: a probability in (0, 1)")
        if not 0 <= margin < 1:
            raise ValueError("margin: an accuracy difference in [0, 1)")
        if min_labels < 0:
            raise ValueError("min_labels: a count, at least 0")
        self.alpha, self.margin, self.min_labels = alpha, margin, min_labels
        self.threshold = math.log(1 / alpha)
        self.reset()

    def reset(self) -> None:
        self._last = (0, 0, 0, 0)
        self._fired: str | None = None

    def update(self, stable_correct: int, stable_n: int, candidate_correct: int, candidate_n: int) -> Verdict:
        counts = (stable_correct, stable_n, candidate_correct, candidate_n)
        if any(int(c) != c or c < 0 for c in counts):
            raise ValueError(f"counts must be non-negative integers, got {counts}")
        if stable_correct > stable_n or candidate_correct > candidate_n:
            raise ValueError(f"more correct labels than labels: {counts}")
        # Labels are never forgotten, so n never falls; a relabel (a disposition that changed)
        # corrects a past outcome and may lower `correct`: the statistic depends on the counts only,
        # so it is then as if the corrected label had come in the first place.
        if stable_n < self._last[1] or candidate_n < self._last[3]:
            raise ValueError(f"label counts went down ({self._last} -> {counts}): they must be cumulative "
                             "since the experiment began, never windowed")
        self._last = counts
        statistic = float(log_e_value(*counts, margin=self.margin))
        if self._fired:
            return Verdict(True, statistic, self.threshold, self._fired)
        if min(stable_n, candidate_n) < self.min_labels:
            return Verdict(False, statistic, self.threshold,
                           f"waiting for labels: stable {stable_n}, candidate {candidate_n} of {self.min_labels} each")
        accuracies = (f"candidate accuracy {candidate_correct / candidate_n:.1%} of {candidate_n} labels, "
                      f"stable {stable_correct / stable_n:.1%} of {stable_n}, margin {self.margin:.1%}")
        if statistic < self.threshold:
            return Verdict(False, statistic, self.threshold,
                           f"no proof the candidate is worse: log e-value {statistic:.2f} < {self.threshold:.2f} "
                           f"({accuracies})")
        self._fired = (f"candidate accuracy is below the stable's minus the margin: log e-value {statistic:.2f} "
                       f">= {self.threshold:.2f}, false-alarm probability <= {self.alpha:g} however often checked "
                       f"({accuracies})")
        return Verdict(True, statistic, self.threshold, self._fired)
