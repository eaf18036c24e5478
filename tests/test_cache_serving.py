"""The prediction cache and exact rate limits on the real application: two router replicas sharing
one Redis (Debian's redis-server on loopback, with a password), cached answers against the models'
own, a credential's limit enforced exactly across both replicas, and Redis killed or stopped under
load without a failed request."""
from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest
import requests

from runtimes import load

from .helpers import until, with_router
from .ray_cluster import LIMITED_KEY, LIMITED_RPM, PREDICT_KEY, SERVE_URL
from .test_serving import as_json_row, held_out

pytestmark = [pytest.mark.ray, pytest.mark.trained]

PREDICT, BATCH = f"{SERVE_URL}/api/v1/predict", f"{SERVE_URL}/api/v1/predict/batch"
AUTH = {"Authorization": f"Bearer {PREDICT_KEY}"}
SERIES = re.compile(r'^ray_(prediction_cache_hits|prediction_cache_misses|redis_breaker_open)\w*\{([^}]*)\} (\S+)$',
                    re.M)


@pytest.fixture(scope="module")
def shared(serve_app, redis_server):
    """Two router replicas with Redis as their cache and rate-limit store, authentication on."""
    config = with_router(serve_app, auth={"enabled": True, "requests_per_minute": 6000},
                         cache={"redis_url": redis_server.url, "redis_timeout_s": 2.0, "redis_cooldown_s": 1.0})
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Router":
            deployment["num_replicas"] = 2
    serve_app.deploy(config)
    serve_app.wait_running()
    until(lambda: len(serve_app.replicas("Router")) == 2, 120)
    until(lambda: redis_in_use(), 60)
    yield serve_app
    redis_server.ensure_running()
    serve_app.deploy(serve_app.config)
    serve_app.wait_running()
    until(lambda: len(serve_app.replicas("Router")) == 1, 120)


def fresh_rows(n: int) -> np.ndarray:
    """Real rows no earlier request sent: each value moved by a few parts in a million (the models
    compute in float32, whose resolution is about 1e-7)."""
    rows = held_out(n).copy()
    return rows * (1 + np.random.default_rng(uuid.uuid4().int % 2**32).uniform(1e-6, 1e-5, rows.shape))


def cache_series() -> dict[tuple[str, str, str], float]:
    """(metric, model or "", router replica) -> value, from the node's Prometheus text."""
    text = requests.get(f"{SERVE_URL}/metrics", timeout=30).text
    series = {}
    for name, labels, value in SERIES.findall(text):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = (name, tags.get("model", ""), tags.get("replica", ""))
        series[key] = series.get(key, 0.0) + float(value)  # Serve may add a `route` tag: one series per route
    return series


def settled_series(quiet_s: float = 3.5, timeout: float = 60) -> dict:
    """The counters once the previous test's last requests are exported: unchanged for `quiet_s`
    (longer than the 1 s buffer plus the 2 s export interval)."""
    deadline, seen = time.monotonic() + timeout, [(time.monotonic(), cache_series())]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now, current = time.monotonic(), cache_series()
        if any(t <= now - quiet_s and snapshot == current for t, snapshot in seen):
            return current
        seen.append((now, current))
    raise AssertionError("the cache counters never settled")


def redis_in_use() -> bool:
    """Both routers report Redis up (after a request that would have probed it)."""
    requests.post(BATCH, json={"instances": [as_json_row(r) for r in fresh_rows(4)], "model": "xgboost"},
                  headers=AUTH, timeout=60)
    bypassed = [v for (name, _, _), v in cache_series().items() if name == "redis_breaker_open"]
    return len(bypassed) == 2 and not any(bypassed)


def per_replica(before: dict, after: dict, name: str, model: str) -> dict[str, float]:
    return {replica: value - before.get((n, m, replica), 0.0) for (n, m, replica), value in after.items()
            if (n, m) == (name, model)}


