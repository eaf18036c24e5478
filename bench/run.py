"""The benchmark: kepler-serve from serve_config.yaml (authentication, JSON logs and metrics on,
a benchmark key with a raised rate limit) against the in-process floor, a one-deployment Serve
baseline and MLServer, for the same artifacts, on 127.0.0.1.

    .venv/bin/python bench/run.py [--requests 300] [--only kepler,mlserver] [--routes xgboost,ensemble]
                                  [--set Router.user_config.batching.calls_in_flight=1]
                                  [--ingress proxy] [--ray-env RAY_SERVE_X=1] [--out bench/results]

One lever per run: --set changes serve_config.yaml, --ingress and --ray-env the environment of
`ray start`; --out elsewhere keeps bench/results for the run of record.

Prints p50/p95/p99 and throughput per route at concurrency 1 and 16, each replica's CPU time per
request at 16, memory per replica (USS and PSS), the targets as ratios, and a comparison with the previous run; writes benchmark.json (kept
for the next comparison), benchmark.md and benchmark.png under --out."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import sys
import threading
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (ROOT, SERVE_URL, LocalCluster, closed_loop, cpu_seconds, ensure_registry,  # noqa: E402
                          http_call, memory_mb, progress)
from runtimes import MODEL_NAMES, load  # noqa: E402
from serve_app.auth import hash_key  # noqa: E402
from serve_app.config import read_serve_config  # noqa: E402

SERVERS = ("floor", "kepler", "one_deployment", "mlserver")
WARMUP = 30  # requests sent before each measured closed loop
SEED_MEMORY_MB = {"keras_cnn": 800, "xgboost": 300, "random_forest": 500}


def bench_row() -> list[float]:
    """A real held-out KOI with every feature present, so every server sees the same numbers."""
    from training.data import load_snapshot

    snapshot = load_snapshot()
    _, _, test = snapshot.masks()
    complete = snapshot.X[test][~np.isnan(snapshot.X[test]).any(axis=1)]
    return [float(v) for v in complete[0]]


def kepler_config(key: str, overrides: list[str] = ()) -> dict:
    config = read_serve_config(ROOT / "serve_config.yaml")
    app = config["applications"][0]
    app["runtime_env"]["env_vars"]["KEPLER_API_KEYS"] = f"bench:{hash_key(key)}:predict:100000000"
    for deployment in app["deployments"]:
        if deployment["name"] == "Router":
            deployment["user_config"]["auth"] = {"enabled": True, "requests_per_minute": 100}
            # The same row every request: with the cache on this would measure cache hits, not the
            # serving path (bench/cache.py measures the cache).
            deployment["user_config"]["cache"] = {"enabled": False}
    for override in overrides:
        apply_override(app, override)
    return config


def apply_override(app: dict, override: str) -> None:
    """`Router.user_config.batching.calls_in_flight=1` (a deployment entry) or `env.NAME=VALUE` (the
    application's runtime_env): one lever changed for a run, the value read as YAML."""
    path, _, value = override.partition("=")
    first, *keys = path.split(".")
    if not keys or not value:
        raise SystemExit(f"--set {override!r}: expected DEPLOYMENT.key[.key...]=VALUE or env.NAME=VALUE")
    if first == "env":
        if len(keys) != 1:
            raise SystemExit(f"--set {override!r}: expected env.NAME=VALUE")
        node, value = app["runtime_env"]["env_vars"], str(value)
    else:
        node = next((d for d in app["deployments"] if d["name"] == first), None)
        if node is None:
            raise SystemExit(f"--set {override!r}: no deployment {first!r} in serve_config.yaml")
        value = yaml.safe_load(value)
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def baseline_config() -> dict:
    return {"http_options": {"host": "127.0.0.1", "port": 8000},
            "logging_config": {"encoding": "JSON", "enable_access_log": False},
            "applications": [{"name": "baseline", "route_prefix": "/", "import_path": "bench.one_deployment:build",
                              "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT), **_registry_env()}},
                              "args": {"version": "stable"}}]}


def _registry_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("KEPLER_") or k.startswith("AWS_")}


