"""What the benchmarks share: progress lines, the registry they serve, a local Ray node, a
bounded closed-loop load generator on 127.0.0.1, and per-process memory."""
from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cluster"))

from local_cluster import SERVE_URL, LocalCluster  # noqa: E402,F401


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_registry():
    """The registry the quickstart bootstraps (KEPLER_REGISTRY_URI), trained first when empty."""
    from registry import RegistryConfig
    from training.train import main as train

    registry = RegistryConfig.from_env().open()
    if not registry.models():
        progress("registry empty: bootstrapping it as the quickstart does (about four and a half minutes)")
        train([])
    return registry


def closed_loop(call: Callable[[], bool], concurrency: int, count: int, warmup: int = 30,
                max_seconds: float = 120) -> dict:
    """`count` calls from `concurrency` clients, each waiting for its answer before the next;
    bounded in count and time. Latency percentiles of the successful calls, and throughput."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    remaining = [warmup]

    def client(budget: list[int], record: bool, deadline: float) -> None:
        nonlocal failures
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            started = time.perf_counter()
            ok = call()
            elapsed = (time.perf_counter() - started) * 1000
            if record:
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        failures += 1

    def run(budget: list[int], record: bool) -> float:
        deadline = time.monotonic() + max_seconds
        threads = [threading.Thread(target=client, args=(budget, record, deadline)) for _ in range(concurrency)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    run(remaining, record=False)
    seconds = run([count], record=True)
    ordered = sorted(latencies)

    def percentile(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None

    return {"concurrency": concurrency, "requests": count, "ok": len(ordered), "failed": failures,
            "p50_ms": round(statistics.median(ordered), 3) if ordered else None,
            "p95_ms": percentile(0.95), "p99_ms": percentile(0.99),
            "rps": round(len(ordered) / seconds, 1) if seconds else None}


def http_call(session_local: threading.local, method: str, url: str, body=None, headers=None) -> Callable[[], bool]:
    """A request that reuses one keep-alive connection per client thread; `body` may be a
    function that makes each request's body."""
    def call() -> bool:
        session = getattr(session_local, "session", None)
        if session is None:
            session = session_local.session = requests.Session()
        try:
            return session.request(method, url, json=body() if callable(body) else body, headers=headers,
                                   timeout=60).status_code == 200
        except requests.RequestException:
            return False
    return call


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User plus system CPU seconds each process has used so far (0 for one that is gone)."""
    import psutil

    seconds = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            seconds[name] = times.user + times.system
        except psutil.Error:
            seconds[name] = 0.0
    return seconds


def memory_mb(pid: int) -> dict:
    """Unique and proportional set sizes (what the process alone holds, and its fair share of
    shared pages), not RSS, which counts shared libraries once per process."""
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"uss_mb": round(info.uss / 2**20, 1), "pss_mb": round(getattr(info, "pss", 0) / 2**20, 1)}
