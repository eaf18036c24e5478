"""What a shadow variant costs the primary: xgboost's p50 at concurrency 1 and 16, without and
with a shadow copy of every request, on one local Ray node running serve_config.yaml.

    .venv/bin/python bench/shadow_cost.py [--requests 400] [--out bench/results]

Uses the registry the quickstart bootstraps (KEPLER_REGISTRY_URI, default ~/.kepler-serve/registry),
training it first when it is empty. Prints a table, writes shadow_cost.{json,md,png} under --out.
Load is a bounded closed loop on 127.0.0.1."""
from __future__ import annotations

import argparse
import copy
import json
import secrets
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, SERVE_URL, LocalCluster, closed_loop, ensure_registry, http_call, progress  # noqa: E402
from serve_app.auth import hash_key  # noqa: E402
from serve_app.config import read_serve_config  # noqa: E402


def config(admin_key: str, shadow: str | None) -> dict:
    base = read_serve_config(ROOT / "serve_config.yaml")
    app = base["applications"][0]
    app["runtime_env"]["env_vars"]["KEPLER_API_KEYS"] = f"bench:{hash_key(admin_key)}:admin+predict"
    app["args"]["experiment_pools"] = {"xgboost": {"candidate": False, "shadow": True}}
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "xgboost_candidate"]
    app["deployments"].append({"name": "xgboost_shadow", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1},
                               "user_config": {"max_batch_size": 32, "batch_wait_timeout_s": 0}})
    for deployment in app["deployments"]:
        if deployment["name"] == "Router":
            deployment["user_config"]["experiments"] = (
                {"xgboost": {"shadow": shadow, "rollback": {"min_samples": 10**9}}} if shadow else {})
    return copy.deepcopy(base)


def wait_shadow_ready(admin_key: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = requests.get(f"{SERVE_URL}/api/v1/experiments", headers={"X-API-Key": admin_key}, timeout=10).json()
        shadow = view.get("experiments", {}).get("xgboost", {}).get("variants", {}).get("shadow", {})
        if shadow.get("ready") and view["router"]["generation"] >= view["generation"]:
            return
        time.sleep(0.5)
    raise RuntimeError("the shadow never became ready")


def measure(concurrency: int, count: int) -> dict:
    body = {"features": [None] * 36, "model": "xgboost"}
    return closed_loop(http_call(threading.local(), "POST", f"{SERVE_URL}/api/v1/predict", body), concurrency, count)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"c={r['concurrency']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["without"]["p50_ms"] for r in rows], 0.4, label="no shadow")
    ax.bar([i + 0.2 for i in x], [r["with"]["p50_ms"] for r in rows], 0.4, label="shadow of every request")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("xgboost p50 (ms)")
    ax.set_title("Shadow traffic's cost to the primary")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="measured requests per concurrency level")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    ensure_registry()
    admin_key = secrets.token_hex(16)
    progress("starting one local Ray node")
    node = LocalCluster(workers=0, head_cpus=2).start()
    rows = []
    try:
        results = {}
        for label, shadow in (("without", None), ("with", "latest")):
            node.deploy(config(admin_key, shadow))
            node.wait_running()
            if shadow:
                wait_shadow_ready(admin_key)
            for concurrency, count in ((1, args.requests), (16, args.requests * 4)):
                progress(f"{label} shadow, concurrency {concurrency}: {count} requests")
                results[(label, concurrency)] = measure(concurrency, count)
        view = requests.get(f"{SERVE_URL}/api/v1/experiments", headers={"X-API-Key": admin_key}, timeout=10).json()
        shadow_stats = view["experiments"]["xgboost"]["variants"]["shadow"]
    finally:
        node.stop()
    for concurrency in (1, 16):
        without, with_ = results[("without", concurrency)], results[("with", concurrency)]
        rows.append({"concurrency": concurrency, "without": without, "with": with_,
                     "p50_cost_ms": round(with_["p50_ms"] - without["p50_ms"], 3)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shadow_cost.json").write_text(json.dumps({"rows": rows, "shadow": shadow_stats}, indent=1) + "\n")
    table = ["| concurrency | p50 without | p50 with shadow | cost | rps without | rps with |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['concurrency']} | {r['without']['p50_ms']} ms | {r['with']['p50_ms']} ms | "
              f"{r['p50_cost_ms']:+.3f} ms | {r['without']['rps']} | {r['with']['rps']} |" for r in rows]
    table.append(f"\nshadow copies compared: {shadow_stats.get('compared')}, dropped: {shadow_stats.get('dropped')}")
    (args.out / "shadow_cost.md").write_text("\n".join(table) + "\n")
    plot(rows, args.out / "shadow_cost.png")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
