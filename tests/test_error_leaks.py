"""What a client reads when the registry fails: what went wrong, never where the service keeps its
models. A local registry under a directory named SECRET-PATH-MARKER, and an S3 registry in the
bucket secret-bucket-marker behind an endpoint that refuses connections (127.0.0.1:9, loopback
only), fail every layer that reads them; each client-facing message (the domain error's message,
the HTTP body the error handlers build) names neither the path, the bucket nor the endpoint, and
the warning logged instead names them. Ray-free."""
from __future__ import annotations

import asyncio
import logging
import re

import pytest

from registry import ModelRegistry, S3Store
from registry.stores import LocalStore
from serve_app.aliases import AliasResolver
from serve_app.errors import ModelUnavailable, NotFoundError, ServingError
from serve_app.koi import KOIService
from serve_app.loading import load_version
from serve_app.versions import Versions, registry_call

from .helpers import make_version_dir
from .test_http_layer import ROW, app_with, call

MARKER = "SECRET-PATH-MARKER"
BUCKET = "secret-bucket-marker"
ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
# Anything that locates the store: the marker, the bucket, the endpoint, an S3 URI, an absolute path.
LEAK = re.compile(rf"{MARKER}|{BUCKET}|127\.0\.0\.1|s3://|https?://|(?:^|[\s'\"(])/\w")


def assert_withheld(message: str, caplog, *secrets: str) -> None:
    """The client's message locates nothing; the log has what it leaves out."""
    assert not LEAK.search(message), message
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for secret in secrets:
        assert secret in logged, (secret, logged[:500])


@pytest.fixture
def local_registry(tmp_path) -> ModelRegistry:
    """A registry holding xgboost 1.0.0 only (a made-up model file, valid metadata), under the marker."""
    root = tmp_path / MARKER
    registry = ModelRegistry(LocalStore(root / "registry"), root / "cache")
    registry.publish("xgboost", "1.0.0", make_version_dir(tmp_path / "sources", "xgboost", "1.0.0"))
    return registry


@pytest.fixture
def s3_registry(tmp_path) -> ModelRegistry:
    store = S3Store(BUCKET, "models-prefix", endpoint_url=ENDPOINT, connect_timeout=0.5, read_timeout=0.5)
    return ModelRegistry(store, tmp_path / "cache")


@pytest.fixture(autouse=True)
def _warnings(caplog):
    caplog.set_level(logging.WARNING, logger="ray.serve")


def _raised(coroutine_or_call) -> ServingError:
    with pytest.raises(ServingError) as error:
        result = coroutine_or_call()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return error.value


