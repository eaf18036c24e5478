"""The HTTP layer without Ray: the ingress's FastAPI app driven over ASGI against the real
dispatcher with fake models, the body limit and access control configured per instance, the
one error table for REST and V2, and V2 tensor decoding."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from serve_app import v2 as codec
from serve_app.auth import Authenticator, hash_key, parse_keys
from serve_app.cache_setup import CacheSetup
from serve_app.config import RouterSettings
from serve_app.errors import BadRequest, BreakerOpen, Conflict, ModelUnavailable, NotFoundError, Overloaded
from serve_app.http import build_http_app
from serve_app.http.errors import domain_error_response, status_of
from serve_app.http.middleware import Gate

from .test_dispatcher import MODELS, make

ROW = [1.0] * 36


class FakeIngress:
    """What the routes ask of the Router, without Ray."""

    def __init__(self, **settings):
        self.dispatcher, self.registry, self.fake_models, _ = make(**settings)
        self.versions = self.dispatcher.versions
        self.settings = self.dispatcher.settings
        self.models = MODELS
        self.requests: list[tuple[str, int]] = []
        self.metrics = self
        self.app_version = "0.0.0"
        self.caching = CacheSetup()  # not configured: no prediction cache

    def request_id(self) -> str:
        return "req-1"

    def ensure_syncing(self) -> None:
        pass

    def observe_latency(self, model, version, seconds) -> None:
        pass

    def request(self, route: str, status: int) -> None:
        self.requests.append((route, status))

    async def loaded(self):
        return {m: ["1.0.0"] for m in MODELS}


def call(app, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
         chunks: int = 1, answered_faults: bool = False) -> tuple[int, dict, dict]:
    """One request through the ASGI app: (status, headers, JSON body); header values may be raw
    bytes. With `answered_faults`, an
    exception Starlette re-raises after answering 500 (as servers log it) is not raised here."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    header_list = [(k.lower().encode(), v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
    if chunks == 1 and "content-length" not in {k.lower() for k in headers or {}}:
        header_list.append((b"content-length", str(len(raw)).encode()))
    if isinstance(body, dict):
        header_list.append((b"content-type", b"application/json"))
    size = max(1, -(-len(raw) // chunks))
    pieces = [raw[i:i + size] for i in range(0, len(raw), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
             "root_path": "", "scheme": "http", "query_string": b"", "headers": header_list,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    try:
        asyncio.run(app(scope, receive, send))
    except Exception:  # noqa: BLE001 - re-raised by Starlette after its 500 answer
        if not answered_faults:
            raise
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, json.loads(payload) if payload else {}


def gate_with(keys: dict | None = None, **settings) -> Gate:
    return Gate.of(Authenticator(keys or {}), RouterSettings(**{"auth": {"enabled": False}, **settings}))


def app_with(gate: Gate | None = None, **settings):
    ingress = FakeIngress(**settings)
    gate = gate or gate_with()
    return build_http_app(ingress, gate), ingress


def test_predict_and_batch_over_http_through_the_dispatcher():
    app, ingress = app_with()
    status, _, body = call(app, "POST", "/api/v1/predict", {"features": ROW, "model": "xgboost"})
    assert status == 200, body
    assert body["prediction"] == "CONFIRMED" and body["model"] == "xgboost" and body["version"] == "1.0.0"
    assert body["request_id"] == "req-1"
    status, _, body = call(app, "POST", "/api/v1/predict/batch", {"instances": [ROW] * 3, "model": "ensemble"})
    assert status == 200 and len(body["predictions"]) == 3 and body["ensemble"]["members"] == sorted(MODELS)
    assert ingress.requests == [("predict", 200), ("predict_batch", 200)]


def test_domain_errors_map_to_one_table_for_rest_and_v2():
    app, ingress = app_with(breaker={"failure_threshold": 1, "cooldown_s": 30})
    ingress.fake_models.cue["xgboost"] = ["fail"]
    status, _, body = call(app, "POST", "/api/v1/predict", {"features": ROW, "model": "xgboost"})
    assert status == 503 and "RuntimeError" in body["error"]
    status, headers, body = call(app, "POST", "/api/v1/predict", {"features": ROW, "model": "xgboost"})
    assert status == 503 and "circuit breaker is open" in body["error"]
    assert 29 <= int(headers["retry-after"]) <= 30  # the refusing breaker's own wait
    tensor = {"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": ROW}]}
    status, headers, body = call(app, "POST", "/v2/models/xgboost/infer", tensor)
    assert status == 503 and "retry-after" in headers  # V2 keeps 5xx as they are
    status, _, body = call(app, "POST", "/v2/models/random_forest/versions/nightly/infer", tensor)
    assert status == 400 and "nightly" in body["error"]  # a 404 of REST is a 400 of V2
    status, _, body = call(app, "POST", "/api/v1/predict", {"features": ROW, "model": "random_forest",
                                                            "version": "nightly"})
    assert status == 404 and "nightly" in body["error"]
    assert ("predict", 503) in ingress.requests and ("predict", 404) in ingress.requests


@pytest.mark.parametrize("error, status", [(BadRequest("x"), 422), (NotFoundError("x"), 404), (Conflict("x"), 409),
                                           (ModelUnavailable("x"), 503), (Overloaded("x"), 503),
                                           (BreakerOpen("x", 7), 503), (codec.V2Error("x"), 400),
                                           (RuntimeError("x"), 500)])
def test_the_status_table(error, status):
    assert status_of(error) == status


def test_retry_after_is_the_errors_own():
    assert domain_error_response(BreakerOpen("open", 7)).headers["retry-after"] == "7"
    assert domain_error_response(Overloaded("full")).headers["retry-after"] == "1"
    assert domain_error_response(BadRequest("bad"), v2=True).status_code == 400


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e309", "1e39", "-4e38", str(10 ** 400)])
def test_values_outside_what_the_models_compute_in_are_refused_naming_the_feature(value):
    app, _ = app_with()
    body = ('{"features": [1, ' + value + ', 1' + ', 1' * 33 + "]}").encode()
    status, _, answer = call(app, "POST", "/api/v1/predict", body, {"content-type": "application/json"})
    assert status == 422 and answer["error"].startswith("features: koi_period_err1 (position 1)"), answer
    batch = ('{"instances": [' + ", ".join(["[" + ", ".join(["1"] * 36) + "]"] * 2 + [
        "[" + ", ".join(["2"] * 35 + [value]) + "]"]) + "]}").encode()
    status, _, answer = call(app, "POST", "/api/v1/predict/batch", batch, {"content-type": "application/json"})
    assert status == 422 and answer["error"].startswith("instances[2]: koi_kepmag (position 35)"), answer


def test_missing_values_and_extremes_inside_float32_are_accepted():
    app, ingress = app_with()
    row = [None] * 35 + [3.4e38]
    status, _, answer = call(app, "POST", "/api/v1/predict", {"features": row, "model": "xgboost"})
    assert status == 200, answer
    status, _, answer = call(app, "POST", "/api/v1/predict", {"features": {"koi_period": 1e-45}, "model": "xgboost"})
    assert status == 200, answer


def test_validation_errors_name_the_field():
    app, _ = app_with()
    status, _, body = call(app, "POST", "/api/v1/predict", {"features": ROW[:-1] + ["x"]})
    assert status == 422 and body["error"].startswith("features")
    status, _, body = call(app, "POST", "/api/v1/predict", b"{not json", {"content-type": "application/json"})
    assert status == 422 and "not valid JSON" in body["error"]
    status, _, body = call(app, "POST", "/v2/models/xgboost/infer", {"inputs": []})
    assert status == 400 and body["error"].startswith("inputs")
    status, _, body = call(app, "POST", "/api/v1/predict/batch", {"instances": [ROW] * 1001})
    assert status == 422 and "exceed the limit of 1000" in body["error"]


@pytest.mark.parametrize("chunks", [1, 4])
def test_the_body_limit_is_per_instance_declared_or_chunked(chunks):
    small, _ = app_with(gate_with(max_body_bytes=2048))
    large, _ = app_with(gate_with(max_body_bytes=1_000_000))
    body = {"instances": [ROW] * 20, "model": "xgboost"}  # about 3.6 kB
    status, _, answer = call(small, "POST", "/api/v1/predict/batch", body, chunks=chunks)
    assert status == 413 and "2048 bytes" in answer["error"]
    status, _, answer = call(large, "POST", "/api/v1/predict/batch", body, chunks=chunks)
    assert status == 200 and len(answer["predictions"]) == 20  # the replayed body arrives whole
    status, _, _ = call(small, "POST", "/api/v1/predict", b"{}", {"content-length": "12abc"})
    assert status == 413


def test_access_control_and_rate_limits_are_per_instance():
    keys = parse_keys(f"app:{hash_key('k1')}:predict:2")
    guarded, _ = app_with(gate_with(keys, auth={"enabled": True}))
    open_app, _ = app_with(gate_with(keys))
    request = {"features": ROW, "model": "xgboost"}
    assert call(guarded, "POST", "/api/v1/predict", request)[0] == 401
    assert call(open_app, "POST", "/api/v1/predict", request)[0] == 200
    assert call(open_app, "GET", "/api/v1/experiments")[0] == 403  # admin routes always need an admin key
    assert call(open_app, "GET", "/api/v1/experiments", headers={"x-api-key": "k1"})[0] == 403
    statuses = [call(guarded, "POST", "/api/v1/predict", request, {"x-api-key": "k1"})[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert call(guarded, "GET", "/api/v1/health")[0] == 200  # probes stay open


def test_v2_content_type_may_be_missing():
    app, _ = app_with()
    tensor = json.dumps({"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP64", "data": ROW}]})
    status, _, body = call(app, "POST", "/v2/models/ensemble/infer", tensor.encode())
    assert status == 200 and [o["name"] for o in body["outputs"]] == ["probabilities", "labels"]


def _request(**tensor) -> codec.InferRequest:
    base = {"name": "features", "shape": [1, 36], "datatype": "FP32", "data": ROW}
    return codec.InferRequest(inputs=[{**base, **tensor}])


@pytest.mark.parametrize("tensor, message", [
    ({"datatype": "INT64"}, "FP32 or FP64"),
    ({"shape": [1, 35]}, "shape must be"),
    ({"shape": [2, 36]}, "needs 72 values"),
    ({"data": ROW[:-1] + ["1"]}, "must be a number"),
    ({"data": ROW[:-1] + [True]}, "must be a number"),
    ({"data": ROW[:-1] + [float("inf")]}, "finite"),
    ({"shape": [1001, 36]}, "exceed the limit"),
    ({"data": ROW[:-1] + [10 ** 400]}, "finite"),
    ({"data": ROW[:-1] + [1e39]}, "float32"),
])
def test_v2_decoding_refuses_bad_tensors(tensor, message):
    with pytest.raises(codec.V2Error, match=message):
        codec.decode(_request(**tensor), 1000)


def test_v2_decoding_takes_nested_data_and_survives_deep_nesting():
    nested = codec.decode(_request(data=[ROW]), 1000)
    assert nested.shape == (1, 36) and nested.dtype == np.float32
    deep: list = [1.0]
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(codec.V2Error, match="needs 36 values"):
        codec.decode(_request(data=deep), 1000)


def test_a_fault_of_the_service_is_counted_as_the_500_the_client_gets():
    app, ingress = app_with()

    async def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    ingress.dispatcher.predict = broken
    status, _, body = call(app, "POST", "/api/v1/predict", {"features": ROW, "model": "xgboost"},
                           answered_faults=True)
    assert status == 500 and "a bug" not in json.dumps(body)
    assert ingress.requests[-1] == ("predict", 500)  # never counted as a success
