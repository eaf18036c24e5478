"""The chaos soak: mixed traffic through the Python client (with its retries) against the
multi-node cluster with two routers and the registry on S3, while faults follow one another at
random: a model replica killed, a router replica killed, the config redeployed with a changed
setting, the S3 endpoint taken away and brought back. Bounded in time and in requests.

    .venv/bin/python -m pytest tests/test_cluster.py -k soak --soak-seconds 1800   # longer soak

Every call must succeed at the client; every retried answer must be a 503 or 429 that said when
to retry (Retry-After), except the requests in flight on a router when it is SIGKILLed: Serve's
proxy answers those 500 (it turns the dead actor's RayActorError into a 500; no setting changes
that), and the client sends them again (serve_app/client.py). The registry must be intact
afterwards."""
from __future__ import annotations

import copy
import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field

from serve_app.client import KeplerClient, KeplerError, Retried

MODELS = ("keras_cnn", "xgboost", "random_forest")
S3_AWAY_S = 8.0  # longer than the routers' alias cache and a model replica's restart


@dataclass
class Call:
    kind: str
    started: float
    seconds: float
    error: str | None = None


@dataclass
class Soak:
    cluster: object  # tests.ray_cluster.LocalCluster with .proxy (the S3 endpoint in front of moto)
    config: dict  # the application config the soak runs (two routers); redeployed with a change
    url: str
    rows: list
    seconds: float = 100.0
    seed: int = 0
    max_calls: int = 20_000
    calls: list[Call] = field(default_factory=list)
    retries: list[Retried] = field(default_factory=list)
    faults: list[tuple[str, float, float]] = field(default_factory=list)  # (fault, started, ended)
    _stop: threading.Event = field(default_factory=threading.Event)

    # ---- traffic ------------------------------------------------------------------------------
    def _traffic(self, worker: int) -> None:
        client = KeplerClient(self.url, timeout=30, retries=6, backoff_s=0.2, max_backoff_s=5, retry_log=self.retries)
        kinds = [("predict", lambda i: client.predict(self.rows[i % len(self.rows)], model="xgboost")),
                 ("batch", lambda i: client.predict_batch(self.rows[:4], model="ensemble")),
                 ("ensemble", lambda i: client.predict(self.rows[i % len(self.rows)], model="ensemble")),
                 ("v2", lambda i: client.infer("xgboost", self.rows[i % 3:i % 3 + 2])),
                 ("koi", lambda i: client.predict_koi("K00752.01", model="ensemble")),
                 ("explain", lambda i: client.explain(self.rows[i % len(self.rows)], model="xgboost"))]
        i = worker
        while not self._stop.is_set() and len(self.calls) < self.max_calls:
            kind, send = kinds[i % len(kinds)]
            started = time.monotonic()
            try:
                send(i)
                error = None
            except (KeplerError, ConnectionError) as e:
                error = f"{type(e).__name__}: {e}"[:300]
            self.calls.append(Call(kind, started, time.monotonic() - started, error))
            i += 1

    # ---- faults -------------------------------------------------------------------------------
    def _kill_model_replica(self, rng: random.Random) -> None:
        self._kill_one(rng, rng.sample(MODELS, len(MODELS)))

    def _kill_router(self, rng: random.Random) -> None:
        self._kill_one(rng, ["Router"])

    def _kill_one(self, rng: random.Random, deployments: list[str]) -> None:
        """SIGKILL one running replica of the first of `deployments` that has one whose process is
        still there (the controller's list can name a replica that is already stopping), then wait
        until Serve has replaced it."""
        for deployment in deployments:
            running = self.cluster.replicas(deployment)
            for replica in rng.sample(running, len(running)):
                try:
                    os.kill(replica["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    now = {r["pid"] for r in self.cluster.replicas(deployment)}
                    if replica["pid"] not in now and len(now) >= len(running):
                        return
                    time.sleep(0.2)
                raise AssertionError(f"{deployment} replica {replica['pid']} was not replaced in 180 s")
        raise AssertionError(f"no live replica of {deployments} to kill")

    def _redeploy_changed(self, rng: random.Random) -> None:
        config = copy.deepcopy(self.config)
        router = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Router")
        router["user_config"]["model_timeout_s"] = rng.choice([4.0, 6.0, 8.0])
        self.cluster.put(config)

    def _s3_away_and_back(self, rng: random.Random) -> None:
        self.cluster.proxy.stop()
        away_until = time.monotonic() + S3_AWAY_S
        try:
            self._wait_calls(30, timeout=30)  # served while the registry is away
            while time.monotonic() < away_until and not self._stop.is_set():
                self._wait_calls(1, timeout=1)
        finally:
            self.cluster.proxy.start()

    def _wait_calls(self, count: int, timeout: float) -> None:
        target, deadline = len(self.calls) + count, time.monotonic() + timeout
        while len(self.calls) < target and time.monotonic() < deadline:
            time.sleep(0.05)

    def run(self) -> dict:
        rng = random.Random(self.seed)
        faults = {"model replica killed": self._kill_model_replica, "router replica killed": self._kill_router,
                  "config redeployed": self._redeploy_changed, "S3 away and back": self._s3_away_and_back}
        workers = [threading.Thread(target=self._traffic, args=(k,), daemon=True) for k in range(2)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + self.seconds
        try:
            self._wait_calls(20, timeout=60)
            order = rng.sample(sorted(faults), len(faults))  # every fault at least once, then more while time lasts
            while order or time.monotonic() < deadline:
                if not order:
                    order = rng.sample(sorted(faults), len(faults))
                name = order.pop()
                started = time.monotonic()
                faults[name](rng)
                self.cluster.wait_running(timeout=180)
                self._wait_calls(10, timeout=60)  # the service under load again before the next fault
                self.faults.append((name, started, time.monotonic()))
        finally:
            self._stop.set()
            for worker in workers:
                worker.join(60)
        return self.report()

    # ---- the report ---------------------------------------------------------------------------
    def during_faults(self) -> list[Call]:
        return [c for c in self.calls if any(s <= c.started <= e for _, s, e in self.faults)]

    def report(self) -> dict:
        def percentiles(calls: list[Call]) -> tuple[float | None, float | None]:
            ordered = sorted(c.seconds * 1000 for c in calls if c.error is None)
            if not ordered:
                return None, None
            return round(statistics.median(ordered), 1), round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)
        faulted = self.during_faults()
        return {"requests": len(self.calls), "failed": [c for c in self.calls if c.error],
                "retries": len(self.retries), "lost_in_flight": len([r for r in self.retries if r.error == "lost in flight"]),
                "retried_statuses": sorted({(r.status, r.error, r.retry_after) for r in self.retries}, key=str),
                "p50_p99_ms": percentiles(self.calls), "p50_p99_ms_during_faults": percentiles(faulted),
                "faults": [(name, round(e - s, 1)) for name, s, e in self.faults],
                "kinds": sorted({c.kind for c in self.calls})}

    def bad_retries(self) -> list[Retried]:
        """Retried answers that break the rule: a 5xx other than a 503 saying when to retry, or a
        request lost in flight (Serve's proxy's 500) other than with a router that was killed."""
        allowed = len([f for f in self.faults if f[0] == "router replica killed"]) * 2  # two clients in flight
        lost = [r for r in self.retries if r.error == "lost in flight"]
        others = [r for r in self.retries if r.status is not None and r.status >= 500 and r.error != "lost in flight"
                  and not (r.status == 503 and r.retry_after)]
        return others + (lost if len(lost) > allowed else [])