def levels(requests_: int) -> list[tuple[int, int]]:
    return [(1, requests_), (16, 4 * requests_)]


def measure_floor(registry, versions: dict[str, str], row: list[float], count: int) -> dict:
    floor = {}
    for name in MODEL_NAMES:
        runtime = load(name, registry.pull(name, versions[name]), threads=1)
        X = np.asarray([row], dtype=np.float32)
        progress(f"in-process floor: {name}")
        floor[name] = closed_loop(lambda: runtime.predict_proba(X) is not None, 1, count)
    return floor


def measure_kepler(key: str, row: list[float], count: int, only_routes: set[str] | None = None,
                   pids: dict[str, int] | None = None) -> dict:
    """Latency and throughput per route and concurrency; with `pids` (replica -> pid), each
    replica's CPU milliseconds per request at concurrency 16 as well: a figure that moves far
    less than req/s when the machine's speed does, and says which process a change made cheaper."""
    headers = {"X-API-Key": key}
    predict, batch = f"{SERVE_URL}/api/v1/predict", f"{SERVE_URL}/api/v1/predict/batch"
    v2_body = {"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": row}]}
    routes = {f"{m}": ("POST", predict, {"features": row, "model": m}) for m in (*MODEL_NAMES, "ensemble")}
    routes["batch32 ensemble"] = ("POST", batch, {"instances": [row] * 32, "model": "ensemble"})
    routes["v2 xgboost"] = ("POST", f"{SERVE_URL}/v2/models/xgboost/infer", v2_body)
    # The catalogue lookup (name -> 69 features) in front of the same path.
    routes["xgboost by KOI name"] = ("POST", predict, {"koi": "Kepler-227 b", "model": "xgboost"})
    results = {}
    for route, (method, url, body) in routes.items():
        if only_routes and route not in only_routes:
            continue
        concurrencies = levels(count) + ([(4, count)] if route.startswith("batch") else [])
        for concurrency, n in concurrencies:
            progress(f"kepler-serve {route}, concurrency {concurrency}: {n} requests")
            before = cpu_seconds(pids or {}) if concurrency == 16 else {}
            result = closed_loop(http_call(threading.local(), method, url, body, headers), concurrency, n, WARMUP)
            if before:
                after = cpu_seconds(pids)
                served = result["requests"] + WARMUP  # the warm-up requests ran inside the window too
                result["cpu_ms_per_request"] = {name: round((after[name] - before[name]) * 1000 / served, 3)
                                                for name in pids if after[name] > before[name]}
            results[f"{route} c={concurrency}"] = result
    return results


def replica_pids(node) -> dict[str, int]:
    return {f"{name}#{i}": replica["pid"]
            for name, deployment in node.serve_status()["applications"]["kepler"]["deployments"].items()
            for i, replica in enumerate(r for r in deployment["replicas"] if r["state"] == "RUNNING")}


def replica_memory(node) -> dict:
    return {name: memory_mb(pid) for name, pid in replica_pids(node).items()}


def measure_baseline(row: list[float], count: int) -> dict:
    results = {}
    for concurrency, n in levels(count):
        progress(f"one-deployment Serve baseline, concurrency {concurrency}: {n} requests")
        results[f"xgboost c={concurrency}"] = closed_loop(
            http_call(threading.local(), "POST", f"{SERVE_URL}/", {"features": row}), concurrency, n)
    return results


