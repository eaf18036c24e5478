"""The Python client: against the real application, and its retry rules against a scripted peer."""
from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from serve_app.client import KeplerClient, KeplerError

from .conftest import free_port
from .ray_cluster import SERVE_URL
from .test_serving import as_json_row, held_out


def test_client_against_the_application(serve_app):
    client = KeplerClient(SERVE_URL, timeout=30)
    result = client.predict(as_json_row(held_out(1)[0]), model="ensemble", return_all_models=True)
    assert result.model == "ensemble" and result.prediction in result.probabilities
    assert len(result.all_models) == 3
    by_name = client.predict({"koi_period": 9.49, "koi_depth": 615.8}, model="xgboost", version="latest")
    assert by_name.version == "1.1.0"
    batch = client.predict_batch([as_json_row(r) for r in held_out(4)], model="random_forest")
    assert len(batch.labels) == 4
    assert set(client.models()) == {"keras_cnn", "xgboost", "random_forest"}
    assert client.model_info("xgboost")["version"] == "1.0.0"
    assert client.health()["status"] == "healthy"
    with pytest.raises(KeplerError) as error:
        client.predict([1.0] * 35, model="xgboost")
    assert error.value.status == 422 and "36" in error.value.message


class _Scripted(http.server.BaseHTTPRequestHandler):
    script: list[tuple[int, dict, dict]] = []
    seen: list[float] = []

    def do_GET(self):
        self.seen.append(time.monotonic())
        status, headers, body = self.script.pop(0) if self.script else (200, {}, {"status": "healthy"})
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    _Scripted.script, _Scripted.seen = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_retries_503_and_429_honouring_retry_after(scripted):
    _Scripted.script = [(503, {"Retry-After": "0"}, {"error": "busy"}),
                        (429, {"Retry-After": "1"}, {"error": "slow down"})]
    client = KeplerClient(scripted, retries=3, backoff_s=0.01)
    assert client.health() == {"status": "healthy"}
    assert len(_Scripted.seen) == 3
    assert _Scripted.seen[2] - _Scripted.seen[1] >= 0.9  # waited the Retry-After of the 429


def test_never_retries_other_4xx(scripted):
    _Scripted.script = [(404, {}, {"error": "unknown model"})]
    with pytest.raises(KeplerError) as error:
        KeplerClient(scripted, retries=3, backoff_s=0.01).health()
    assert error.value.status == 404 and error.value.message == "unknown model" and len(_Scripted.seen) == 1


def test_gives_up_after_the_configured_retries(scripted):
    _Scripted.script = [(503, {}, {"error": "down"})] * 5
    with pytest.raises(KeplerError):
        KeplerClient(scripted, retries=2, backoff_s=0.01).health()
    assert len(_Scripted.seen) == 3


def test_connection_errors_are_retried_then_raised():
    import requests

    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        KeplerClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.05, timeout=1).health()
    assert time.monotonic() - started >= 0.15  # two backoffs: 0.05 + 0.1
