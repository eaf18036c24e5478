"""What the prediction cache buys on a hit and costs on a miss: the ensemble asked for one KOI
again and again (every member a hit after the first request) and for rows never seen before
(every member a miss, computed and stored), with the cache off, in memory, and in Redis
(Debian's redis-server, started here on loopback), in one run on one local Ray node.

    .venv/bin/python bench/cache.py [--requests 300] [--out bench/results]

Uses the registry the quickstart bootstraps (KEPLER_REGISTRY_URI), training it first when it is
empty. Prints a table, writes cache.{json,md,png} under --out. Load is a bounded closed loop."""
from __future__ import annotations

import argparse
import itertools
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, SERVE_URL, LocalCluster, closed_loop, ensure_registry, http_call, progress  # noqa: E402
from bench.run import bench_row, kepler_config  # noqa: E402
from local_cluster import free_port, wait_for_port  # noqa: E402

SETUPS = ("off", "memory", "redis")
PASSWORD = secrets.token_hex(16)


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", PASSWORD,
                                "--save", "", "--appendonly", "no", "--dir", str(directory),
                                "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 10, process)
    return process, f"redis://127.0.0.1:{port}/0"


def config(key: str, setup: str, redis_url: str) -> dict:
    base = kepler_config(key)
    app = base["applications"][0]
    app["runtime_env"]["env_vars"]["KEPLER_REDIS_PASSWORD"] = PASSWORD  # in every setup: no restart between them
    cache = {"off": {"enabled": False}, "memory": {}, "redis": {"redis_url": redis_url}}[setup]
    for deployment in app["deployments"]:
        if deployment["name"] == "Router":
            deployment["user_config"]["cache"] = cache
    return base


def new_rows(row: list[float]):
    """Bodies whose features no request has sent: the row scaled by a different small factor each
    time (1e-6 apart: distinct in float32, which the models compute in)."""
    counter, lock = itertools.count(1), threading.Lock()

    def body() -> dict:
        with lock:
            n = next(counter)
        return {"features": [v * (1 + n * 1e-6) for v in row], "model": "ensemble"}
    return body


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, field, title in ((axes[0], "p50_ms", "p50 at concurrency 1 (ms)"), (axes[1], "rps", "req/s at concurrency 16")):
        level = "c=1" if field == "p50_ms" else "c=16"
        routes = ["ensemble, repeated KOI", "ensemble, new rows"]
        for i, setup in enumerate(SETUPS):
            values = [table[setup][f"{route} {level}"][field] or 0 for route in routes]
            ax.bar([j + (i - 1) * 0.27 for j in range(len(routes))], values, 0.27, label=f"cache {setup}")
        ax.set_xticks(range(len(routes)), routes)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests at concurrency 1 (x4 at 16)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    ensure_registry()
    key, row, table = secrets.token_hex(16), bench_row(), {}
    headers = {"X-API-Key": key}
    predict = f"{SERVE_URL}/api/v1/predict"
    with tempfile.TemporaryDirectory() as directory:
        redis, redis_url = start_redis(Path(directory))
        progress("starting one local Ray node")
        node = LocalCluster(workers=0, head_cpus=2).start()
        try:
            for setup in SETUPS:
                node.deploy(config(key, setup, redis_url))
                node.wait_running()
                routes = {"ensemble, repeated KOI": {"koi": "K00752.01", "model": "ensemble"},
                          "ensemble, new rows": new_rows(row)}
                table[setup] = {}
                for route, body in routes.items():
                    for concurrency, count in ((1, args.requests), (16, 4 * args.requests)):
                        progress(f"cache {setup}: {route}, concurrency {concurrency}: {count} requests")
                        table[setup][f"{route} c={concurrency}"] = closed_loop(
                            http_call(threading.local(), "POST", predict, body, headers), concurrency, count)
        finally:
            node.stop()
            redis.terminate()
            redis.wait(10)
    lines = ["| cache | route | c | p50 ms | p95 ms | p99 ms | req/s | failed |", "|---|---|---|---|---|---|---|---|"]
    for setup in SETUPS:
        for name, r in table[setup].items():
            route, _, level = name.rpartition(" c=")
            lines.append(f"| {setup} | {route} | {level} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
                         f"{r['rps']} | {r['failed']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache.json").write_text(json.dumps(table, indent=1) + "\n")
    (args.out / "cache.md").write_text("\n".join(lines) + "\n")
    plot(table, args.out / "cache.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
