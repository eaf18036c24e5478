"""A real Ray node and the Serve application from serve_config.yaml, started for the tests.

`ray start --block` stays in the foreground and stops every process it started when it is
terminated, so teardown touches only this cluster's processes (never `ray stop`, which would stop
every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from .conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVE_URL = "http://127.0.0.1:8000"


def ray_env() -> dict[str, str]:
    # A local test cluster: token authentication off, as for every `ray start`, `serve` and client.
    # Metrics exported every 2 s instead of every 10 s, so metric tests wait less.
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_metrics_report_interval_ms": "2000"}


def test_config(registry_uri: str, cache_dir: str, verify_key: str | None = None, **router_overrides) -> dict:
    """serve_config.yaml pointed at a test registry, with test-sized windows."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = config["applications"][0]
    app["args"]["registry"] = {"uri": registry_uri, "cache_dir": cache_dir, "verify_key": verify_key}
    for deployment in app["deployments"]:
        if deployment["name"] == "xgboost":  # two replicas: a dying one must not fail requests
            deployment["autoscaling_config"]["min_replicas"] = 2
        if deployment["name"] == "Router":
            deployment["user_config"].update({"alias_cache_s": 1, "model_timeout_s": 5,
                                              "breaker": {"failure_threshold": 2, "cooldown_s": 3}},
                                             **router_overrides)
    return config


class RayNode:
    def __init__(self, node_ip: str = "127.0.0.2", num_cpus: int = 4):
        self.node_ip = node_ip
        self.num_cpus = num_cpus
        self.temp_dir = Path(tempfile.mkdtemp(prefix="kray", dir="/tmp"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.temp_dir / "ray-start.log", "ab")
        self.process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--node-ip-address={self.node_ip}",
             f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
             f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
             f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
            stdout=log, stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True)
        wait_for_port(self.dashboard_port, timeout=120, process=self.process)

    def deploy(self, config: dict) -> None:
        path = self.temp_dir / f"serve-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address", self.dashboard_url],
                                capture_output=True, text=True, env=ray_env(), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"serve deploy failed: {result.stdout}\n{result.stderr}")

    def serve_status(self) -> dict:
        return requests.get(f"{self.dashboard_url}/api/serve/applications/", timeout=10).json()

    def wait_healthy(self, timeout: float = 240) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                response = requests.get(f"{SERVE_URL}/api/v1/health", timeout=5)
                last = response.text
                if response.ok and response.json()["status"] == "healthy":
                    return response.json()
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.5)
        raise TimeoutError(f"the application is not healthy after {timeout}s: {last}\n{self.logs_tail()}")

    def wait_running(self, timeout: float = 240) -> None:
        """The application RUNNING with every deployment HEALTHY, and the API healthy."""
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            status = self.serve_status()["applications"].get("kepler", {})
            deployments = status.get("deployments", {}).values()
            if status.get("status") == "RUNNING" and all(d["status"] == "HEALTHY" for d in deployments):
                self.wait_healthy(max(1.0, deadline - time.monotonic()))
                return
            time.sleep(0.5)
        raise TimeoutError(f"application not RUNNING after {timeout}s: {json.dumps(status)[-2000:]}")

    def logs_tail(self) -> str:
        status = json.dumps(self.serve_status(), indent=1)[-3000:] if self.process else ""
        return status

    def replica_actors(self, deployment: str) -> list[str]:
        details = self.serve_status()["applications"]["kepler"]["deployments"][deployment]["replicas"]
        return [r["actor_name"] for r in details if r["state"] == "RUNNING"]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
