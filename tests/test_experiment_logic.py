"""The Ray-free parts of experiments: statistics, triggers, decisions and assignment."""
from __future__ import annotations

import math
import random

import pytest

from serve_app.config import ExperimentSettings, RollbackSettings
from serve_app.experiments import Book, Decisions
from serve_app.rollback import kl_divergence, tripped
from serve_app.traffic import Traffic, sticky_draw
from serve_app.variant_stats import Bucket, Recorder, Window, latency_bucket, summarize


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_kl_divergence_matches_the_definition_with_add_one_smoothing():
    p, q = [10, 0, 0], [5, 5, 0]
    ps, qs = [11 / 13, 1 / 13, 1 / 13], [6 / 13, 6 / 13, 1 / 13]
    assert kl_divergence(p, q) == pytest.approx(sum(a * math.log(a / b) for a, b in zip(ps, qs)))
    assert kl_divergence([3, 4, 5], [3, 4, 5]) == 0


def test_merged_router_buckets_give_percentiles_within_one_bucket():
    clock = Clock()
    routers = [Recorder(clock), Recorder(clock)]
    for i in range(1000):  # 1..1000 ms spread over two routers
        routers[i % 2].answered("e", "candidate", (i + 1) / 1000, [i % 3])
    window = Window(clock=clock)
    for router in routers:
        window.merge(router.drain())
    summary = window.summary("e", "candidate", 60)
    assert summary.requests == 1000 and summary.classes == [334, 333, 333]
    assert 500 <= summary.p50_ms <= 500 * 1.15 + 1 and 950 <= summary.p95_ms <= 950 * 1.15 + 1


def test_a_report_that_never_arrived_is_restored_not_lost():
    recorder = Recorder(Clock())
    recorder.failed("e", "candidate")
    drained = recorder.drain()
    recorder.restore(drained)
    recorder.failed("e", "candidate")
    assert summarize([Bucket.from_dict(d) for *_, d in recorder.drain()]).errors == 2


def test_the_window_forgets_old_seconds():
    clock = Clock()
    recorder, window = Recorder(clock), Window(clock=clock)
    recorder.failed("e", "candidate")
    window.merge(recorder.drain())
    clock.now += 30
    assert window.summary("e", "candidate", 20).requests == 0
    assert window.summary("e", "candidate", 40).requests == 1


def _summary(requests=100, errors=0, p95=None, classes=(30, 30, 40)):
    latency = {} if p95 is None else {latency_bucket(p95 / 1000): requests - errors}
    return summarize([Bucket(requests, errors, list(classes), latency)])


@pytest.mark.parametrize("candidate, stable, expected", [
    (_summary(errors=6), _summary(), "error rate"),
    (_summary(errors=5), _summary(), None),  # 5% is not above 5%
    (_summary(requests=40, errors=40), _summary(), None),  # too few samples
    (_summary(p95=50), _summary(p95=20), "latency"),
    (_summary(p95=30), _summary(p95=20), None),
    (_summary(classes=(5, 90, 5)), _summary(classes=(60, 10, 30)), "drift"),
])
def test_each_trigger_fires_on_its_own_evidence(candidate, stable, expected):
    reason = tripped(candidate, stable, RollbackSettings())
    assert (reason is None) if expected is None else (expected in reason)


def running_experiment(spec: ExperimentSettings):
    """A book with xgboost's experiment adopted and its candidate loaded."""
    book, clock = Book(), Clock()
    decisions = Decisions(book, Window(clock=clock), clock)
    record = decisions.adopt("xgboost", spec, spec.candidate, None)
    decisions.started(record, spec, False)
    return book, decisions, record


