"""Authentication, scopes, rate limits, back-pressure and hostile inputs, on the shared application
with authentication switched on in place (a `serve deploy` of the Router's user_config)."""
from __future__ import annotations

import copy
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .helpers import until, with_router
from .ray_cluster import ADMIN_KEY, JWT_AUDIENCE, JWT_ISSUER, LIMITED_KEY, LIMITED_RPM, PREDICT_KEY, SERVE_URL
from .test_serving import _row

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application

ROW = {"features": _row(), "model": "xgboost"}
V2_BODY = {"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": [1.0] * 36}]}
KEYED = {"X-API-Key": PREDICT_KEY}


@pytest.fixture(scope="module")
def _restored_afterwards(serve_app):
    yield
    serve_app.deploy(serve_app.config)
    serve_app.wait_running()
    until(lambda: requests.get(f"{SERVE_URL}/api/v1/models", timeout=10).status_code == 200)


@pytest.fixture
def secured(serve_app, _restored_afterwards):
    """Authentication on, in place; applied again if a test in between deployed another config."""
    if requests.get(f"{SERVE_URL}/api/v1/models", timeout=10).status_code != 401:
        serve_app.deploy(with_router(serve_app, auth={"enabled": True, "requests_per_minute": 6000}))
        serve_app.wait_running()
        until(lambda: requests.get(f"{SERVE_URL}/api/v1/models", timeout=10).status_code == 401)
    return serve_app


PREDICT_ROUTES = [
    ("POST", "/api/v1/predict", ROW),
    ("POST", "/api/v1/predict/batch", {"instances": [_row()], "model": "xgboost"}),
    ("POST", "/v2/models/xgboost/infer", V2_BODY),
    ("GET", "/api/v1/models", None),
    ("GET", "/api/v1/models/xgboost/info", None),
    ("GET", "/api/v1/schema", None),
    ("POST", "/api/v1/predict", {"koi": "K00752.01"}),
    ("GET", "/api/v1/koi/K00752.01", None),
    ("GET", "/api/v1/candidates?top=3", None),
    ("GET", "/api/v1/kois?prefix=K0075", None),
    ("POST", "/api/v1/explain", {"koi": "K00752.01", "model": "xgboost"}),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/v2", None),
    ("GET", "/v2/models/xgboost", None),
]
OPEN_ROUTES = ["/api/v1/health", "/v2/health/live", "/v2/health/ready", "/v2/models/xgboost/ready", "/metrics",
               "/ui/", "/ui/app.css"]  # the page's own assets: it asks for the key itself


