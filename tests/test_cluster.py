"""A real multi-node Ray cluster on one machine (a head and two workers on their own loopback
addresses), started once for these tests after the single-node application is stopped: replicas
spread over nodes, both ways of applying a config, a zero-downtime update and the loss of a node,
all under steady load from a loopback client."""
from __future__ import annotations

import copy
import threading
import time
from collections import Counter

import pytest
import requests

from .conftest import RUNNING
from .ray_cluster import SERVE_URL, TEST_ENV, LocalCluster, test_config
from .test_serving import as_json_row, held_out

pytestmark = pytest.mark.cluster
PREDICT = f"{SERVE_URL}/api/v1/predict"


def cluster_config(registry, cache_dir: str, verify_key: str) -> dict:
    config = test_config(str(registry.store.root), cache_dir, verify_key=verify_key)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] != "Router":
            deployment["max_replicas_per_node"] = 1  # spread: a lost node never takes a model down
            deployment["autoscaling_config"]["min_replicas"] = 2
    return config


@pytest.fixture(scope="module")
def cluster(trained_registry, publisher_keys, tmp_path_factory):
    if "serve_app" in RUNNING:
        RUNNING.pop("serve_app").stop()
    nodes = LocalCluster(workers=2, cpus_per_node=2, head_cpus=1, env=TEST_ENV).start()
    try:
        config = cluster_config(trained_registry, str(tmp_path_factory.mktemp("cluster-cache")),
                                str(publisher_keys["public"]))
        nodes.put(config)  # as KubeRay's operator applies serveConfigV2
        nodes.wait_running()
        nodes.config = config
        yield nodes
    finally:
        nodes.stop()


class SteadyLoad:
    """A bounded closed loop of single predictions from one loopback client."""

    def __init__(self, model: str = "ensemble", limit: int = 5000, seconds: float = 180):
        self.model, self.limit, self.seconds = model, limit, seconds
        self.results: list[tuple[float, int]] = []
        self.stop_event = threading.Event()
        self.rows = [as_json_row(r) for r in held_out(20)]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop_event.is_set() and len(self.results) < self.limit and time.monotonic() < deadline:
            try:
                status = requests.post(PREDICT, json={"features": self.rows[len(self.results) % 20],
                                                      "model": self.model}, timeout=30).status_code
            except requests.RequestException:
                status = 0
            self.results.append((time.monotonic(), status))

    def __enter__(self) -> "SteadyLoad":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(60)

    @property
    def failed(self) -> list[tuple[float, int]]:
        return [r for r in self.results if r[1] != 200]


def test_replicas_spread_over_nodes(cluster):
    assert len(cluster.alive_nodes()) == 3
    for name in ("keras_cnn", "xgboost", "random_forest"):
        nodes = [r["node_ip"] for r in cluster.replicas(name)]
        assert len(nodes) == 2 and len(set(nodes)) == 2, (name, nodes)


def test_zero_downtime_update_under_load(cluster):
    changed = copy.deepcopy(cluster.config)
    app = changed["applications"][0]
    app["args"]["models"]["xgboost"]["default_version"] = "1.1.0"  # a new version: replicas replaced
    for deployment in app["deployments"]:
        if deployment["name"] == "random_forest":
            deployment["user_config"]["max_batch_size"] = 16  # in place, through reconfigure()
        if deployment["name"] == "Router":
            deployment["user_config"]["ensemble_weights"] = {"keras_cnn": 1.0, "xgboost": 2.0, "random_forest": 1.0}
    with SteadyLoad() as load:
        time.sleep(1)  # requests in flight before the update starts
        cluster.deploy(changed)  # `serve deploy`, as a RayCluster user does
        cluster.wait_running()
    print(f"\nzero-downtime update: {len(load.results)} requests, {len(load.failed)} failed")
    assert len(load.results) > 20 and not load.failed, Counter(s for _, s in load.failed)
    body = requests.post(PREDICT, json={"features": load.rows[0], "model": "xgboost"}, timeout=30).json()
    assert body["version"] == "1.1.0"
    cluster.config = changed


def test_losing_a_worker_node(cluster):
    victim = "127.0.0.3"
    with SteadyLoad() as load:
        time.sleep(2)
        killed_at = time.monotonic()
        cluster.kill_raylet(victim)
        deadline, recovered_at = killed_at + 90, None
        while time.monotonic() < deadline:
            if victim not in cluster.alive_nodes():
                try:
                    cluster.wait_running(timeout=max(1.0, deadline - time.monotonic()))
                    recovered_at = time.monotonic()
                except TimeoutError:
                    pass
                break
            time.sleep(0.2)
        time.sleep(2)  # traffic after recovery counts too
    failed_share = len(load.failed) / max(1, len(load.results))
    recovery = (recovered_at - killed_at) if recovered_at else None
    print(f"\nworker node lost: {len(load.results)} requests, {len(load.failed)} failed "
          f"({failed_share:.2%}), recovered in {recovery:.1f} s" if recovery else "\nnot recovered")
    assert recovery is not None and recovery <= 30, recovery
    assert failed_share <= 0.01, Counter(s for _, s in load.failed)
    for name in ("keras_cnn", "xgboost", "random_forest"):
        assert all(r["node_ip"] != victim for r in cluster.replicas(name))
