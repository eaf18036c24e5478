"""The Python client's retry policy (urllib3 Retry on a requests Session) against a real HTTP peer on
loopback, scripted per test: each request takes the next (status, headers, body) answer."""
from __future__ import annotations

import collections
import http.server
import json
import threading
import time

import pytest
import requests

from serve_app.client import KeplerClient, KeplerConnectionError, KeplerError, Prediction

from .conftest import free_port

PREDICTION = {"prediction": "CONFIRMED",
              "probabilities": {"CONFIRMED": 0.9, "CANDIDATE": 0.08, "FALSE_POSITIVE": 0.02},
              "model": "xgboost", "version": "1.0.0", "request_id": "r-1", "latency_ms": 1.5}
HANG_UP = None  # an answer that closes the connection without a response


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with self.server.lock:
            self.server.seen.append((self.command, self.path, time.monotonic(), body))
            answer = (self.server.answers.popleft() if self.server.answers
                      else (500, {}, {"error": "the script has no answer left"}))
        if answer is HANG_UP:
            self.close_connection = True
            return
        status, headers, payload = answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


class Peer:
    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.lock = threading.Lock()
        self.server.answers = collections.deque()
        self.server.seen = []
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def script(self, *answers) -> None:
        self.server.answers.extend(answers)

    @property
    def seen(self) -> list[tuple[str, str, float, object]]:
        with self.server.lock:
            return list(self.server.seen)


