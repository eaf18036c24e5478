"""A real multi-node Ray cluster on one machine (a head and two workers on their own loopback
addresses), started once for these tests after the single-node application is stopped: replicas
spread over nodes, both ways of applying a config, a zero-downtime update and the loss of a node,
all under steady load from a loopback client."""
from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections import Counter

import pytest
import requests

from registry import ModelRegistry, S3Store
from registry.signing import load_private_key

from .chaos import Soak
from .conftest import RUNNING, free_port
from .helpers import publish_copy
from .ray_cluster import SERVE_URL, TEST_ENV, LocalCluster, serve_test_config
from .tcp_proxy import TcpProxy
from .test_serving import as_json_row, held_out

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.trained]
PREDICT = f"{SERVE_URL}/api/v1/predict"


def cluster_config(registry_uri: str, endpoint_url: str, cache_dir: str, verify_key: str) -> dict:
    config = serve_test_config(registry_uri, cache_dir, verify_key=verify_key, experiments=False)
    # Every node's proxy would bind the same 127.0.0.1:8000 on one machine, and a lost node's proxy
    # drops the connections the kernel handed it; on KubeRay a Service stops routing to a lost pod.
    config["proxy_location"] = "HeadOnly"
    config["applications"][0]["args"]["registry"]["endpoint_url"] = endpoint_url
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Router":  # on the head with the proxy: a lost worker loses no router
            deployment["ray_actor_options"]["resources"] = {"head": 0.01}
        else:
            deployment["max_replicas_per_node"] = 1  # spread: a lost node never takes a model down
            deployment["autoscaling_config"]["min_replicas"] = 2
        if deployment["name"] == "xgboost":  # test-sized autoscaling: 2 to 3 replicas within seconds
            deployment["autoscaling_config"].update(max_replicas=3, target_ongoing_requests=2, upscale_delay_s=1,
                                                    downscale_delay_s=3, look_back_period_s=2, metrics_interval_s=1)
    return config


def s3_copy_of(trained_registry, moto_server, endpoint_url: str, tmp_path, signing_key):
    """The trained versions and datasets, their signatures and aliases, published to a bucket behind
    the proxy."""
    bucket = moto_server.store().bucket
    registry = ModelRegistry(S3Store(bucket, "registry", endpoint_url=endpoint_url, connect_timeout=1),
                             tmp_path / "publisher-cache", signing_key=signing_key)
    for source, target in ((trained_registry, registry), (trained_registry.datasets, registry.datasets)):
        for name in source.names():  # the models, and the KOI catalogue the by-name routes read
            for version in source.versions(name):
                target.publish(name, version, source.pull(name, version), source.signature(name, version))
            for alias, version in source.aliases(name).items():
                target.set_alias(name, alias, version)
    return registry, f"s3://{bucket}/registry"


