"""The Thompson-sampling weight policy (serve_app/bandit.py) over simulated experiments whose
labels arrive late: the weight goes to the better variant within its bounds, changes no more often
than update_s and by no less than min_step, is reproducible from a seed, and sticky clients flip
variant only when the weight's path crosses their point. No Ray."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from serve_app.bandit import ThompsonPolicy

BOUNDS = {"min_weight": 0.05, "max_weight": 0.95}
UPDATE_S, MIN_STEP = 300.0, 0.05


def policy(seed: int = 0, **overrides) -> ThompsonPolicy:
    return ThompsonPolicy(**{**BOUNDS, "update_s": UPDATE_S, "min_step": MIN_STEP, "draws": 20_000,
                             "seed": seed, **overrides})


def run_experiment(bandit: ThompsonPolicy, stable_accuracy: float, candidate_accuracy: float, hours: float,
                   seed: int = 0, tick_s: int = 10, requests_per_tick: int = 20, label_delay_s: int = 1800,
                   start_weight: float = 0.1):
    """Requests split by the current weight every tick; each one's label (right or wrong) arrives
    `label_delay_s` later. The policy is asked every tick. Returns [(time, weight)], starting weight first."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(4, int)  # stable successes, stable failures, candidate successes, candidate failures
    in_flight: deque = deque()  # (arrival time, counts) of labels not yet known
    weight, last_change, path = start_weight, None, [(0, start_weight)]
    for now in range(0, int(hours * 3600), tick_s):
        to_candidate = rng.binomial(requests_per_tick, weight)
        to_stable = requests_per_tick - to_candidate
        stable_right = rng.binomial(to_stable, stable_accuracy)
        candidate_right = rng.binomial(to_candidate, candidate_accuracy)
        in_flight.append((now + label_delay_s, np.array([stable_right, to_stable - stable_right,
                                                          candidate_right, to_candidate - candidate_right])))
        while in_flight and in_flight[0][0] <= now:
            counts += in_flight.popleft()[1]
        decision = bandit.propose(*(int(c) for c in counts), weight, float(now), last_change)
        if decision.changed:
            weight, last_change = decision.weight, float(now)
            path.append((now, weight))
    return path


@pytest.mark.parametrize("candidate_accuracy, bound", [(0.90, "max_weight"), (0.70, "min_weight")])
def test_the_weight_moves_to_the_better_variant_within_bounds(candidate_accuracy, bound):
    path = run_experiment(policy(), 0.80, candidate_accuracy, hours=6)
    weights = [w for _, w in path[1:]]
    print(f"\ncandidate {candidate_accuracy} vs stable 0.80: weights {[round(w, 3) for w in weights]}")
    assert all(BOUNDS["min_weight"] <= w <= BOUNDS["max_weight"] for w in weights)
    assert weights[-1] == BOUNDS[bound]


def test_changes_no_more_often_than_update_s_and_never_by_less_than_min_step():
    bandit = policy(seed=3)
    evaluations = []
    estimate = bandit.probability_candidate_better
    bandit.probability_candidate_better = lambda *counts: evaluations.append(counts) or estimate(*counts)
    hours = 12
    path = run_experiment(bandit, 0.80, 0.80, hours=hours, seed=3, tick_s=1, requests_per_tick=2)
    times, weights = np.array([t for t, _ in path[1:]]), np.array([w for _, w in path])
    assert len(times) >= 3 and np.diff(times).min() >= UPDATE_S
    assert np.abs(np.diff(weights)).min() >= MIN_STEP
    assert len(evaluations) <= hours * 3600 / UPDATE_S + 1  # recomputed at most every update_s too


def test_ignores_changes_smaller_than_min_step():
    bandit = policy(min_step=0.2)
    even = (50, 50, 50, 50)  # P(candidate better) = 0.5
    held = bandit.propose(*even, current_weight=0.4, now=1000.0, last_change_at=None)
    assert not held.changed and held.weight == 0.4 and "within 0.2" in held.reason
    moved = bandit.propose(*even, current_weight=0.25, now=2000.0, last_change_at=None)
    assert moved.changed and moved.weight == pytest.approx(0.5, abs=0.02)
    too_soon = bandit.propose(0, 100, 100, 0, current_weight=0.5, now=2100.0, last_change_at=2000.0)
    assert not too_soon.changed and too_soon.weight == 0.5
    outside = bandit.propose(*even, current_weight=0.0, now=5000.0, last_change_at=None)  # set before the policy
    assert outside.changed and outside.weight == pytest.approx(0.5, abs=0.02)
    clamped = policy(min_step=0.2).propose(0, 100, 100, 0, current_weight=0.97, now=0.0, last_change_at=None)
    assert clamped.changed and clamped.weight == BOUNDS["max_weight"]  # a small step back into bounds


def test_deterministic_with_a_seed():
    first, second = (run_experiment(policy(seed=7), 0.80, 0.82, hours=4) for _ in range(2))
    assert first == second and len(first) > 2
    estimates = {policy(seed=s).probability_candidate_better(40, 10, 42, 8) for s in (1, 1, 2)}
    assert len(estimates) == 2


def monotone_stretches(weights: np.ndarray) -> list[tuple[float, float]]:
    """The (low, high) span of each maximal monotone stretch of a path of weights."""
    turns = [0] + [i for i in range(1, len(weights) - 1)
                   if (weights[i] - weights[i - 1]) * (weights[i + 1] - weights[i]) < 0] + [len(weights) - 1]
    return [(min(weights[a], weights[b]), max(weights[a], weights[b])) for a, b in zip(turns, turns[1:])]


@pytest.mark.parametrize("candidate_accuracy", [0.80, 0.85])
def test_sticky_clients_flip_only_when_the_weight_crosses_their_point(candidate_accuracy):
    hours = 24
    path = run_experiment(policy(seed=11), 0.80, candidate_accuracy, hours=hours, seed=11)
    weights = np.array([w for _, w in path])
    points = np.random.default_rng(5).random(10_000)  # each client's fixed point in [0, 1)
    on_candidate = points[:, None] < weights[None, :]
    flips = np.count_nonzero(np.diff(on_candidate, axis=1), axis=1)
    stretches = monotone_stretches(weights)
    crossings = sum(((low <= points) & (points < high)).astype(int) for low, high in stretches)
    print(f"\ncandidate {candidate_accuracy} vs stable 0.80 over {hours} h: {len(weights) - 1} weight changes, "
          f"{len(stretches)} monotone stretches; clients that ever switched {np.mean(flips > 0):.1%}, "
          f"at most {flips.max()} switches, mean {flips.mean():.2f}")
    assert np.all(flips <= crossings)  # at most once per monotone stretch spanning the client's point
    assert flips.max() <= len(stretches) <= len(weights) - 1 <= hours * 3600 / UPDATE_S
    if candidate_accuracy == 0.80:
        assert len(stretches) > 1  # the wandering case: the weight did turn around


def test_refuses_bad_settings():
    for bad in ({"min_weight": 0.6, "max_weight": 0.4}, {"max_weight": 1.5}, {"update_s": 0}, {"min_step": -0.1},
                {"draws": 0}):
        with pytest.raises(ValueError):
            policy(**bad)
    with pytest.raises(ValueError, match="non-negative"):
        policy().probability_candidate_better(-1, 0, 0, 0)
