"""The Ray side of the tests: the project's own local cluster launcher (cluster/local_cluster.py)
and serve_config.yaml adapted to a test registry with test-sized windows."""
from __future__ import annotations

import importlib.util
from pathlib import Path


from serve_app.auth import hash_key
from serve_app.config import read_serve_config
from serve_app.redis_link import PASSWORD_ENV

from .conftest import JwtIssuer
from .marker_guard import require_marker
from .redis_server import PASSWORD as REDIS_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "cluster" / "local_cluster.py")
local_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_cluster)


class LocalCluster(local_cluster.LocalCluster):
    """The project's launcher; starting one fails a test that is not marked `ray`."""

    def start(self) -> "LocalCluster":
        require_marker("ray", "starts Ray")
        return super().start()


SERVE_URL = local_cluster.SERVE_URL
# Metrics exported every 2 s instead of every 10 s, so metric tests wait less.
TEST_ENV = {"RAY_metrics_report_interval_ms": "2000"}


ADMIN_KEY = "test-admin-key"  # its SHA-256 is what the application is given
PREDICT_KEY = "test-predict-key"
FEEDBACK_KEY = "test-feedback-key"  # a labelling pipeline's: the feedback scope only
LIMITED_KEY, LIMITED_RPM = "test-limited-key", 20  # a predict key with its own rate limit
JWT_ISSUER, JWT_AUDIENCE = JwtIssuer.ISSUER, JwtIssuer.AUDIENCE  # what the test tokens carry
MODELS = ("keras_cnn", "xgboost", "random_forest")


def serve_test_config(registry_uri: str, cache_dir: str, verify_key: str | None = None, experiments: bool = True,
                      jwt_public_key: str | None = None, **router_overrides) -> dict:
    """serve_config.yaml pointed at a test registry, with test-sized windows. With `experiments`,
    variant deployments for xgboost (candidate and shadow) and random_forest (candidate), and no
    experiment configured until a test applies one; without, no variant deployments at all."""
    config = read_serve_config(ROOT / "serve_config.yaml")
    app = config["applications"][0]
    app["args"]["registry"] = {"uri": registry_uri, "cache_dir": cache_dir, "verify_key": verify_key}
    env = app["runtime_env"]["env_vars"]
    env[PASSWORD_ENV] = REDIS_PASSWORD  # the test Redis's; only the cache tests point the routers at it
    env["KEPLER_API_KEYS"] = (f"ops:{hash_key(ADMIN_KEY)}:admin+predict,app:{hash_key(PREDICT_KEY)}:predict,"
                              f"limited:{hash_key(LIMITED_KEY)}:predict:{LIMITED_RPM},"
                              f"archive-sync:{hash_key(FEEDBACK_KEY)}:feedback")
    if jwt_public_key:
        env.update(KEPLER_JWT_PUBLIC_KEY=jwt_public_key, KEPLER_JWT_ISSUER=JWT_ISSUER, KEPLER_JWT_AUDIENCE=JWT_AUDIENCE)
    if experiments:
        app["args"]["experiment_pools"] = {"xgboost": {"candidate": True, "shadow": True},
                                           "random_forest": {"candidate": True}}
    else:
        app["args"].pop("experiment_pools", None)
        app["deployments"] = [d for d in app["deployments"] if d["name"] == "Router" or d["name"] in MODELS]
    for deployment in app["deployments"]:
        if deployment["name"] == "Router":
            deployment["user_config"]["experiments"] = {}
        if deployment["name"] == "xgboost":  # two replicas: a dying one must not fail requests
            deployment["autoscaling_config"]["min_replicas"] = 2
        if deployment["name"] == "Router":
            # No prediction cache: tests send the same rows again and again to reach faulty models.
            deployment["user_config"].update({"alias_cache_s": 1, "model_timeout_s": 5, "cache": {"enabled": False},
                                              "breaker": {"failure_threshold": 2, "cooldown_s": 3}},
                                             **router_overrides)
    return config


def single_node() -> "LocalCluster":
    """One head node with room for every replica of the test configuration."""
    return LocalCluster(workers=0, head_cpus=4, env=TEST_ENV).start()