def test_two_routers_share_each_entry_and_a_hit_is_the_models_own_answer(shared, trained_registry):
    rows = fresh_rows(8)
    before = settled_series()
    first = {}
    for model in ("xgboost", "random_forest", "keras_cnn"):
        response = requests.post(BATCH, json={"instances": [as_json_row(r) for r in rows], "model": model},
                                 headers=AUTH, timeout=60)
        assert response.status_code == 200, response.text
        first[model] = [p["probabilities"] for p in response.json()["predictions"]]
    for i in range(24):  # every row again, one at a time: the proxies spread them over both routers
        model = ("xgboost", "random_forest", "keras_cnn")[i % 3]
        response = requests.post(PREDICT, json={"features": as_json_row(rows[i % 8]), "model": model},
                                 headers=AUTH, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["probabilities"] == first[model][i % 8]  # the stored answer, bit for bit
    for model, version in (("xgboost", "1.0.0"), ("random_forest", "1.0.0"), ("keras_cnn", "1.0.0")):
        offline = load(model, trained_registry.pull(model, version)).predict_proba(rows)
        served = np.array([[p[label] for label in ("CONFIRMED", "CANDIDATE", "FALSE_POSITIVE")] for p in first[model]])
        assert np.abs(served - offline).max() <= (1e-6 if model == "keras_cnn" else 1e-12), model

    def counted():
        after = cache_series()
        misses = {m: sum(per_replica(before, after, "prediction_cache_misses", m).values()) for m in first}
        hits = {m: per_replica(before, after, "prediction_cache_hits", m) for m in first}
        return misses, hits
    until(lambda: counted()[0] == {m: 8 for m in first} and all(sum(h.values()) == 8 for h in counted()[1].values()),
          30)
    misses, hits = counted()
    replicas = {r for h in hits.values() for r, n in h.items() if n > 0}
    assert len(replicas) == 2, hits  # both routers answered from entries only one of them computed


def test_a_credential_gets_exactly_its_limit_across_both_routers(shared, redis_server):
    for key in redis_server.client().scan_iter("kepler:limits*"):
        redis_server.client().delete(key)
    row, before = as_json_row(fresh_rows(1)[0]), settled_series()
    started, codes = time.monotonic(), []
    for _ in range(LIMITED_RPM + 10):
        response = requests.post(PREDICT, json={"features": row, "model": "xgboost"},
                                 headers={"Authorization": f"Bearer {LIMITED_KEY}"}, timeout=60)
        codes.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
    assert time.monotonic() - started < 50  # all inside one window
    assert Counter(codes) == {200: LIMITED_RPM, 429: 10}, codes

    def served_by() -> dict[str, float]:
        after = cache_series()
        counts = Counter(per_replica(before, after, "prediction_cache_hits", "xgboost"))
        counts.update(per_replica(before, after, "prediction_cache_misses", "xgboost"))
        return counts
    # Both routers took a share (a scrape can miss a replica's latest export: wait for both).
    until(lambda: sum(served_by().values()) == LIMITED_RPM and len([n for n in served_by().values() if n > 0]) == 2,
          30)


def test_redis_killed_or_stopped_under_load_fails_no_request_and_recovers(shared, redis_server):
    rows, outcomes, stop = [as_json_row(r) for r in fresh_rows(40)], [], threading.Event()

    def client(offset: int):
        for i in range(2000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            body = {"features": rows[(offset + i) % 40], "model": ("xgboost", "ensemble")[i % 2]}
            try:
                outcomes.append(requests.post(PREDICT, json=body, headers=AUTH, timeout=30).status_code)
            except requests.RequestException as e:
                outcomes.append(type(e).__name__)


    threads = [threading.Thread(target=client, args=(k * 7,)) for k in range(2)]
    for thread in threads:
        thread.start()
    try:
        until(lambda: len(outcomes) > 20, 30)
        for fault in (redis_server.pause, redis_server.kill):
            fault()
            until(lambda: any(v for (n, _, _), v in cache_series().items() if n == "redis_breaker_open"), 30)
            counted = len(outcomes)
            until(lambda: len(outcomes) > counted + 20, 30)  # served while Redis is away
            redis_server.ensure_running()
            until(redis_in_use, 30)
        # The restarted server is empty: entries are written again while the load goes on. (Both
        # breakers may report closed from a probe before either router has written a row.)
        until(lambda: redis_server.client().dbsize() > 0, 30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert Counter(outcomes) == {200: len(outcomes)}, Counter(outcomes)


def test_health_names_the_cache_in_use(shared):
    def named() -> bool:
        redis_in_use()  # a request probes Redis if an earlier fault left it bypassed
        return requests.get(f"{SERVE_URL}/api/v1/health", timeout=10).json()["prediction_cache"] == {
            "backend": "redis", "redis": "up"}
    until(named, 30)