# ---- each layer ----------------------------------------------------------------------------
LAYERS = {
    "registry_call": lambda registry: registry_call(lambda: registry.metadata("xgboost", "1.0.0")),
    "alias resolution": lambda registry: AliasResolver(registry, 10.0).resolve("xgboost", "stable"),
    "version metadata": lambda registry: Versions(registry, None, {}, 10.0).metadata("xgboost", "1.0.0"),
    "model loading": lambda registry: load_version(registry, "xgboost", "1.0.0", threads=1),
    "KOI catalogue": lambda registry: KOIService(registry).catalogue(),
    "out-of-fold predictions": lambda registry: KOIService(registry).out_of_fold("xgboost", "2.0.0"),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_an_unreachable_s3_registry_is_a_503_naming_neither_bucket_nor_endpoint(layer, s3_registry, caplog):
    error = _raised(lambda: LAYERS[layer](s3_registry))
    assert isinstance(error, ModelUnavailable), error
    assert_withheld(error.message, caplog, BUCKET, ENDPOINT)


@pytest.mark.parametrize("layer, model, version", [
    ("registry_call", "random_forest", "1.0.0"),  # no such model: the registry's message names the store
    ("version metadata", "random_forest", "1.0.0"),
    ("model loading", "random_forest", "1.0.0"),
])
def test_a_model_missing_from_a_local_registry_is_a_404_without_its_path(layer, model, version, local_registry,
                                                                          caplog):
    calls = {"registry_call": lambda: registry_call(lambda: local_registry.metadata(model, version)),
             "version metadata": lambda: Versions(local_registry, None, {}, 10.0).metadata(model, version),
             "model loading": lambda: load_version(local_registry, model, version, threads=1)}
    error = _raised(calls[layer])
    assert isinstance(error, NotFoundError) and f"{model!r} not found in the registry" in error.message, error
    assert_withheld(error.message, caplog, MARKER)


def test_a_version_whose_runtime_fails_on_a_file_is_a_503_without_the_path(local_registry, caplog, monkeypatch):
    def failing_load(name, directory, threads):
        raise FileNotFoundError(2, "No such file or directory", str(directory / "model.json"))

    monkeypatch.setattr("serve_app.loading.load", failing_load)
    error = _raised(lambda: load_version(local_registry, "xgboost", "1.0.0", threads=1))
    assert isinstance(error, ModelUnavailable)
    # The exception's own words reach the client, its path cut out.
    assert error.message == "xgboost 1.0.0 cannot be loaded: FileNotFoundError: [Errno 2] No such file or directory: '…'"
    assert_withheld(error.message, caplog, MARKER)


def test_an_unreadable_cache_directory_is_a_503_without_its_path(local_registry, caplog, monkeypatch):
    def denied(name, version):
        raise PermissionError(13, "Permission denied", str(local_registry.cache_dir / name / version))

    monkeypatch.setattr(local_registry, "pull", denied)
    error = _raised(lambda: load_version(local_registry, "xgboost", "1.0.0", threads=1))
    assert isinstance(error, ModelUnavailable) and "cannot be pulled" in error.message
    assert_withheld(error.message, caplog, MARKER)


def test_a_catalogue_missing_from_a_local_registry_names_no_path(local_registry, caplog):
    error = _raised(lambda: KOIService(local_registry, catalogue_ref="1.0.0").catalogue())
    assert isinstance(error, ModelUnavailable) and "KOI catalogue" in error.message
    assert_withheld(error.message, caplog, MARKER)


# ---- through the HTTP app ------------------------------------------------------------------
def _app_over(registry: ModelRegistry):
    """The HTTP app with fake models, its version, alias and KOI stages reading `registry`."""
    app, ingress = app_with()
    versions = ingress.dispatcher.versions
    versions.registry = versions.aliases.registry = ingress.registry = registry
    ingress.dispatcher.records.registry = registry
    ingress.kois = KOIService(registry, catalogue_ref="1.0.0")
    ingress.configured_defaults = {m: "stable" for m in ingress.models}
    return app, ingress


def test_http_answers_from_an_unreachable_s3_registry_name_neither_bucket_nor_endpoint(s3_registry, caplog):
    app, _ = _app_over(s3_registry)
    for method, path, body in [("POST", "/api/v1/predict", {"features": ROW, "model": "xgboost"}),
                               ("POST", "/api/v1/predict", {"features": ROW, "model": "xgboost", "version": "1.0.0"}),
                               ("GET", "/api/v1/models", None),
                               ("GET", "/api/v1/koi/K00752.01", None)]:
        status, _, answer = call(app, method, path, body)
        if status == 200:  # a concrete version whose metadata cannot be read: the replica checks the rows
            assert path == "/api/v1/predict" and body.get("version") == "1.0.0"
            continue
        assert status == 503, (path, status, answer)
        assert_withheld(answer["error"], caplog, BUCKET, ENDPOINT)


def test_http_answers_from_a_local_registry_name_no_path(local_registry, caplog):
    app, _ = _app_over(local_registry)
    status, _, answer = call(app, "POST", "/api/v1/predict", {"features": ROW, "model": "random_forest",
                                                              "version": "1.0.0"})
    assert status == 404 and answer["error"] == "model 'random_forest' not found in the registry", answer
    assert_withheld(answer["error"], caplog, MARKER)
    status, _, answer = call(app, "POST", "/api/v1/predict", {"features": ROW, "model": "xgboost", "version": "9.9.9"})
    assert status == 404 and answer["error"] == "version 9.9.9 of 'xgboost' not found (known: 1.0.0)", answer
    caplog.clear()
    status, _, answer = call(app, "GET", "/api/v1/koi/K00752.01")
    assert status == 503 and "KOI catalogue" in answer["error"], answer
    assert_withheld(answer["error"], caplog, MARKER)


def test_the_metrics_route_names_no_agent_address(caplog):
    app, ingress = app_with()
    agent = "http://10.1.2.3:44217/metrics"

    async def unreachable():
        raise OSError(f"<urlopen error [Errno 111] Connection refused: {agent}>")

    ingress.metrics_text = unreachable
    status, _, answer = call(app, "GET", "/metrics")
    assert status == 503 and answer["error"] == "this node's metrics agent did not answer", answer
    assert_withheld(answer["error"], caplog, agent)


def test_an_unsigned_version_says_so_without_its_path(local_registry, caplog, monkeypatch):
    from registry.errors import IntegrityError

    def unsigned(name, version):
        raise IntegrityError(f"{local_registry.cache_dir / name / version} is not signed: refused")

    monkeypatch.setattr(local_registry, "pull", unsigned)
    error = _raised(lambda: load_version(local_registry, "xgboost", "1.0.0", threads=1))
    assert error.message == "xgboost 1.0.0 cannot be pulled: IntegrityError: … is not signed: refused"
    assert_withheld(error.message, caplog, MARKER)
