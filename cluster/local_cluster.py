"""A real Ray cluster on one machine: a head and N worker nodes, each on its own loopback address
(127.0.0.2 for the head, 127.0.0.3, ... for workers), with its own temp directory and ports, then
the Serve application deployed and waited for.

Each node is a `ray start --block` process in a session of its own; stopping the cluster stops
exactly those sessions, never other Ray instances on the machine (which `ray stop` would). Token
authentication is off for this local cluster (RAY_AUTH_MODE=disabled for every node and client);
clusters on a network keep it on (see cluster/kuberay/).

    python cluster/local_cluster.py up [--workers 2] [--config serve_config.yaml] [--put]
    python cluster/local_cluster.py down STATE_FILE

`up` prints the state file to pass to `down`. `--put` applies the config as KubeRay's operator
does (PUT /api/serve/applications/ on the dashboard) instead of `serve deploy`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from serve_app.config import read_serve_config

BIN = Path(sys.executable).parent
SERVE_URL = "http://127.0.0.1:8000"
INGRESS_ENV_FILE = Path(__file__).resolve().parent.parent / "configs" / "ingress.env"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **extra}


def haproxy_ingress_env() -> dict[str, str]:
    """configs/ingress.env: Serve's HAProxy ingress, for single-node Ray (see that file)."""
    lines = (line.strip() for line in INGRESS_ENV_FILE.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode} before {host}:{port} listened")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class LocalCluster:
    def __init__(self, workers: int = 2, cpus_per_node: int = 2, head_cpus: int | None = None,
                 env: dict[str, str] | None = None, root: Path | None = None, haproxy: bool | None = None):
        self.workers = workers
        self.cpus_per_node = cpus_per_node
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        # HAProxy ingress by default on a single node only (configs/ingress.env says why).
        self.haproxy = workers == 0 if haproxy is None else haproxy
        self.env = ray_env(**(haproxy_ingress_env() if self.haproxy else {}), **(env or {}))
        self.root = Path(root or tempfile.mkdtemp(prefix="kcluster", dir="/tmp"))
        self.head_ip = "127.0.0.2"
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: list[dict] = []  # {"ip", "pid", "temp_dir"}

    @property
    def temp_dir(self) -> Path:
        """The head's temp directory: Ray's metrics service-discovery file and session logs."""
        return self.root / "head"

    def _start_node(self, ip: str, temp_dir: Path, head: bool) -> subprocess.Popen:
        temp_dir.mkdir(parents=True, exist_ok=True)
        common = [f"--node-ip-address={ip}", f"--temp-dir={temp_dir}", "--block", "--disable-usage-stats",
                  f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        if head:
            # The "head" resource lets a config pin actors (the router) to the head node.
            args = ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}", f"--num-cpus={self.head_cpus}",
                    '--resources={"head": 1}']
        else:
            args = [f"--address={self.head_ip}:{self.gcs_port}", f"--num-cpus={self.cpus_per_node}"]
        log = open(temp_dir.parent / f"ray-start-{ip}.log", "ab")
        process = subprocess.Popen([str(BIN / "ray"), "start", *args, *common], stdout=log, stderr=subprocess.STDOUT,
                                   env=self.env, start_new_session=True)
        self.nodes.append({"ip": ip, "pid": process.pid, "temp_dir": str(temp_dir)})
        return process

    def start(self) -> "LocalCluster":
        head = self._start_node(self.head_ip, self.temp_dir, head=True)
        wait_for_port("127.0.0.1", self.dashboard_port, 120, head)
        for i in range(self.workers):
            self._start_node(f"127.0.0.{3 + i}", self.root / f"worker{i + 1}", head=False)
        self.wait_for_nodes(1 + self.workers)
        return self

    def replace_node(self, ip: str) -> None:
        """A fresh worker node on the address of one that was lost (its own new temp directory)."""
        # A short directory name: Ray's socket paths under it must stay within 107 bytes.
        self._start_node(ip, self.root / f"node{len(self.nodes)}", head=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ip not in self.alive_nodes():
            time.sleep(0.5)
        if ip not in self.alive_nodes():
            raise TimeoutError(f"no node came back on {ip}")

    def alive_nodes(self) -> list[str]:
        nodes = requests.get(f"{self.dashboard_url}/nodes?view=summary", timeout=10).json()
        summary = nodes.get("data", {}).get("summary", [])
        return sorted(n["raylet"]["nodeManagerAddress"] for n in summary if n["raylet"]["state"] == "ALIVE")

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {count} Ray nodes alive after {timeout}s")

    # ---- the Serve application -------------------------------------------------------------
    def deploy(self, config: dict) -> None:
        """`serve deploy`, as a user of a RayCluster would."""
        path = self.root / f"serve-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address", self.dashboard_url],
                                capture_output=True, text=True, env=self.env, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"serve deploy failed: {result.stdout}\n{result.stderr}")

    def put(self, config: dict) -> None:
        """PUT the config to the dashboard's REST API, as KubeRay's operator applies serveConfigV2."""
        response = requests.put(f"{self.dashboard_url}/api/serve/applications/", json=config, timeout=60)
        if not response.ok:
            raise RuntimeError(f"PUT /api/serve/applications/ failed: {response.status_code} {response.text}")

    def serve_status(self) -> dict:
        return requests.get(f"{self.dashboard_url}/api/serve/applications/", timeout=30).json()

    def wait_running(self, app: str = "kepler", timeout: float = 300, health_endpoint: bool = True) -> None:
        """The application RUNNING with every deployment HEALTHY and no replica starting or stopping
        (a replica draining after a downscale still takes requests), and (kepler-serve's) health
        endpoint healthy."""
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                status = self.serve_status()["applications"].get(app, {})
                deployments = status.get("deployments", {}).values()
                if status.get("status") == "RUNNING" and deployments and all(
                        d["status"] == "HEALTHY" and all(r["state"] == "RUNNING" for r in d.get("replicas", []))
                        for d in deployments):
                    if not health_endpoint:
                        return
                    health = requests.get(f"{SERVE_URL}/api/v1/health", timeout=5)
                    if health.ok and health.json()["status"] == "healthy":
                        return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"application {app} not RUNNING and healthy after {timeout}s: "
                           f"{json.dumps(status)[-2000:]}")

    def replicas(self, deployment: str, app: str = "kepler") -> list[dict]:
        details = self.serve_status()["applications"][app]["deployments"][deployment]["replicas"]
        return [r for r in details if r["state"] == "RUNNING"]

    # ---- faults and teardown ------------------------------------------------------------------
    def kill_raylet(self, ip: str) -> None:
        """SIGKILL the raylet of one node: the node is lost with everything on it."""
        subprocess.run(["pkill", "-KILL", "-f", f"raylet.*--node_ip_address={ip}( |$)"], check=False)

    def stop(self, grace_s: float = 60) -> None:
        """SIGTERM to every node's `ray start`, SIGKILL to what is left after `grace_s` (a
        throwaway test cluster has nothing worth a graceful shutdown)."""
        for node in reversed(self.nodes):  # workers first, the head last
            try:
                os.killpg(node["pid"], signal.SIGTERM)
            except ProcessLookupError:
                continue
        for node in self.nodes:
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _alive(node["pid"]):
                time.sleep(0.2)
            if _alive(node["pid"]):
                os.killpg(node["pid"], signal.SIGKILL)
        # Whatever a node started in process groups of its own (HAProxy, reloaded by its manager
        # actor, outlives the raylet) is still in the node's session: stop those too.
        for node in self.nodes:
            for pid in _session_members(node["pid"]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_session_members(n["pid"]) for n in self.nodes):
            time.sleep(0.1)

    def state(self) -> dict:
        return {"root": str(self.root), "dashboard_url": self.dashboard_url, "nodes": self.nodes}