@pytest.fixture
def peer():
    peer = Peer()
    thread = threading.Thread(target=peer.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield peer
    peer.server.shutdown()
    peer.server.server_close()
    thread.join(5)


def test_predict_is_retried_after_503(peer):
    peer.script((503, {}, {"error": "model loading"}), (200, {}, PREDICTION))
    result = KeplerClient(peer.url, retries=3, backoff_s=0.01).predict([1.0] * 36, model="xgboost")
    assert isinstance(result, Prediction) and result.prediction == "CONFIRMED" and result.version == "1.0.0"
    seen = peer.seen
    assert [(method, path) for method, path, _, _ in seen] == [("POST", "/api/v1/predict")] * 2
    assert seen[0][3] == seen[1][3] and seen[1][3]["features"] == [1.0] * 36  # the same body, resent


def test_429_honours_retry_after(peer):
    peer.script((429, {"Retry-After": "1"}, {"error": "slow down"}), (200, {}, PREDICTION))
    started = time.monotonic()
    result = KeplerClient(peer.url, retries=2, backoff_s=0.01).predict({"koi_period": 9.49})
    assert result.model == "xgboost"
    assert time.monotonic() - started < 5
    seen = peer.seen
    assert len(seen) == 2
    assert seen[1][2] - seen[0][2] >= 0.9  # waited the Retry-After, not the 0.01 s backoff


def test_a_post_whose_answer_never_comes_is_retried(peer):
    peer.script(HANG_UP, (200, {}, PREDICTION))
    assert KeplerClient(peer.url, retries=1, backoff_s=0.01).predict([0.0] * 36).request_id == "r-1"
    assert [method for method, _, _, _ in peer.seen] == ["POST", "POST"]


@pytest.mark.parametrize("status, headers, message", [
    (400, {}, "body is not JSON"),
    (404, {}, "unknown model 'nope'"),
    (413, {"Retry-After": "1"}, "request body too large"),  # urllib3 alone would retry this one
    (422, {}, "expected 36 features, got 35"),
])
def test_client_errors_are_never_retried(peer, status, headers, message):
    peer.script((status, headers, {"error": message}), (200, {}, PREDICTION))
    started = time.monotonic()
    with pytest.raises(KeplerError) as error:
        KeplerClient(peer.url, retries=3, backoff_s=0.01).predict([1.0] * 35, model="nope")
    assert error.value.status == status and error.value.message == message
    assert str(error.value) == f"HTTP {status}: {message}"
    assert len(peer.seen) == 1 and time.monotonic() - started < 0.9


def test_gives_up_on_503_after_the_configured_retries(peer):
    peer.script(*[(503, {}, {"error": f"overloaded {n}"}) for n in range(5)])
    with pytest.raises(KeplerError) as error:
        KeplerClient(peer.url, retries=2, backoff_s=0.01).models()
    assert error.value.status == 503 and error.value.message == "overloaded 2"  # the last answer's message
    assert [(method, path) for method, path, _, _ in peer.seen] == [("GET", "/api/v1/models")] * 3


def test_backoff_grows_between_retries(peer):
    peer.script(*[(503, {}, {"error": "busy"})] * 3, (200, {}, {"status": "healthy"}))
    assert KeplerClient(peer.url, retries=3, backoff_s=0.1, max_backoff_s=0.15).health() == {"status": "healthy"}
    times = [at for _, _, at, _ in peer.seen]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert len(gaps) == 3
    assert gaps[0] >= 0.09 and gaps[1] >= 0.14 and gaps[2] >= 0.14  # 0.1, then 0.2 and 0.4 capped at 0.15
    assert max(gaps) < 1


def test_connection_refused_is_retried_then_raised():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(KeplerConnectionError) as error:
        KeplerClient(url, retries=3, backoff_s=0.05, timeout=1).predict([1.0] * 36)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.3  # three backoffs before the three retries: 0.05 + 0.1 + 0.2
    assert elapsed < 5
    assert isinstance(error.value, requests.ConnectionError) and isinstance(error.value, ConnectionError)
    assert f"POST {url}/api/v1/predict failed after 4 attempts" in str(error.value)
    assert "refused" in str(error.value).lower()


def test_without_retries_a_refused_connection_fails_at_once():
    started = time.monotonic()
    with pytest.raises(KeplerConnectionError, match="failed after 1 attempt: "):
        KeplerClient(f"http://127.0.0.1:{free_port()}", retries=0, backoff_s=0.5, timeout=1).health()
    assert time.monotonic() - started < 0.5


def test_every_retry_is_noted_with_its_status_and_whether_it_said_when(peer):
    peer.script((503, {"Retry-After": "0"}, {"error": "overloaded"}), (429, {}, {"error": "slow down"}),
                HANG_UP, (200, {}, PREDICTION))
    log = []
    KeplerClient(peer.url, retries=3, backoff_s=0.01, retry_log=log).predict([1.0] * 36)
    assert [(r.status, r.retry_after) for r in log[:2]] == [(503, True), (429, False)]
    assert log[2].status is None and log[2].error  # the hang-up: a failed read
    assert len(log) == 3


def test_explain_and_v2_infer_send_what_the_api_takes(peer):
    peer.script((200, {}, {"explanations": []}), (200, {}, {"outputs": []}))
    client = KeplerClient(peer.url, retries=0)
    client.explain(koi="K00752.01", model="random_forest")
    client.infer("xgboost", [[1.0, None], [2.0, 3.0]])
    (_, explain_path, _, explain_body), (_, infer_path, _, infer_body) = peer.seen
    assert explain_path == "/api/v1/explain" and explain_body == {"model": "random_forest", "version": None,
                                                                 "koi": "K00752.01"}
    [tensor] = infer_body["inputs"]
    assert infer_path == "/v2/models/xgboost/infer" and tensor["shape"] == [2, 2] and tensor["datatype"] == "FP64"
    assert tensor["data"][1] == tensor["parameters"]["missing_value"] and tensor["data"][3] == 3.0


def test_a_request_lost_with_its_replica_is_sent_again_but_the_services_own_500_is_not(peer):
    peer.script((500, {"Content-Type": "text/plain"}, "Internal Server Error"), (200, {}, PREDICTION),
                (500, {}, {"error": "internal error: the fault is logged; retrying will not help"}))
    log = []
    client = KeplerClient(peer.url, retries=2, backoff_s=0.01, retry_log=log)
    assert client.predict([1.0] * 36).prediction == "CONFIRMED"
    assert [(r.status, r.error) for r in log] == [(500, "lost in flight")]
    with pytest.raises(KeplerError) as error:
        client.predict([1.0] * 36)
    assert error.value.status == 500 and len(peer.seen) == 3  # the JSON 500: not sent again