def test_a_rollback_holds_for_the_same_candidate_until_a_new_version_is_configured():
    spec = ExperimentSettings(candidate="1.1.0", weight=0.2)
    book, decisions, record = running_experiment(spec)
    assert record.state == "running" and record.weight == 0.2
    decisions.end(record, "rolled_back", "error rate", "controller")
    # The same configuration again, or another weight for the same candidate: still rolled back.
    for again in (spec, ExperimentSettings(candidate="1.1.0", weight=0.5)):
        assert decisions.adopt("xgboost", again, "1.1.0", None) is None
        assert book.current["xgboost"].state == "rolled_back" and book.current["xgboost"].weight == 0
    # A new candidate version starts a new experiment.
    fresh = decisions.adopt("xgboost", ExperimentSettings(candidate="1.2.0"), "1.2.0", None)
    assert fresh.state == "starting" and book.current["xgboost"] is fresh


def test_an_admin_weight_holds_until_a_different_configuration_arrives():
    spec = ExperimentSettings(candidate="1.1.0", weight=0.2)
    _, decisions, record = running_experiment(spec)
    decisions.set_weight(record, 0.7, "ops")
    decisions.adopt("xgboost", spec, "1.1.0", None)  # re-applied: the admin's weight wins
    assert record.weight == 0.7 and record.weight_source == "admin"
    decisions.adopt("xgboost", ExperimentSettings(candidate="1.1.0", weight=0.3), "1.1.0", None)
    assert record.weight == 0.3 and record.weight_source == "config"


def test_sticky_assignment_is_stable_and_monotone_in_the_weight():
    secret = b"s" * 32
    draws = {f"client-{i}": sticky_draw(secret, "xgboost:1.1.0", "app", f"client-{i}") for i in range(1000)}
    assert draws == {c: sticky_draw(secret, "xgboost:1.1.0", "app", c) for c in draws}
    on_10 = {c for c, d in draws.items() if d < 0.1}
    on_25 = {c for c, d in draws.items() if d < 0.25}
    assert on_10 < on_25 and 50 < len(on_10) < 150


def test_a_router_sends_nothing_to_a_candidate_the_book_does_not_run():
    traffic = Traffic(random.Random(0))
    traffic.configure({"xgboost": ExperimentSettings(candidate="1.1.0", weight=1.0)})
    assert traffic.route("xgboost", {}) is None  # the controller has not spoken yet
    record = {"experiment_id": "xgboost:1.1.0", "candidate": "1.1.0", "shadow": None, "candidate_version": "1.1.0",
              "shadow_version": None, "shadow_ready": False, "state": "running", "weight": 1.0}
    traffic.adopt({"generation": 3, "experiments": {"xgboost": record}})
    assert traffic.route("xgboost", {}).variant == "candidate"
    traffic.adopt({"generation": 2, "experiments": {}})  # an older book never wins
    assert traffic.route("xgboost", {}).variant == "candidate"
    traffic.adopt({"generation": 4, "experiments": {"xgboost": {**record, "state": "rolled_back", "weight": 0}}})
    assert traffic.route("xgboost", {}) is None


@pytest.mark.parametrize("settings, field", [
    ({"experiments": {"gpt": {"candidate": "1.0.0"}}}, "experiments: unknown models"),
    ({"experiments": {"xgboost": {"candidate": "1.0.0", "weight": 1.5}}}, "weight"),
    ({"experiments": {"xgboost": {"weight": 0.5}}}, "a candidate, a shadow or both"),
    ({"experiments": {"xgboost": {"candidate": "Latest!"}}}, "candidate"),
    ({"experiments": {"xgboost": {"candidate": "1.0.0", "rollout": {"steps": [0.5, 0.2]}}}}, "increasing"),
    ({"experiments": {"xgboost": {"candidate": "1.0.0", "rollback": {"max_error_rate": 2}}}}, "max_error_rate"),
    ({"auth": {"requests_per_minute": 0}}, "requests_per_minute"),
])
def test_a_bad_experiment_configuration_is_refused_naming_the_field(settings, field):
    from pydantic import ValidationError

    from serve_app.config import RouterSettings

    with pytest.raises(ValidationError, match=field):
        RouterSettings(**settings)
