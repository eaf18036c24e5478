"""Configuration in one place: the README's settings table is generated from the typed models,
serve_config.yaml's shared blocks expand into independent copies, and the application's version
is the package's."""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.config import AppArgs, BatchSettings, RegistrySettings, RouterSettings, read_serve_config
from serve_app.http import APP_VERSION, openapi_schema
from serve_app.settings_table import table

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_settings_table_is_generated_from_the_config_models():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    assert readme[readme.index(start) + len(start):readme.index(end)] == table(), \
        "README settings table is stale: python -m serve_app.settings_table"
    for field in ("max_batch_size", "batching.max_rows", "KEPLER_JWT_ISSUER", "args.models.<model>.preload"):
        assert field in table()


def test_shared_deployment_blocks_expand_into_independent_copies():
    config = read_serve_config(ROOT / "serve_config.yaml")
    app = config["applications"][0]
    AppArgs(**app["args"])
    deployments = {d["name"]: d for d in app["deployments"]}
    models = [deployments[m] for m in ("keras_cnn", "xgboost", "random_forest")]
    assert all(m["autoscaling_config"] == models[0]["autoscaling_config"] for m in models)
    models[0]["user_config"]["max_batch_size"] = 8
    models[0]["autoscaling_config"]["max_replicas"] = 9
    assert "max_batch_size" not in models[1]["user_config"] and models[2]["autoscaling_config"]["max_replicas"] == 2
    router = RouterSettings(**deployments["Router"]["user_config"])
    assert router.batching.max_rows <= BatchSettings(**models[1]["user_config"]).max_batch_size


def test_the_application_version_is_the_packages():
    assert APP_VERSION == version("kepler-serve")
    assert openapi_schema()["info"]["version"] == APP_VERSION


def test_required_signatures_refuse_to_start_without_a_verify_key(monkeypatch):
    monkeypatch.delenv("KEPLER_VERIFY_KEY", raising=False)
    message = "registry.require_signatures is true but no registry.verify_key is configured"
    with pytest.raises(ValidationError, match=message):  # the builder's AppArgs(**args): the app never deploys
        AppArgs(registry={"uri": "s3://bucket/registry", "require_signatures": True})
    assert AppArgs(registry={"require_signatures": True, "verify_key": "/etc/kepler/keys/publisher.pub"})
    monkeypatch.setenv("KEPLER_VERIFY_KEY", "/keys/publisher.pub")  # the registry reads it when the arg is unset
    assert RegistrySettings(require_signatures=True).config().verify_key == "/keys/publisher.pub"
    assert RegistrySettings().require_signatures is False  # opt-in: the local quickstart runs unsigned
