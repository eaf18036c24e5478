"""A Thompson-sampling policy for the candidate's traffic weight, fed by labelled outcomes.

Thompson sampling sends each request to a variant with the posterior probability that the
variant is the better one. Here labels arrive late and clients may be sticky, so the policy works
in batches: the candidate's weight is set to P(candidate better), from Beta(1 + successes,
1 + failures) posteriors of each variant's accuracy (uniform priors), estimated by Monte Carlo
with a seeded numpy Generator (`draws` pairs of samples: a standard error of at most
0.5 / sqrt(draws), so keep `min_step` well above it). The weight is clamped to
[min_weight, max_weight]: the stable variant always keeps some traffic to compare against,
the candidate always keeps some to learn from. It is recomputed at most every `update_s`
seconds, and changed only when it moves by at least `min_step`, and never sooner than
`update_s` after the last change.

What a sticky client experiences: sticky assignment gives each client a fixed point u in [0, 1)
(serve_app/traffic.py `sticky_draw`), and the candidate serves the clients whose u < weight. As
the weight moves, a client switches variant only when the weight crosses its point: raising the
weight moves clients from stable to candidate and never back, lowering it moves them back, so
weights moving monotonically move clients one way only, each at most once. A client can flip
again only if the weight turns around and crosses its point once more, so its flips are at most
the number of monotone stretches of the weight's path that span its point. `update_s` and
`min_step` bound how often that can happen to anyone: at most one change per `update_s`, each of
at least `min_step` (a client is crossed by a change only if its point lies in the step; the one
smaller change is bringing a weight that started outside the bounds inside them).
Without labels P(candidate better) is 0.5, so the first evaluation moves a weight configured
elsewhere to about 0.5; ask only once labels exist to keep the configured weight until then.
When both variants are equally good, P(candidate better) does not settle (it keeps wandering
as evidence accumulates), so these two settings are what keep clients from churning then.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    weight: float  # the candidate's weight to use from now on (the current one when unchanged)
    changed: bool
    reason: str


class ThompsonPolicy:
    def __init__(self, min_weight: float = 0.05, max_weight: float = 0.95, update_s: float = 300.0,
                 min_step: float = 0.05, draws: int = 20_000, seed: int | None = None):
        if not 0 <= min_weight <= max_weight <= 1:
            raise ValueError("weights: 0 <= min_weight <= max_weight <= 1")
        if update_s <= 0 or min_step < 0 or draws < 1:
            raise ValueError("update_s > 0, min_step >= 0 and draws >= 1")
        self.min_weight, self.max_weight = min_weight, max_weight
        self.update_s, self.min_step, self.draws = update_s, min_step, draws
        self.rng = np.random.default_rng(seed)
        self._evaluated_at: float | None = None

    def probability_candidate_better(self, stable_successes: int, stable_failures: int,
                                     candidate_successes: int, candidate_failures: int) -> float:
        """P(p_c > p_s) under independent Beta(1 + s, 1 + f) posteriors, by Monte Carlo."""
        counts = (stable_successes, stable_failures, candidate_successes, candidate_failures)
        if any(c < 0 for c in counts):
            raise ValueError(f"counts must be non-negative, got {counts}")
        stable = self.rng.beta(1 + stable_successes, 1 + stable_failures, self.draws)
        candidate = self.rng.beta(1 + candidate_successes, 1 + candidate_failures, self.draws)
        return float(np.mean(candidate > stable))  # ties have probability zero

    def propose(self, stable_successes: int, stable_failures: int, candidate_successes: int,
                candidate_failures: int, current_weight: float, now: float,
                last_change_at: float | None) -> Decision:
        """The candidate's weight at `now` (monotonic seconds), given cumulative outcome counts and
        when the weight last changed (None: never)."""
        if last_change_at is not None and now - last_change_at < self.update_s:
            return Decision(current_weight, False, f"changed {now - last_change_at:.0f} s ago; "
                                                   f"changes at most every {self.update_s:g} s")
        if self._evaluated_at is not None and now - self._evaluated_at < self.update_s:
            return Decision(current_weight, False, f"evaluated {now - self._evaluated_at:.0f} s ago; "
                                                   f"recomputed at most every {self.update_s:g} s")
        self._evaluated_at = now
        better = self.probability_candidate_better(stable_successes, stable_failures,
                                                   candidate_successes, candidate_failures)
        target = min(max(better, self.min_weight), self.max_weight)
        evidence = (f"P(candidate better) {better:.3f} from {candidate_successes}/"
                    f"{candidate_successes + candidate_failures} candidate and {stable_successes}/"
                    f"{stable_successes + stable_failures} stable successes")
        # A weight outside the bounds (set before this policy took over) is brought inside at once.
        in_bounds = self.min_weight <= current_weight <= self.max_weight
        if in_bounds and abs(target - current_weight) < self.min_step:
            return Decision(current_weight, False, f"{evidence}: {target:.3f} is within {self.min_step:g} "
                                                   f"of the current weight {current_weight:.3f}")
        return Decision(target, True, f"{evidence}: weight {current_weight:.3f} -> {target:.3f} "
                                      f"(bounds [{self.min_weight:g}, {self.max_weight:g}])")
