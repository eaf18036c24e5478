"""Metrics scraped by a real Prometheus (Debian's), the Grafana dashboard's queries, the /metrics
endpoint, the Ray dashboard's view of the application, and the structured log lines."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from .conftest import free_port, wait_for_port
from .helpers import publish_copy
from .ray_cluster import FEEDBACK_KEY, ROOT, SERVE_URL
from .test_serving import as_json_row, held_out

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application

PREDICT = f"{SERVE_URL}/api/v1/predict"
DASHBOARD = ROOT / "cluster" / "grafana" / "kepler-serve-dashboard.json"
# Prometheus caps a scrape's timeout at the interval: 1 s was too short for Ray's metrics endpoint
# on a busy 2-core machine, and every scrape failed for minutes.
SCRAPE_INTERVAL = "2s"


@pytest.fixture(scope="module")
def prometheus(serve_app, tmp_path_factory):
    if not shutil.which("prometheus"):
        pytest.fail("Debian's prometheus package is not installed (.ci/run installs it)")
    port = free_port()
    data = tmp_path_factory.mktemp("prometheus")
    process = subprocess.Popen([str(ROOT / "cluster" / "prometheus.sh"), str(serve_app.temp_dir),
                                f"127.0.0.1:{port}", str(data), SCRAPE_INTERVAL],
                               stdout=open(data / "log", "ab"), stderr=subprocess.STDOUT)
    wait_for_port(port, process=process)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/-/ready", timeout=5).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(30)


def promql(url: str, query: str) -> list:
    body = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()
    assert body["status"] == "success", (query, body)
    return body["data"]["result"]


def wait_for_value(url: str, query: str, expected: float, timeout: float = 90) -> float:
    """Ray exports on an interval and Prometheus scrapes on another: wait for the value."""
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        result = promql(url, query)
        value = float(result[0]["value"][1]) if result else None
        if value == expected:
            return value
        time.sleep(0.5)
    return value


def scrapes(url: str) -> list:
    """Each target's last scrape: up or not, and how long it took (for a failure's message)."""
    durations = {r["metric"].get("instance"): r["value"][1] for r in promql(url, "scrape_duration_seconds")}
    return [(r["metric"].get("instance"), r["value"][1], durations.get(r["metric"].get("instance")))
            for r in promql(url, "up")]


def test_prometheus_counts_exactly_the_requests_sent(serve_app, prometheus, trained_registry, tmp_path):
    # A version used by nobody else: its series start from nothing, so the count is exact.
    publish_copy(trained_registry, "xgboost", "1.1.0", "9.1.0", tmp_path)
    try:
        rows, latencies, n = [as_json_row(r) for r in held_out(30)], [], 30
        for row in rows[:n]:
            started = time.perf_counter()
            response = requests.post(PREDICT, json={"features": row, "model": "xgboost", "version": "9.1.0"},
                                     timeout=30)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
        selector = 'model="xgboost", variant="primary", version="9.1.0"'
        assert wait_for_value(prometheus, f"sum(ray_predictions_total{{{selector}}})", n) == n, scrapes(prometheus)
        assert wait_for_value(prometheus, f'sum(ray_prediction_latency_seconds_count{{model="xgboost", '
                                          f'version="9.1.0"}})', n) == n
        time.sleep(2.5)  # two more export intervals: the count must stay exact, not overshoot
        deadline, result = time.monotonic() + 30, []
        while not result and time.monotonic() < deadline:  # empty only while a scrape has failed (busy machine)
            result = promql(prometheus, f"sum(ray_predictions_total{{{selector}}})")
            time.sleep(0.0 if result else 0.5)
        assert result and float(result[0]["value"][1]) == n, result
        p95 = float(promql(prometheus, 'histogram_quantile(0.95, sum by (le) (ray_prediction_latency_seconds_bucket'
                                       '{model="xgboost", version="9.1.0"}))')[0]["value"][1])
        client_p99 = float(np.percentile(latencies, 99))
        print(f"\nrouter p95 from the histogram {p95 * 1000:.1f} ms, client p99 {client_p99 * 1000:.1f} ms")
        assert 0 < p95 <= client_p99
    finally:
        trained_registry.archive("xgboost", "9.1.0")


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.match(r"label_values\((\w+),\s*\w+\)", variable["query"]["query"])
            expressions.append(match.group(1))
    return expressions


def _substitute(expression: str) -> str:
    return expression.replace("$__rate_interval", "1m").replace("$model", ".*")


def test_every_dashboard_query_is_valid_promql_over_scraped_metrics(serve_app, prometheus):
    requests.post(PREDICT, json={"features": as_json_row(held_out(1)[0]), "model": "ensemble"}, timeout=30)
    # A label, so the live-quality series the dashboard plots exist (the stable variants' figures).
    labelled = requests.post(f"{SERVE_URL}/api/v1/feedback", json={"items": [{"koi": "K00001.01", "label": "CONFIRMED"}]},
                             headers={"Authorization": f"Bearer {FEEDBACK_KEY}"}, timeout=60)
    assert labelled.status_code == 200 and labelled.json()["stored"] == 1, labelled.text
    # Gauges a replica missed one export of drop out of a single scrape: take the names Prometheus
    # has scraped from the cluster, and require the project's own series in a direct scrape.
    expected = {"ray_predictions_total", "ray_rollbacks_total", "ray_circuit_breaker_state",
                "ray_shadow_dropped_total", "ray_cache_hits_total", "ray_cache_misses_total",
                "ray_model_load_time_seconds", "ray_active_models_count", "ray_prediction_latency_seconds_bucket",
                "ray_prediction_cache_hits_total", "ray_redis_breaker_open", "ray_redis_errors_total",
                "ray_feedback_total", "ray_variant_accuracy", "ray_variant_ece", "ray_variant_labels"}
    deadline, scraped = time.monotonic() + 30, set()
    while time.monotonic() < deadline and not expected <= scraped:
        scraped |= set(re.findall(r"^(ray_\w+)", requests.get(f"{SERVE_URL}/metrics", timeout=30).text, re.M))
        time.sleep(0.5)
    assert expected <= scraped, expected - scraped
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = requests.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"]
        if expected <= set(names):
            break
        time.sleep(0.5)
    scraped |= set(names)
    expressions = _dashboard_expressions()
    assert len(expressions) >= 14
    for expression in expressions:
        promql(prometheus, _substitute(expression))  # accepted by the real Prometheus
        names = set(re.findall(r"\b(ray_\w+)", expression))
        assert names and names <= scraped, (expression, names - scraped)
    # Prometheus found every node through Ray's service-discovery file.
    targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert targets and all(t["labels"]["instance"].startswith("127.") for t in targets)


def test_metrics_endpoint_on_the_api_port(serve_app):
    wanted = ("ray_predictions_total{", "ray_serve_deployment_replica_healthy")
    deadline, response = time.monotonic() + 30, None  # a router started just now exports within seconds
    while time.monotonic() < deadline:
        response = requests.get(f"{SERVE_URL}/metrics", timeout=30)
        if response.status_code == 200 and all(name in response.text for name in wanted):
            break
        time.sleep(0.5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert all(name in response.text for name in wanted), [name for name in wanted if name not in response.text]


def test_ray_dashboard_shows_the_application_running_and_healthy(serve_app):
    application = serve_app.serve_status()["applications"]["kepler"]
    assert application["status"] == "RUNNING"
    assert {name: d["status"] for name, d in application["deployments"].items()} == {
        name: "HEALTHY" for name in ("Router", "keras_cnn", "xgboost", "random_forest", "ExperimentController",
                                     "xgboost_candidate", "xgboost_shadow", "random_forest_candidate")}


def _log_lines(directory: Path, pattern: str) -> list[dict]:
    lines = []
    for path in directory.glob(pattern):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
    return lines


def test_one_structured_line_per_request_and_per_batch(serve_app):
    request_id = f"obs-{uuid.uuid4().hex[:12]}"
    response = requests.post(PREDICT, json={"features": as_json_row(held_out(1)[0]), "model": "random_forest"},
                             headers={"X-Request-ID": request_id}, timeout=30)
    assert response.headers["X-Request-ID"] == request_id and response.json()["request_id"] == request_id
    logs = serve_app.temp_dir / "session_latest" / "logs" / "serve"
    deadline, router, batch = time.monotonic() + 30, [], []
    while time.monotonic() < deadline and not (router and batch):
        router = [l for l in _log_lines(logs, "replica_kepler_Router_*.log")
                  if l.get("request_id") == request_id and l.get("message") == "request"]
        batch = [l for l in _log_lines(logs, "replica_kepler_random_forest_*.log")
                 if l.get("message") == "batch" and request_id in l.get("request_ids", [])]
        time.sleep(0.3)
    assert len(router) == 1, router
    line = router[0]
    assert (line["model"], line["version"], line["variant"], line["status"]) == ("random_forest", "1.0.0", "primary", 200)
    assert line["latency_ms"] > 0 and line["endpoint"] == "predict" and line["route"] == "/api/v1/predict"
    assert len(batch) == 1 and batch[0]["version"] == "1.0.0"
    access = [l for l in _log_lines(logs, "*.log") if l.get("request_id") == request_id and "access" in str(l)]
    assert not access  # Serve's own access log is off


def test_concurrent_requests_reach_the_model_in_fewer_calls(serve_app, trained_registry):
    """Batching in the router: 48 concurrent single-row requests to the forest arrive at its
    replica in fewer handle calls than requests (the batch log counts both), and every request
    gets the probabilities of its own row."""
    from concurrent.futures import ThreadPoolExecutor

    from runtimes import LABELS, load

    rows = held_out(48, offset=100)
    offline = load("random_forest", trained_registry.pull("random_forest", "1.1.0")).predict_proba(rows)
    tag = uuid.uuid4().hex[:8]

    def one(i):
        return requests.post(f"{SERVE_URL}/api/v1/predict", timeout=60, headers={"X-Request-ID": f"{tag}-{i}"},
                             json={"features": as_json_row(rows[i]), "model": "random_forest", "version": "1.1.0"})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(len(rows))))
    for i, response in enumerate(answers):
        assert response.status_code == 200, response.text
        served = [response.json()["probabilities"][label] for label in LABELS]
        np.testing.assert_allclose(served, offline[i], atol=1e-6)
    logs = serve_app.temp_dir / "session_latest" / "logs" / "serve"
    deadline, batches = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        batches = [l for l in _log_lines(logs, "replica_kepler_random_forest_*.log")
                   if l.get("message") == "batch" and any(r.startswith(tag) for r in l.get("request_ids", []))]
        if sum(len(b["request_ids"]) for b in batches) >= len(rows):
            break
        time.sleep(0.3)
    ids = sorted(r for b in batches for r in b["request_ids"])
    assert ids == sorted(f"{tag}-{i}" for i in range(len(rows)))  # each request answered once
    calls = sum(b["calls"] for b in batches)
    assert calls < len(rows) / 2, [(b["calls"], b["rows"]) for b in batches]


def test_serve_batch_merges_the_calls_of_two_routers(serve_app):
    """Two Router replicas under c=16: the forest replica's @serve.batch gathers calls from both
    into one batch (its batch log names the routers whose calls it merged)."""
    import copy
    from concurrent.futures import ThreadPoolExecutor

    config = copy.deepcopy(serve_app.config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Router":
            deployment["num_replicas"] = 2
    serve_app.deploy(config)
    serve_app.wait_running()
    rows = [as_json_row(r) for r in held_out(16, offset=200)]
    logs = serve_app.temp_dir / "session_latest" / "logs" / "serve"
    tag, merged, routers = uuid.uuid4().hex[:8], [], set()
    try:
        deadline = time.monotonic() + 90
        with ThreadPoolExecutor(16) as pool:
            while time.monotonic() < deadline and not merged:
                answers = list(pool.map(lambda i: requests.post(
                    PREDICT, json={"features": rows[i % 16], "model": "random_forest"},
                    headers={"X-Request-ID": f"{tag}-{i}"}, timeout=60), range(160)))
                assert all(a.status_code == 200 for a in answers)
                batches = [l for l in _log_lines(logs, "replica_kepler_random_forest_*.log")
                           if l.get("message") == "batch" and any(r.startswith(tag) for r in l.get("request_ids", []))]
                routers = {c for b in batches for c in b.get("callers", [])}
                merged = [b for b in batches if len(b.get("callers", [])) == 2]
        print(f"\n@serve.batch: {len(merged)} batches merged calls of both routers ({sorted(routers)})")
        assert len(routers) == 2, routers  # both routers served, and the model saw both
        assert merged, "no batch merged calls from both routers"
    finally:
        serve_app.deploy(serve_app.config)
        serve_app.wait_running()
