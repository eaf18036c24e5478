"""A/B and canary experiments on the shared application: weighted and sticky splits, shadows,
each automatic rollback trigger, the precedence of decisions, admin actions and a gradual rollout.

Misbehaving candidates are real registered artifacts (tests/bad_models.py) or real faults (a
candidate replica frozen with SIGSTOP); experiments are applied with `serve deploy` of the
Router's user_config, in place, with test-sized windows."""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
import requests

from .bad_models import GOOD_COPY, RAISING, SKEWED, SLOW_FOREST, publish_bad_versions
from .helpers import publish_copy
from .ray_cluster import ADMIN_KEY, PREDICT_KEY, SERVE_URL
from .test_serving import as_json_row, held_out

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application

EXPERIMENTS = f"{SERVE_URL}/api/v1/experiments"
PREDICT = f"{SERVE_URL}/api/v1/predict"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FAULTY, FROZEN, ROLLOUT = "8.3.0", "8.4.0", "8.5.0"  # healthy copies, each its own experiment
# Test-sized windows: triggers need 20 requests per variant and look back 20 s.
RULES = {"window_s": 20, "min_samples": 20, "health_period_s": 1, "health_timeout_s": 1, "health_failures": 3}
QUIET = {**RULES, "min_samples": 1_000_000}  # no trigger can fire