@pytest.fixture(scope="module")
def cluster(trained_registry, publisher_keys, moto_server, tmp_path_factory):
    if "serve_app" in RUNNING:
        RUNNING.pop("serve_app").stop(grace_s=5)
    proxy = TcpProxy(moto_server.port, free_port()).start()  # the S3 endpoint the cluster sees
    endpoint = f"http://127.0.0.1:{proxy.port}"
    s3, uri = s3_copy_of(trained_registry, moto_server, endpoint, tmp_path_factory.mktemp("s3"),
                         load_private_key(publisher_keys["private"]))
    nodes = LocalCluster(workers=2, cpus_per_node=2, head_cpus=2, env=TEST_ENV).start()
    try:
        config = cluster_config(uri, endpoint, str(tmp_path_factory.mktemp("cluster-cache")),
                                str(publisher_keys["public"]))
        nodes.put(config)  # as KubeRay's operator applies serveConfigV2
        nodes.wait_running()
        nodes.config, nodes.s3, nodes.proxy = config, s3, proxy
        yield nodes
    finally:
        nodes.stop(grace_s=5)
        proxy.stop()


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

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Until `count` more requests have completed."""
        target, deadline = len(self.results) + count, time.monotonic() + timeout
        while len(self.results) < target and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)

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
        load.wait_for(10)  # traffic flowing before the update starts
        cluster.deploy(changed)  # `serve deploy`, as a RayCluster user does
        cluster.wait_running()
    print(f"\nzero-downtime update: {len(load.results)} requests, {len(load.failed)} failed")
    assert len(load.results) > 20 and not load.failed, Counter(s for _, s in load.failed)
    deadline, served = time.monotonic() + 15, None  # the router asks the new replicas within alias_cache_s
    while time.monotonic() < deadline and served != "1.1.0":
        served = requests.post(PREDICT, json={"features": load.rows[0], "model": "xgboost"}, timeout=30).json()["version"]
        time.sleep(0.2)
    assert served == "1.1.0"
    cluster.config = changed


def with_xgboost_target(config: dict, target_ongoing_requests: float) -> dict:
    changed = copy.deepcopy(config)
    for deployment in changed["applications"][0]["deployments"]:
        if deployment["name"] == "xgboost":
            deployment["autoscaling_config"]["target_ongoing_requests"] = target_ongoing_requests
    return changed


@pytest.fixture
def eager_xgboost_autoscaling(cluster):
    """A low target, applied in place: any sustained load scales up however fast the machine is
    (with a target of 1, a slow machine whose router is the bottleneck never queues enough)."""
    cluster.deploy(with_xgboost_target(cluster.config, 0.25))
    cluster.wait_running()
    yield
    cluster.deploy(cluster.config)
    cluster.wait_running()


def test_autoscaling_up_under_load_and_back_down(cluster, eager_xgboost_autoscaling):
    assert len(cluster.replicas("xgboost")) == 2
    rows = [as_json_row(r) for r in held_out(50)]
    stop, deadline = threading.Event(), time.monotonic() + 120

    def client():
        while not stop.is_set() and time.monotonic() < deadline:
            requests.post(f"{SERVE_URL}/api/v1/predict/batch", json={"instances": rows, "model": "xgboost"}, timeout=60)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    started = time.monotonic()
    for thread in clients:
        thread.start()
    try:
        while time.monotonic() < deadline and len(cluster.replicas("xgboost")) < 3:
            time.sleep(0.5)
        scaled_up = time.monotonic() - started
        peak = len(cluster.replicas("xgboost"))
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    stopped = time.monotonic()
    while time.monotonic() < stopped + 120 and len(cluster.replicas("xgboost")) > 2:
        time.sleep(0.5)
    scaled_down = time.monotonic() - stopped
    print(f"\nautoscaling: 2 -> {peak} replicas after {scaled_up:.1f} s of load, "
          f"back to {len(cluster.replicas('xgboost'))} {scaled_down:.1f} s after it stopped")
    assert peak == 3
    assert len(cluster.replicas("xgboost")) == 2


def _healthy() -> bool:
    try:
        response = requests.get(f"{SERVE_URL}/api/v1/health", timeout=10)
        return response.ok and response.json()["status"] == "healthy"
    except requests.RequestException:
        return False


def test_losing_a_worker_node(cluster):
    """Recovered = Ray has declared the node dead and the application answers healthy again;
    restored = every deployment back to its replica count on the surviving nodes (reported)."""
    victim = "127.0.0.3"
    try:
        with SteadyLoad() as load:
            load.wait_for(10)
            killed_at = time.monotonic()
            cluster.kill_raylet(victim)
            deadline, recovered_at = killed_at + 60, None
            while time.monotonic() < deadline and recovered_at is None:
                if victim not in cluster.alive_nodes() and _healthy():
                    recovered_at = time.monotonic()
                time.sleep(0.2)
            cluster.wait_running(timeout=180)
            restored = time.monotonic() - killed_at
            load.wait_for(20)  # traffic after recovery counts too
            placed = {name: [r["node_ip"] for r in cluster.replicas(name)]
                      for name in ("keras_cnn", "xgboost", "random_forest")}
    finally:  # the other cluster tests, in any order, get three nodes again
        deadline = time.monotonic() + 120
        while victim in cluster.alive_nodes() and time.monotonic() < deadline:  # not yet declared dead
            time.sleep(0.5)
        cluster.replace_node(victim)
    failed_share = len(load.failed) / max(1, len(load.results))
    recovery = (recovered_at - killed_at) if recovered_at else None
    print(f"\nworker node lost: {len(load.results)} requests, {len(load.failed)} failed ({failed_share:.2%}), "
          f"recovered in {recovery if recovery is None else round(recovery, 1)} s, replicas restored in {restored:.1f} s")
    assert recovery is not None and recovery <= 30, recovery
    assert failed_share <= 0.01, Counter(s for _, s in load.failed)
    assert all(victim not in ips for ips in placed.values()), placed


def test_s3_outage_while_serving_then_a_cold_start_from_the_cache(cluster, tmp_path):
    publish_copy(cluster.s3, "xgboost", "1.1.0", "9.3.0", tmp_path)  # published, never loaded
    row = as_json_row(held_out(1)[0])
    cluster.proxy.stop()  # the S3 endpoint goes away
    try:
        with SteadyLoad(limit=300, seconds=60) as load:
            load.wait_for(100)  # well past the router's 1 s alias cache: answers come from what is loaded
        assert len(load.results) > 5 and not load.failed, Counter(s for _, s in load.failed)
        missing = requests.post(PREDICT, json={"features": row, "model": "xgboost", "version": "9.3.0"}, timeout=60)
        assert missing.status_code == 503 and "cannot be reached" in missing.json()["error"], missing.text
        # Cold start with the endpoint still down: every model replica restarts from the local cache.
        killed = {name: {r["pid"] for r in cluster.replicas(name)} for name in ("keras_cnn", "xgboost", "random_forest")}
        for pids in killed.values():
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # every model runs two replicas again, none of them old
            running = {name: {r["pid"] for r in cluster.replicas(name)} for name in killed}
            if all(len(running[n]) == 2 and not running[n] & killed[n] for n in killed):
                break
            time.sleep(0.5)
        cluster.wait_running(timeout=max(1.0, deadline - time.monotonic()))
        assert requests.post(PREDICT, json={"features": row, "model": "ensemble"}, timeout=60).status_code == 200
    finally:
        cluster.proxy.start()  # the endpoint is back
    back = requests.post(PREDICT, json={"features": row, "model": "xgboost", "version": "9.3.0"}, timeout=60)
    assert back.status_code == 200 and back.json()["version"] == "9.3.0"


def _registry_state(registry) -> dict:
    """Every model's and dataset's versions, aliases and (verified) manifests."""
    return {(kind.KIND, name): (kind.versions(name), kind.aliases(name),
                                {v: kind.manifest(name, v) for v in kind.versions(name)})
            for kind in (registry, registry.datasets) for name in kind.names()}


def test_chaos_soak(cluster, request, tmp_path):
    """Two routers, the registry on S3, mixed traffic through the client while faults follow one
    another (tests/chaos.py). Longer: pytest tests/test_cluster.py -k soak --soak-seconds 1800."""
    config = copy.deepcopy(cluster.config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Router":
            deployment["num_replicas"] = 2
    before = _registry_state(cluster.s3)
    cluster.put(config)
    cluster.wait_running()
    soak = Soak(cluster, config, SERVE_URL, [as_json_row(r) for r in held_out(12)],
                seconds=request.config.getoption("soak_seconds"), seed=int(time.time()))
    try:
        report = soak.run()
    finally:
        if not cluster.proxy.running:
            cluster.proxy.start()
        cluster.put(cluster.config)  # one router again, for the other tests in any order
        cluster.wait_running()
    print(f"\nchaos soak (seed {soak.seed}): {report['requests']} requests, {report['retries']} retries "
          f"({report['lost_in_flight']} lost in flight with a killed router) "
          f"{report['retried_statuses']}, p50/p99 {report['p50_p99_ms']} ms, during faults "
          f"{report['p50_p99_ms_during_faults']} ms; faults {report['faults']}")
    assert report["requests"] > 100 and report["kinds"] == ["batch", "ensemble", "explain", "koi", "predict", "v2"]
    assert not report["failed"], report["failed"][:5]
    assert not soak.bad_retries(), soak.bad_retries()
    assert {name for name, _ in report["faults"]} == {"model replica killed", "router replica killed",
                                                       "config redeployed", "S3 away and back"}, report["faults"]
    assert _registry_state(cluster.s3) == before  # versions, aliases and signed manifests intact


def test_feedback_acknowledged_on_s3_survives_sigkill_of_the_router_and_the_controller(cluster):
    """The S3 half of the durability check (tests/test_feedback_api.py has the local store's)."""
    from .test_feedback_api import acknowledged_then_killed, resolved_test_kois

    (koi, label), = resolved_test_kois(1)
    acknowledged_then_killed(cluster, cluster.s3.store, koi, label)