def _session_members(session_id: int) -> list[int]:
    """Live processes (zombies aside) of the session that `ray start`, started with
    start_new_session, leads."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session_id and \
                        (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                    members.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return members


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is dead too
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--cpus-per-node", type=int, default=2)
    up.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "serve_config.yaml"))
    up.add_argument("--put", action="store_true", help="apply via the dashboard REST API, as KubeRay does")
    down = verbs.add_parser("down")
    down.add_argument("state_file")
    args = parser.parse_args(argv)
    if args.verb == "down":
        state = json.loads(Path(args.state_file).read_text())
        cluster = LocalCluster(workers=0)
        cluster.nodes = state["nodes"]
        cluster.stop()
        print("stopped", ", ".join(n["ip"] for n in state["nodes"]))
        return 0
    cluster = LocalCluster(workers=args.workers, cpus_per_node=args.cpus_per_node).start()
    state_file = cluster.root / "cluster.json"
    state_file.write_text(json.dumps(cluster.state()))
    print(f"nodes up: {', '.join(cluster.alive_nodes())}; dashboard {cluster.dashboard_url}", flush=True)
    config = read_serve_config(args.config)
    cluster.put(config) if args.put else cluster.deploy(config)
    print("deploying ...", flush=True)
    cluster.wait_running()
    print(f"serving on {SERVE_URL}; stop with: python {Path(__file__).name} down {state_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