def measure_mlserver(registry, versions: dict[str, str], row: list[float], count: int) -> tuple[dict, dict]:
    from local_cluster import free_port  # cluster/ is on the path (bench.common)

    from bench.mlserver_peer import MLServer, ensure_venv, model_repository

    ensure_venv()
    server = MLServer(model_repository(registry, versions), free_port(), free_port(), free_port()).start()
    results = {}
    try:
        for name in ("xgboost", "random_forest"):
            body = {"inputs": [{"name": "predict", "shape": [1, 36], "datatype": "FP32", "data": row}],
                    "outputs": [{"name": "predict_proba"}]}
            for concurrency, n in levels(count):
                progress(f"MLServer {name}, concurrency {concurrency}: {n} requests")
                results[f"{name} c={concurrency}"] = closed_loop(
                    http_call(threading.local(), "POST", f"{server.url}/v2/models/{name}/infer", body), concurrency, n)
        memory = {f"mlserver pid {pid}": memory_mb(pid) for pid in server.pids()}
    finally:
        server.stop()
    return results, memory


def targets(results: dict) -> list[dict]:
    kepler, peer = results.get("kepler", {}), results.get("mlserver", {})

    def get(table, key, field):
        return (table.get(key) or {}).get(field)

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    rows = [
        ("xgboost c=16 throughput / MLServer's", ratio(get(kepler, "xgboost c=16", "rps"), get(peer, "xgboost c=16", "rps")), ">= 1"),
        ("xgboost c=1 p50 / MLServer's", ratio(get(kepler, "xgboost c=1", "p50_ms"), get(peer, "xgboost c=1", "p50_ms")), "<= 2"),
        ("ensemble c=16 throughput / MLServer's xgboost", ratio(get(kepler, "ensemble c=16", "rps"), get(peer, "xgboost c=16", "rps")), ">= 0.8"),
        ("keras_cnn c=1 p50 / xgboost's", ratio(get(kepler, "keras_cnn c=1", "p50_ms"), get(kepler, "xgboost c=1", "p50_ms")), "<= 1.5"),
        ("batch32 ensemble c=4 rows/s / ensemble c=16 rows/s",
         ratio((get(kepler, "batch32 ensemble c=4", "rps") or 0) * 32, get(kepler, "ensemble c=16", "rps")), ">= 20"),
    ]
    out = []
    for name, value, goal in rows:
        op, bound = goal.split()
        met = None if value is None else (value >= float(bound) if op == ">=" else value <= float(bound))
        out.append({"target": name, "value": value, "goal": goal, "met": met})
    for replica, memory in results.get("memory", {}).items():
        model = replica.split("#")[0].removesuffix("_candidate").removesuffix("_shadow")
        if model in SEED_MEMORY_MB:
            out.append({"target": f"{replica} PSS MB", "value": memory["pss_mb"], "goal": f"<= {SEED_MEMORY_MB[model]}",
                        "met": memory["pss_mb"] <= SEED_MEMORY_MB[model]})
    return out


