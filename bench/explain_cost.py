"""What an explanation costs: POST /api/v1/explain per family and for the ensemble (one KOI by
name, the default version) at concurrency 1 (p50) and 16 (throughput), beside the same
prediction, and each runtime's `explain` in process for 1 and 32 rows, on one local Ray node
running serve_config.yaml.

    .venv/bin/python bench/explain_cost.py [--requests 40] [--out bench/results]

Uses the registry the quickstart bootstraps (KEPLER_REGISTRY_URI, default ~/.kepler-serve/registry),
training it first when it is empty. Prints a table, writes explain_cost.{json,md,png} under --out.
Load is a bounded closed loop on 127.0.0.1. The ratio of explain to predict time is what
`explain_cost` (rate-limit tokens per explained row) is set from."""
from __future__ import annotations

import argparse
import copy
import json
import secrets
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, SERVE_URL, LocalCluster, closed_loop, ensure_registry, http_call, progress  # noqa: E402
from runtimes import MODEL_NAMES, load  # noqa: E402
from serve_app.auth import hash_key  # noqa: E402
from serve_app.config import read_serve_config  # noqa: E402

ROUTES = (*MODEL_NAMES, "ensemble")
KOI = "Kepler-227 b"


def config(key: str) -> dict:
    base = copy.deepcopy(read_serve_config(ROOT / "serve_config.yaml"))
    app = base["applications"][0]
    app["runtime_env"]["env_vars"]["KEPLER_API_KEYS"] = f"bench:{hash_key(key)}:predict:100000000"
    for deployment in app["deployments"]:
        if deployment["name"] == "Router":
            deployment["user_config"]["auth"] = {"enabled": True, "requests_per_minute": 100}
            deployment["user_config"]["experiments"] = {}  # explanations take no part; keep predictions alike
    return base


def in_process(registry, rows: np.ndarray) -> dict:
    """Each runtime's explain on 1 and 32 rows, median of a few runs, in milliseconds."""
    results = {}
    for name in MODEL_NAMES:
        runtime = load(name, registry.pull(name, registry.resolve(name, "stable")), threads=1)
        X = _columns(rows, runtime.features)
        runtime.explain(X[:1])  # traces, caches
        timings = {}
        for n in (1, 32):
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                runtime.explain(X[:n])
                runs.append((time.perf_counter() - started) * 1000)
            timings[f"{n}_rows_ms"] = round(float(np.median(runs)), 2)
        started = time.perf_counter()
        runtime.predict_proba(X[:1])
        timings["predict_1_row_ms"] = round((time.perf_counter() - started) * 1000, 3)
        progress(f"in process: {name} {timings}")
        results[name] = timings
    return results


def _columns(table, features) -> np.ndarray:
    return table.loc[:, list(features)].to_numpy(dtype=np.float32)


def measure(key: str, count: int) -> dict:
    headers = {"X-API-Key": key}
    results = {}
    for route in ROUTES:
        for verb in ("predict", "explain"):
            body = {"koi": KOI, "model": route}
            url = f"{SERVE_URL}/api/v1/{verb}"
            for concurrency, n in ((1, count), (16, 2 * count)):
                progress(f"{verb} {route}, concurrency {concurrency}: {n} requests")
                results[f"{verb} {route} c={concurrency}"] = closed_loop(
                    http_call(threading.local(), "POST", url, body, headers), concurrency, n, warmup=5)
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    x = np.arange(len(ROUTES))
    for ax, (concurrency, field, label) in zip(axes, ((1, "p50_ms", "p50 at c=1 (ms, log)"),
                                                      (16, "rps", "requests/s at c=16"))):
        for offset, verb in ((-0.2, "predict"), (0.2, "explain")):
            ax.bar(x + offset, [results[f"{verb} {r} c={concurrency}"][field] or 0 for r in ROUTES], 0.4, label=verb)
        ax.set_xticks(x, ROUTES, rotation=15)
        ax.set_title(label)
        if field == "p50_ms":
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"Explaining one KOI ({KOI}) vs predicting it, one local node")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(results: dict, floor: dict) -> str:
    lines = ["| route | predict p50 c=1 | explain p50 c=1 | explain p95 c=1 | predict rps c=16 | explain rps c=16 |"
             " failed |", "|---|---|---|---|---|---|---|"]
    for route in ROUTES:
        p1, e1 = results[f"predict {route} c=1"], results[f"explain {route} c=1"]
        p16, e16 = results[f"predict {route} c=16"], results[f"explain {route} c=16"]
        lines.append(f"| {route} | {p1['p50_ms']} ms | {e1['p50_ms']} ms | {e1['p95_ms']} ms | {p16['rps']} | "
                     f"{e16['rps']} | {e1['failed'] + e16['failed']} |")
    lines += ["", "| runtime in process | explain 1 row | explain 32 rows | predict 1 row |", "|---|---|---|---|"]
    lines += [f"| {name} | {t['1_rows_ms']} ms | {t['32_rows_ms']} ms | {t['predict_1_row_ms']} ms |"
              for name, t in floor.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="measured requests at concurrency 1 (twice at 16)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    registry = ensure_registry()
    from training.data import CURRENT, load_snapshot

    snapshot = load_snapshot(CURRENT)
    test_rows = snapshot.table[snapshot.masks()[2]].head(32)
    floor = in_process(registry, test_rows)
    key = secrets.token_hex(16)
    progress("starting one local Ray node")
    node = LocalCluster(workers=0, head_cpus=2).start()
    try:
        node.deploy(config(key))
        node.wait_running()
        results = measure(key, args.requests)
    finally:
        node.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_cost.json").write_text(json.dumps({"http": results, "in_process": floor}, indent=1) + "\n")
    table = markdown(results, floor)
    (args.out / "explain_cost.md").write_text(table)
    plot(results, args.out / "explain_cost.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