def _call(method: str, path: str, body, headers=None) -> requests.Response:
    return requests.request(method, f"{SERVE_URL}{path}", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("method, path, body", PREDICT_ROUTES, ids=[p for _, p, _ in PREDICT_ROUTES])
def test_predict_scope_routes(secured, method, path, body):
    missing = _call(method, path, body)
    assert missing.status_code == 401 and "credential" in missing.json()["error"]
    assert missing.headers.get("WWW-Authenticate") == "Bearer"
    assert _call(method, path, body, {"X-API-Key": "not-a-key"}).status_code == 401
    assert _call(method, path, body, KEYED).status_code == 200
    assert _call(method, path, body, {"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_probes_and_scrapes_stay_open_and_admin_needs_admin(secured):
    for path in OPEN_ROUTES:
        assert requests.get(f"{SERVE_URL}{path}", timeout=30).status_code in (200, 503), path
    experiments = f"{SERVE_URL}/api/v1/experiments"
    assert requests.get(experiments, timeout=10).status_code == 401
    refused = requests.get(experiments, headers=KEYED, timeout=10)
    assert refused.status_code == 403 and "admin" in refused.json()["error"]
    assert requests.get(experiments, headers={"X-API-Key": ADMIN_KEY}, timeout=10).status_code == 200


def test_jwt_bearer_tokens_carry_scopes_and_are_checked(secured, jwt_issuer):
    now = time.time()
    good = {"sub": "pipeline", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "exp": now + 300, "scope": "predict"}

    def status(token: str) -> int:
        return _call("POST", "/api/v1/predict", ROW, {"Authorization": f"Bearer {token}"}).status_code

    assert status(jwt_issuer.token(**good)) == 200
    assert status(jwt_issuer.token(**{**good, "exp": now - 120})) == 401  # expired
    assert status(jwt_issuer.token(**{**good, "aud": "someone-else"})) == 401
    assert status(jwt_issuer.token(**{**good, "iss": "https://elsewhere.test"})) == 401
    assert status(jwt_issuer.token(key=Ed25519PrivateKey.generate(), **good)) == 401  # an untrusted key
    assert status(jwt_issuer.token(alg="none", **good)) == 401
    assert status(jwt_issuer.token(**{**good, "scope": "profile"})) == 403
    admin = jwt_issuer.token(**{**good, "scope": "predict admin"})
    assert requests.get(f"{SERVE_URL}/api/v1/experiments", headers={"Authorization": f"Bearer {admin}"},
                        timeout=10).status_code == 200


def _sharing_rate_limits() -> int:
    view = requests.get(f"{SERVE_URL}/api/v1/experiments", headers={"X-API-Key": ADMIN_KEY}, timeout=10).json()
    return view["router"]["replicas_sharing_rate_limits"]


def test_rate_limit_per_credential_then_recovery(secured):
    until(lambda: _sharing_rate_limits() == 1, timeout=70)  # one router: it enforces the whole limit
    headers = {"X-API-Key": LIMITED_KEY}
    statuses, retry_after = [], None
    for _ in range(LIMITED_RPM + 10):
        response = _call("POST", "/api/v1/predict", ROW, headers)
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after = int(response.headers["Retry-After"])
            assert "rate limit" in response.json()["error"]
    print(f"\nrate limit {LIMITED_RPM}/min: {statuses.count(200)} served, {statuses.count(429)} refused, "
          f"Retry-After {retry_after} s")
    assert set(statuses) == {200, 429} and LIMITED_RPM - 2 <= statuses.count(200) <= LIMITED_RPM + 2
    assert _call("POST", "/api/v1/predict", ROW, KEYED).status_code == 200  # other credentials unaffected
    time.sleep(retry_after)
    assert _call("POST", "/api/v1/predict", ROW, headers).status_code == 200


def test_overload_is_a_fast_503_then_service_recovers(serve_app):
    """xgboost squeezed to one request at a time and one queued, the router sending up to 8 calls
    of one row at once: a burst gets 503 + Retry-After from the router (Serve's back-pressure),
    never a 500 or a timeout; then everything is served."""
    squeezed = copy.deepcopy(serve_app.config)
    for deployment in squeezed["applications"][0]["deployments"]:
        if deployment["name"] == "xgboost":
            deployment.update(max_ongoing_requests=1, max_queued_requests=1)
            deployment["user_config"]["batch_wait_timeout_s"] = 0.05
        if deployment["name"] == "Router":  # more calls than the model holds, whatever the timing
            deployment["user_config"]["batching"] = {"calls_in_flight": 8, "max_rows": 1}
    serve_app.deploy(squeezed)
    serve_app.wait_running()
    try:
        def one(_):
            started = time.monotonic()
            response = requests.post(f"{SERVE_URL}/api/v1/predict", json=ROW, timeout=30)
            return response.status_code, response.headers.get("Retry-After"), time.monotonic() - started, response.text

        with ThreadPoolExecutor(32) as pool:
            burst = list(pool.map(one, range(160)))
    finally:
        serve_app.deploy(serve_app.config)
        serve_app.wait_running()
    shed = [r for r in burst if r[0] == 503]
    print(f"\noverload: {len(burst)} requests, {len(shed)} shed with 503, slowest 503 {max(r[2] for r in shed):.2f} s")
    assert {status for status, *_ in burst} <= {200, 503}, [r for r in burst if r[0] not in (200, 503)][:2]
    assert shed and all(retry == "1" and "overloaded" in text for _, retry, _, text in shed)
    recovered = [requests.post(f"{SERVE_URL}/api/v1/predict", json=ROW, timeout=30).status_code for _ in range(20)]
    assert recovered == [200] * 20


HOSTILE = [
    ("deeply nested JSON", b'{"features": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json"),
    ("text/plain", json.dumps(ROW).encode(), "text/plain"),
    ("form data", b"features=1&model=xgboost", "application/x-www-form-urlencoded"),
    ("no content type", json.dumps(ROW).encode(), None),
    ("invalid UTF-8 in a string", b'{"features": [1.0], "model": "\xc3\x28"}', "application/json"),
    ("a 50 MB body", b'{"features": [' + b"1.0," * 12_500_000 + b"1.0]}", "application/json"),
]


@pytest.mark.parametrize("body, content_type", [(b, c) for _, b, c in HOSTILE], ids=[n for n, *_ in HOSTILE])
def test_hostile_inputs_get_4xx(serve_app, body, content_type):
    headers = {**KEYED, **({"Content-Type": content_type} if content_type else {})}  # valid whether auth is on
    response = requests.post(f"{SERVE_URL}/api/v1/predict", data=body, headers=headers, timeout=60)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
    assert response.json()["error"]
    assert requests.get(f"{SERVE_URL}/api/v1/health", timeout=10).json()["status"] == "healthy"


def test_a_thousand_row_batch_is_served(serve_app):
    response = requests.post(f"{SERVE_URL}/api/v1/predict/batch", json={"instances": [_row()] * 1000,
                                                                         "model": "xgboost"}, headers=KEYED, timeout=60)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1000


def test_under_a_route_prefix_a_predict_key_cannot_reach_the_admin_routes(serve_app):
    """The application deployed under /kepler: scopes are checked on the route after the prefix,
    so /kepler/api/v1/experiments is an admin route like /api/v1/experiments."""
    config = with_router(serve_app, auth={"enabled": True, "requests_per_minute": 6000})
    config["applications"][0]["route_prefix"] = "/kepler"
    serve_app.deploy(config)
    try:
        _prefixed_scopes()
    finally:  # back at /, as every other test expects
        serve_app.deploy(serve_app.config)
        serve_app.wait_running()


def _prefixed_scopes() -> None:
    prefixed = f"{SERVE_URL}/kepler"
    until(lambda: requests.get(f"{prefixed}/api/v1/health", timeout=10).status_code == 200, 120)
    admin_routes = [("GET", "/api/v1/experiments"), ("POST", "/api/v1/experiments/xgboost/rollback"),
                    ("POST", "/api/v1/experiments/xgboost/promote"), ("PUT", "/api/v1/experiments/xgboost/weight")]
    for method, path in admin_routes:
        response = requests.request(method, f"{prefixed}{path}", json={"weight": 0.5}, headers=KEYED, timeout=30)
        assert response.status_code == 403, (path, response.status_code, response.text)
    assert requests.get(f"{prefixed}/api/v1/experiments", headers={"X-API-Key": ADMIN_KEY}, timeout=30).status_code == 200
    assert requests.post(f"{prefixed}/api/v1/predict", json=ROW, headers=KEYED, timeout=30).status_code == 200
    assert requests.post(f"{prefixed}/api/v1/predict", json=ROW, timeout=30).status_code == 401