def markdown(results: dict, previous: dict | None) -> str:
    lines = [f"benchmark of {results['started']} on {results['machine']['cpus']} CPUs ({results['machine']['platform']}), "
             f"ingress: {results.get('ingress', 'proxy')}{', ray env ' + str(results['ray_env']) if results.get('ray_env') else ''}"
             f"{', overrides ' + ' '.join(results['overrides']) if results.get('overrides') else ''}",
             "", "| server | route | c | p50 ms | p95 ms | p99 ms | req/s | failed | vs previous req/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for server in ("floor", "kepler", "one_deployment", "mlserver"):
        for key, row in results.get(server, {}).items():
            route, _, level = key.rpartition(" c=") if " c=" in key else (key, "", "1")
            before = ((previous or {}).get(server) or {}).get(key, {}).get("rps")
            delta = f"{(row['rps'] - before) / before:+.0%}" if before and row.get("rps") else ""
            lines.append(f"| {server} | {route} | {level} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} | "
                         f"{row['rps']} | {row['failed']} | {delta} |")
    cpu = {key: row["cpu_ms_per_request"] for key, row in results.get("kepler", {}).items() if row.get("cpu_ms_per_request")}
    if cpu:
        replicas = sorted({name for per in cpu.values() for name in per})
        lines += ["", "| CPU ms per request (c=16) | " + " | ".join(replicas) + " |", "|---" * (len(replicas) + 1) + "|"]
        lines += [f"| {key} | " + " | ".join(str(per.get(name, "")) for name in replicas) + " |" for key, per in cpu.items()]
    lines += ["", "| memory | USS MB | PSS MB |", "|---|---|---|"]
    lines += [f"| {name} | {m['uss_mb']} | {m['pss_mb']} |" for name, m in
              {**results.get("memory", {}), **results.get("mlserver_memory", {})}.items()]
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['goal']} | {t['met']} |" for t in results["targets"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"kepler {k}", v["rps"]) for k, v in results.get("kepler", {}).items() if k.endswith("c=16")]
    bars += [(f"one-deployment {k}", v["rps"]) for k, v in results.get("one_deployment", {}).items() if k.endswith("c=16")]
    bars += [(f"MLServer {k}", v["rps"]) for k, v in results.get("mlserver", {}).items() if k.endswith("c=16")]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(bars) + 1.5))
    ax.barh([b[0] for b in bars], [b[1] or 0 for b in bars], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("requests per second at concurrency 16 (batch32: 32 rows per request)")
    ax.set_title(f"Throughput on {results['machine']['cpus']} CPUs, loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests at concurrency 1 (x4 at 16)")
    parser.add_argument("--only", default=",".join(SERVERS), help=f"servers to measure, of {','.join(SERVERS)}")
    parser.add_argument("--skip-mlserver", action="store_true", help="the same as leaving mlserver out of --only")
    parser.add_argument("--routes", default="", help="kepler-serve routes to measure (default: all), "
                                                     "e.g. 'xgboost,ensemble,batch32 ensemble,v2 xgboost,xgboost by KOI name'")
    parser.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy",
                        help="Serve's HAProxy ingress (configs/ingress.env) or its Python proxy actor")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", dest="overrides",
                        help="change serve_config.yaml for this run: Router.user_config.batching.calls_in_flight=1, "
                             "xgboost.user_config.batch_wait_timeout_s=0.002, env.RAY_SERVE_USE_GRPC_BY_DEFAULT=0")
    parser.add_argument("--ray-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of `ray start` (Serve's proxy and controller settings); repeatable")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) - ({"mlserver"} if args.skip_mlserver else set())
    routes = {r.strip() for r in args.routes.split(",") if r.strip()} or None
    ray_env = dict(item.split("=", 1) for item in args.ray_env)
    registry = ensure_registry()
    versions = {name: registry.resolve(name, "stable") for name in MODEL_NAMES}
    row, key = bench_row(), secrets.token_hex(16)
    results = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": versions,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "ray_env": ray_env,
               "ingress": args.ingress, "overrides": args.overrides}
    if "floor" in only:
        results["floor"] = measure_floor(registry, versions, row, args.requests)
    if only & {"kepler", "one_deployment"}:
        progress(f"starting one local Ray node {ray_env or ''}")
        node = LocalCluster(workers=0, head_cpus=2, env=ray_env, haproxy=args.ingress == "haproxy").start()
        try:
            if "kepler" in only:
                node.deploy(kepler_config(key, args.overrides))
                node.wait_running()
                results["kepler"] = measure_kepler(key, row, args.requests, routes, replica_pids(node))
                results["memory"] = replica_memory(node)
            if "one_deployment" in only:
                node.deploy(baseline_config())
                node.wait_running(app="baseline", health_endpoint=False)
                results["one_deployment"] = measure_baseline(row, args.requests)
        finally:
            node.stop()
    if "mlserver" in only:
        results["mlserver"], results["mlserver_memory"] = measure_mlserver(registry, versions, row, args.requests)
    results["targets"] = targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    latest = args.out / "benchmark.json"
    previous = json.loads(latest.read_text()) if latest.exists() else None
    if previous:
        (args.out / "benchmark.previous.json").write_text(latest.read_text())
    latest.write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results, previous)
    (args.out / "benchmark.md").write_text(table)
    plot(results, args.out / "benchmark.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