class Lab:
    def __init__(self, node):
        self.node = node
        self.rows = [as_json_row(r) for r in held_out(60)]

    def apply(self, experiments: dict, router_replicas: int = 1) -> None:
        config = copy.deepcopy(self.node.config)
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] == "Router":
                deployment["user_config"]["experiments"] = experiments
                deployment["num_replicas"] = router_replicas
        self.node.deploy(config)
        self.node.wait_running()
        self.experiments = experiments

    def routers_agree(self, generation: int, timeout: float = 15) -> float:
        """Seconds until two router replicas report `generation` (answers alternate between them)."""
        started, routers = time.monotonic(), {}
        while time.monotonic() - started < timeout:
            view = self.view()
            routers[view["router"]["replica"]] = view["router"]["generation"]
            if len(routers) >= 2 and all(g >= generation for g in routers.values()):
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"routers never agreed on generation {generation}: {routers}")

    def view(self) -> dict:
        response = requests.get(EXPERIMENTS, headers=ADMIN, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, model: str, states: tuple[str, ...], timeout: float = 60) -> dict:
        """The experiment last applied for `model` (not an earlier one) in one of `states`."""
        spec = self.experiments[model]
        wanted = f"{model}:{spec['candidate']}" if spec.get("candidate") else f"{model}:shadow-{spec['shadow']}"
        deadline, experiment = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            experiment = self.view()["experiments"].get(model)
            if experiment and experiment["experiment_id"] == wanted and experiment["state"] in states:
                return experiment
            time.sleep(0.25)
        raise AssertionError(f"{model} never reached {states}: {experiment}")

    def serving(self, model: str, version: str, timeout: float = 20) -> None:
        """Until this router has adopted the experiment: a candidate answer has been seen (by its
        version: predict callers are not told the variant)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r.get("version") == version for _, r in self.send(model, 20)):
                return
        raise AssertionError(f"no candidate answer from {model} {version}")

    def predict(self, model: str, i: int, headers: dict | None = None) -> tuple[int, dict]:
        try:
            response = requests.post(PREDICT, json={"features": self.rows[i % len(self.rows)], "model": model,
                                                    "return_probabilities": True}, headers=headers, timeout=30)
            return response.status_code, response.json()
        except requests.RequestException as e:
            return 0, {"error": str(e)}

    def send(self, model: str, count: int, threads: int = 8, headers=None) -> list[tuple[int, dict]]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda i: self.predict(model, i, headers), range(count)))

    @contextmanager
    def load(self, model: str, threads: int = 4, seconds: float = 90):
        """Closed-loop load in the background, bounded in time."""
        results, stop = [], threading.Event()
        deadline = time.monotonic() + seconds

        def client(offset):
            i = offset
            while not stop.is_set() and time.monotonic() < deadline:
                results.append(self.predict(model, i))
                i += threads

        workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(threads)]
        for worker in workers:
            worker.start()
        try:
            yield results
        finally:
            stop.set()
            for worker in workers:
                worker.join(40)

    @contextmanager
    def frozen(self, deployment: str):
        """Every replica of a deployment stopped with SIGSTOP (alive, unresponsive), then resumed."""
        pids = [r["pid"] for r in self.node.replicas(deployment)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield pids
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def lab(serve_app, trained_registry, tmp_path_factory):
    publish_bad_versions(trained_registry)
    for version in (FAULTY, FROZEN, ROLLOUT):
        if not trained_registry.exists("xgboost", version):
            publish_copy(trained_registry, "xgboost", "1.1.0", version, tmp_path_factory.mktemp("copies"))
    lab = Lab(serve_app)
    stable = trained_registry.aliases("xgboost")["stable"]
    yield lab
    trained_registry.set_alias("xgboost", "stable", stable)  # the promotion test moved it
    lab.apply({})
    for name in ("xgboost", "random_forest"):  # the other tests see the trained versions only
        for version in trained_registry.versions(name):
            if version.startswith("8."):
                trained_registry.archive(name, version)


def binomial_interval(n: int, p: float, z: float = 3.29) -> tuple[float, float]:
    """99.9% normal interval of a Binomial(n, p) count."""
    half = z * math.sqrt(n * p * (1 - p))
    return n * p - half, n * p + half


def test_experiment_routes_need_the_admin_key(serve_app):
    assert requests.get(EXPERIMENTS, timeout=10).status_code == 401
    wrong = requests.get(EXPERIMENTS, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "invalid" in wrong.json()["error"]
    predict_only = requests.post(f"{EXPERIMENTS}/xgboost/rollback", headers={"X-API-Key": PREDICT_KEY}, timeout=10)
    assert predict_only.status_code == 403 and "admin" in predict_only.json()["error"]
    bad_weight = requests.put(f"{EXPERIMENTS}/xgboost/weight", json={"weight": 1.5}, headers=ADMIN, timeout=10)
    assert bad_weight.status_code == 422 and "weight" in bad_weight.json()["error"]


def test_a_candidate_that_cannot_load_fails_the_experiment(lab):
    """RAISING expects 10 features: its warm-up prediction fails, so it never takes traffic."""
    lab.apply({"xgboost": {"candidate": RAISING, "weight": 0.5, "rollback": RULES}})
    experiment = lab.wait_for("xgboost", ("failed",))
    assert "cannot load" in experiment["reason"] and "Feature shape mismatch" in experiment["reason"]
    answers = lab.send("xgboost", 50)
    assert all(status == 200 and body["version"] != RAISING for status, body in answers), answers[:3]


def test_weighted_split_stickiness_shadow_and_admin_weight(lab):
    lab.apply({"xgboost": {"candidate": GOOD_COPY, "weight": 0.3, "sticky_header": "x-client-id",
                           "shadow": "1.1.0", "rollback": QUIET}})
    lab.wait_for("xgboost", ("running",))
    lab.serving("xgboost", GOOD_COPY)
    answers = lab.send("xgboost", 2000)
    assert all(status == 200 for status, _ in answers)
    assert not any("variant" in body for _, body in answers)  # named to admin callers only
    versions = Counter(body["version"] for _, body in answers)  # the candidate's, and the stable one
    low, high = binomial_interval(2000, 0.3)
    print(f"\nsplit at weight 0.3: {versions[GOOD_COPY]} of 2000 to the candidate (99.9% interval "
          f"{low:.0f}-{high:.0f})")
    assert low <= versions[GOOD_COPY] <= high and len(versions) == 2, versions

    # Sticky: each of 100 clients keeps its variant.
    seen: dict[str, set] = {}
    for round_ in range(3):
        for client in range(100):
            status, body = lab.predict("xgboost", client, {"X-Client-Id": f"client-{client}"})
            assert status == 200
            seen.setdefault(f"client-{client}", set()).add(body["version"])
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
    on_candidate = sum(v == {GOOD_COPY} for v in seen.values())
    assert 0 < on_candidate < 100

    # The shadow answered copies and agreed with what was served; it changed no response.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shadow = lab.view()["experiments"]["xgboost"]["variants"]["shadow"]
        if shadow.get("compared", 0) >= 500:
            break
        time.sleep(0.5)
    print(f"shadow: {shadow['compared']} copies compared, agreement {shadow['agreement_rate']}, "
          f"{shadow['dropped']} dropped")
    assert shadow["compared"] >= 500 and shadow["agreement_rate"] > 0.8

    # An admin weight of 0 holds, without a restart.
    response = requests.put(f"{EXPERIMENTS}/xgboost/weight", json={"weight": 0}, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    time.sleep(2.5)  # the router's next sync (1 s) has certainly happened: now no candidate answers
    assert GOOD_COPY not in {body["version"] for _, body in lab.send("xgboost", 100)}
    assert lab.view()["experiments"]["xgboost"]["weight_source"] == "admin"

    # A manual rollback ends it for good; a second one is a conflict.
    response = requests.post(f"{EXPERIMENTS}/xgboost/rollback", json={"reason": "looked wrong"}, headers=ADMIN,
                             timeout=30)
    assert response.status_code == 200 and response.json()["state"] == "rolled_back", response.text
    again = requests.post(f"{EXPERIMENTS}/xgboost/rollback", headers=ADMIN, timeout=30)
    assert again.status_code == 409 and "already ended" in again.json()["error"]
    assert lab.view()["experiments"]["xgboost"]["reason"] == "looked wrong"


def test_a_failing_shadow_never_fails_or_changes_a_response(lab):
    lab.apply({"xgboost": {"shadow": "1.1.0", "shadow_queue": 8, "rollback": QUIET}})
    lab.wait_for("xgboost", ("running",))
    pinned = {i: lab.predict("xgboost", i, None) for i in range(20)}  # answers before any shadow failure
    with lab.frozen("xgboost_shadow"):
        # Both shadow workers gather copies for 0.5 s, then hang on the frozen replica: copies
        # after that fill the queue of 8. Keep sending past that point however fast answers come.
        answers, frozen_at = [], time.monotonic()
        while len(answers) < 200 or (time.monotonic() - frozen_at < 3 and len(answers) < 2000):
            answers.append(lab.predict("xgboost", len(answers)))
        synced_by = time.monotonic() + 5  # routers report their counts to the controller every second
        while not (view := lab.view()["experiments"]["xgboost"]["variants"]["shadow"]).get("dropped") \
                and time.monotonic() < synced_by:
            time.sleep(0.2)
    assert all(status == 200 for status, _ in answers)
    for i, (_, body) in enumerate(answers[:20]):
        assert body["probabilities"] == pinned[i][1]["probabilities"] and body["version"] == pinned[i][1]["version"]
    print(f"\nfrozen shadow: {len(answers)} responses all 200, {view.get('dropped', 0)} copies dropped")
    assert view.get("dropped", 0) > 0  # the bounded queue filled and shed copies instead of waiting


def _rolls_back_within_window(lab, model: str, experiment: dict, trigger: str, load_threads: int = 4):
    lab.apply({model: experiment})
    running = lab.wait_for(model, ("running",))
    started = time.monotonic()
    with lab.load(model, threads=load_threads, seconds=RULES["window_s"] + 30) as results:
        rolled = lab.wait_for(model, ("rolled_back",), timeout=RULES["window_s"] + 30)
    took = time.monotonic() - started
    print(f"\n{trigger}: rolled back {took:.1f} s after the candidate started taking traffic: {rolled['reason']}")
    assert trigger in rolled["reason"], rolled
    assert took <= RULES["window_s"] + 5, took
    assert running["experiment_id"] == rolled["experiment_id"]
    return results


def test_error_rate_rollback_counts_requests_the_breaker_turned_away(lab, trained_registry):
    """The candidate frozen (health checks off): its calls time out, its breaker opens, and every
    request it would have taken is answered by the stable variant and counted against it."""
    rules = {**RULES, "health_failures": 10_000}
    lab.apply({"xgboost": {"candidate": FAULTY, "weight": 0.5, "rollback": rules}}, router_replicas=2)
    lab.wait_for("xgboost", ("running",))
    with lab.frozen("xgboost_candidate"):
        started = time.monotonic()
        with lab.load("xgboost", threads=4, seconds=50) as results:
            rolled = lab.wait_for("xgboost", ("rolled_back",), timeout=50)
            took = time.monotonic() - started
            agreed = lab.routers_agree(lab.view()["generation"])
    print(f"\nerror rate: rolled back after {took:.1f} s: {rolled['reason']}; "
          f"{len(results)} requests, {sum(s != 200 for s, _ in results)} failed; "
          f"both routers on the rollback's generation {agreed:.1f} s later")
    assert "error rate" in rolled["reason"]
    assert took <= RULES["window_s"] + 5
    assert results and all(status == 200 for status, _ in results)
    assert agreed <= 5
    # What follows needs this rollback: one test, so that it holds in any order.
    _a_rollback_is_a_log_event_a_metric_and_a_registry_record(lab, trained_registry)
    _a_rollback_holds_across_reapply_and_router_restart(lab)


def _a_rollback_holds_across_reapply_and_router_restart(lab):
    """The same config applied again, then a router killed: the candidate stays rolled back."""
    assert lab.view()["experiments"]["xgboost"]["state"] == "rolled_back"
    lab.apply(lab.experiments, router_replicas=2)
    victim = lab.node.replicas("Router")[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    during = lab.send("xgboost", 200)
    lab.node.wait_running()
    lab.routers_agree(lab.view()["generation"])  # the restarted router has read the book
    after = lab.send("xgboost", 100)
    assert lab.view()["experiments"]["xgboost"]["state"] == "rolled_back"
    assert all(body.get("version") != FAULTY for _, body in during + after)
    # Requests the proxy sent to the killed router before its health check dropped it are cut
    # off (how many depends on the check interval); every answered one is a stable answer.
    assert all(status in (0, 200, 502, 503) for status, _ in during), [s for s, _ in during if s != 200]
    assert sum(status == 200 for status, _ in during) >= len(during) // 2
    assert all(status == 200 for status, _ in after), [b for s, b in after if s != 200]


def _a_rollback_is_a_log_event_a_metric_and_a_registry_record(lab, trained_registry):
    """The error-rate rollback, as operators and auditors see it."""
    book, _ = trained_registry.read_document("experiments", "book")
    events = [e for e in book["events"] if e["experiment"] == f"xgboost:{FAULTY}" and e["action"] == "rolled_back"]
    assert events and "error rate" in events[-1]["reason"] and events[-1]["by"] == "controller"

    def exported() -> float:
        text = requests.get(f"{SERVE_URL}/metrics", timeout=30).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ray_rollbacks_total{") and 'reason="errors"' in line and 'model="xgboost"' in line)

    deadline = time.monotonic() + 20  # Ray exports every 2 s here
    while time.monotonic() < deadline and exported() < 1:
        time.sleep(0.5)
    assert exported() >= 1

    logs = lab.node.temp_dir / "session_latest" / "logs" / "serve"
    logged = [json.loads(line) for path in logs.glob("replica_kepler_ExperimentController_*.log")
              for line in path.read_text(errors="replace").splitlines() if "experiment_event" in line]
    assert any(entry["experiment_event"]["experiment"] == f"xgboost:{FAULTY}"
               and entry["experiment_event"]["action"] == "rolled_back" for entry in logged)


def test_drift_rolls_back(lab):
    results = _rolls_back_within_window(
        lab, "xgboost", {"candidate": SKEWED, "weight": 0.5, "rollback": {**RULES, "max_latency_ratio": 50}}, "drift")
    assert all(status == 200 for status, _ in results)


def test_latency_rolls_back_and_a_slow_candidate_never_stalls_the_stable_variant(lab):
    results = _rolls_back_within_window(
        lab, "random_forest", {"candidate": SLOW_FOREST, "weight": 0.1, "rollback": RULES}, "latency")
    stable = [body for status, body in results if body.get("version") != SLOW_FOREST]
    assert results and all(status == 200 for status, _ in results)
    assert stable
    latencies = [body["latency_ms"] for body in stable]
    print(f"stable variant beside a slow candidate: {len(stable)} requests, p50 {np.percentile(latencies, 50):.1f} ms")


def test_failed_health_checks_roll_back(lab):
    lab.apply({"xgboost": {"candidate": FROZEN, "weight": 0.2, "rollback": RULES}})
    lab.wait_for("xgboost", ("running",))
    with lab.frozen("xgboost_candidate"):
        started = time.monotonic()
        rolled = lab.wait_for("xgboost", ("rolled_back",), timeout=30)
        took = time.monotonic() - started
    print(f"\nhealth: rolled back {took:.1f} s after the candidate froze: {rolled['reason']}")
    assert "health checks" in rolled["reason"] and took <= 3 * RULES["health_period_s"] + 5


def test_gradual_rollout_then_promotion_moves_the_stable_alias(lab, trained_registry):
    rollout = {"steps": [0.2, 0.5, 1.0], "step_window_s": 3, "promote_at_end": False}
    # Steps need 10 samples a variant; the latency trigger is widened, since p95s of a few dozen
    # requests on two shared cores differ by 2x from noise alone (tested on its own above).
    rules = {**RULES, "min_samples": 10, "max_latency_ratio": 50}
    lab.apply({"xgboost": {"candidate": ROLLOUT, "rollout": rollout, "rollback": rules}})
    lab.wait_for("xgboost", ("running",))
    deadline, weights = time.monotonic() + 60, []
    with lab.load("xgboost", threads=4, seconds=60):
        while time.monotonic() < deadline:
            experiment = lab.view()["experiments"]["xgboost"]
            weights.append(experiment["variants"]["candidate"]["weight"])
            if weights[-1] == 1.0 or experiment["state"] != "running":
                break
            time.sleep(0.5)
    steps = sorted(set(weights))
    print(f"\nrollout: weights seen {steps}, state {experiment['state']}")
    assert experiment["state"] == "running" and steps == [0.2, 0.5, 1.0], (steps, experiment)

    stable = trained_registry.aliases("xgboost")["stable"]
    response = requests.post(f"{EXPERIMENTS}/xgboost/promote", headers=ADMIN, timeout=60)
    try:
        assert response.status_code == 200, response.text
        assert trained_registry.aliases("xgboost")["stable"] == ROLLOUT
        assert lab.view()["experiments"]["xgboost"]["state"] == "promoted"
        deadline, versions = time.monotonic() + 15, set()
        while time.monotonic() < deadline and versions != {ROLLOUT}:
            versions = {body["version"] for _, body in lab.send("xgboost", 20)}
        assert versions == {ROLLOUT}  # default requests follow the moved alias, no redeploy
    finally:  # the tests after this one, in any order, see the trained stable version
        trained_registry.set_alias("xgboost", "stable", stable)
        lab.apply({})
        deadline = time.monotonic() + 30  # until the routers' alias caches have let go of ROLLOUT
        while time.monotonic() < deadline and any(b.get("version") == ROLLOUT for _, b in lab.send("xgboost", 8)):
            pass
