"""Experiments that clients cannot steer, each test named after the attack it stops: keyed sticky
assignment, variants named to admins only, each credential's share of a variant's samples capped,
and latency compared per row. Ray-free."""
from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from serve_app.auth import hash_key, parse_keys
from serve_app.config import ExperimentSettings, RollbackSettings
from serve_app.dispatcher import RequestContext
from serve_app.experiments import Book, Decisions, experiments_view, router_snapshot
from serve_app.rollback import tripped
from serve_app.traffic import SECRET_ENV, Traffic, assignment_secret, sticky_draw
from serve_app.variant_stats import PRINCIPALS_PER_SECOND, Recorder, Window, capped

from .test_dispatcher import _book, make, run
from .test_http_layer import ROW, app_with, call, gate_with

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "xgboost:1.1.0"
SECRET = bytes(range(32))


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _traffic(secret: bytes, weight: float, generation: int = 1) -> Traffic:
    """A router that has adopted the controller's snapshot of a running sticky experiment."""
    traffic = Traffic(random.Random(0))
    traffic.configure({"xgboost": ExperimentSettings(candidate="1.1.0", weight=weight, sticky_header="x-client-id")})
    record = {"experiment_id": EXPERIMENT, "candidate": "1.1.0", "shadow": None, "candidate_version": "1.1.0",
              "shadow_version": None, "shadow_ready": False, "state": "running", "weight": weight}
    traffic.adopt({"generation": generation, "assignment_secret": secret, "experiments": {"xgboost": record}})
    return traffic


def _variants(traffic: Traffic, principal: str | None, clients: list[str]) -> list[str]:
    return [traffic.route("xgboost", {"x-client-id": c}, principal).variant for c in clients]


def test_a_client_cycling_header_values_cannot_choose_its_variant():
    """Which header value lands where depends on a secret only the servers hold, and on the
    credential: a client cannot compute a value that picks the candidate (or the stable variant),
    and cycling through values lands it in the candidate at the configured weight, not at will."""
    clients = [f"client-{i}" for i in range(1000)]
    served = _variants(_traffic(SECRET, 0.5), "portal", clients)
    # Every router replica, handed the same secret, assigns each client the same way, every time.
    assert _variants(_traffic(SECRET, 0.5), "portal", clients) == served

    def agreement(other: list[str]) -> int:
        return sum(a == b for a, b in zip(served, other))

    # Under another secret (a client's guess) the same values land independently: chance agreement.
    assert 420 < agreement(_variants(_traffic(b"guessed-" * 4, 0.5), "portal", clients)) < 580
    # Another credential sending the same values lands independently of this one.
    assert 420 < agreement(_variants(_traffic(SECRET, 0.5), "other-app", clients)) < 580
    # The unkeyed formula a client could compute (sha256 of experiment and value) predicts nothing.
    unkeyed = ["candidate" if int.from_bytes(hashlib.sha256(f"{EXPERIMENT}|{c}".encode()).digest()[:8], "big")
               / 2**64 < 0.5 else "stable" for c in clients]
    assert 420 < agreement(unkeyed) < 580
    # Cycling 1,000 values at weight 0.1: the candidate's share is the weight's (99.9% interval).
    on_candidate = _variants(_traffic(SECRET, 0.1), "portal", clients).count("candidate")
    assert 69 <= on_candidate <= 131
    # A fixed point per client: raising the weight only moves clients onto the candidate.
    at_25 = _variants(_traffic(SECRET, 0.25), "portal", clients)
    at_10 = _variants(_traffic(SECRET, 0.1), "portal", clients)
    assert all(b == "candidate" for a, b in zip(at_10, at_25) if a == "candidate")
    assert sticky_draw(SECRET, EXPERIMENT, None, "c") == sticky_draw(SECRET, EXPERIMENT, "", "c")  # anonymous


def test_the_assignment_secret_is_configured_or_random_and_never_short(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    first, second = assignment_secret(), assignment_secret()
    assert len(first) == 32 and first != second
    monkeypatch.setenv(SECRET_ENV, "a" * 64)
    assert assignment_secret() == b"a" * 64
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ValueError, match=f"{SECRET_ENV} must be at least 32 characters"):
        assignment_secret()


def _spellings(secret: bytes) -> list[str]:
    return [secret.hex(), base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode(),
            repr(secret), secret.decode("latin-1"), str(list(secret))]


def test_the_assignment_secret_never_appears_in_a_view(monkeypatch):
    """Routers get the secret in the controller's snapshot; the experiments view (what admins and
    the web page read), the book persisted to the registry and the events never carry it."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    secret = assignment_secret()
    spec = ExperimentSettings(candidate="1.1.0", weight=0.3, sticky_header="x-client-id", shadow="1.2.0")
    clock = Clock()
    book, window = Book(), Window(clock=clock)
    decisions = Decisions(book, window, clock)
    decisions.started(decisions.adopt("xgboost", spec, "1.1.0", "1.2.0"), spec, True)
    recorder = Recorder(clock)
    recorder.answered(EXPERIMENT, "candidate", 0.01, [1], "portal")
    recorder.failed(EXPERIMENT, "stable", "portal")
    window.merge(recorder.drain())

    snapshot = router_snapshot(book, secret)
    traffic = _traffic(b"old" * 11, 0.3)
    traffic.adopt(snapshot)
    assert traffic.secret == secret and snapshot["assignment_secret"] == secret

    view = experiments_view(book, window, {"xgboost": spec})
    assert view["experiments"]["xgboost"]["variants"]["candidate"]["requests"] == 1
    texts = [json.dumps(view), repr(view), json.dumps(book.model_dump()), repr(book)]
    # Through the admin route too, as the router composes it with its own view.
    keys = parse_keys(f"ops:{hash_key('admin-key')}:admin+predict")
    app, ingress = app_with(gate_with(keys, auth={"enabled": True}))

    async def ask_controller(method: str, *args, **kwargs):
        assert method == "view"
        return experiments_view(book, window, {"xgboost": spec})
    ingress.ask_controller = ask_controller
    ingress.router_view = lambda: {"replica": "local", "generation": traffic.generation}
    status, _, body = call(app, "GET", "/api/v1/experiments", headers={"x-api-key": "admin-key"})
    assert status == 200 and body["experiments"]["xgboost"]["state"] == "running"
    texts.append(json.dumps(body))
    for text in texts:
        assert not any(spelling in text for spelling in _spellings(secret))
    # The controller (a Ray deployment, read here without importing Ray) hands the secret to
    # routers' syncs alone: no other method of it touches the secret.
    module = ast.parse((ROOT / "serve_app" / "controller.py").read_text())
    (controller,) = [n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "ExperimentController"]
    methods = {n.name: ast.unparse(n) for n in controller.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert {name for name, code in methods.items() if "assignment_secret" in code} == {"__init__", "snapshot"}
    assert {name for name, code in methods.items() if "self.snapshot()" in code} == {"sync"}


def _cued_latency(dispatcher, base_s: float, per_row_s: float) -> None:
    """Each model call takes `base_s` plus `per_row_s` for each row, as a batched model does."""
    answer = dispatcher.calls.call

    async def timed(deployment, version, rows, request_ids):
        await asyncio.sleep(base_s + per_row_s * len(rows))
        return await answer(deployment, version, rows, request_ids)
    dispatcher.calls.call = timed


def test_large_batches_cannot_fake_a_latency_rollback():
    """A client sends 1,000-row batches to the candidate, which take proportionally longer; others
    send single rows to the stable variant. Per request the candidate looks 10x slower; per row it
    is no slower, and the latency trigger compares rows."""
    dispatcher, _, _, _ = make(experiments={"xgboost": {"candidate": "latest", "weight": 1.0}})
    _cued_latency(dispatcher, 0.002, 0.00002)
    rules = RollbackSettings(min_samples=20)
    big, single = np.zeros((1000, 36), dtype=np.float32), np.zeros((1, 36), dtype=np.float32)
    dispatcher.traffic.adopt(_book(1.0))
    for i in range(20):
        assert run(dispatcher.predict("xgboost", None, big, RequestContext(f"b{i}", "batcher"))).variant == "candidate"
    book = _book(0.0)  # weight 0: every request to the stable variant, still compared
    book["generation"] = 2
    dispatcher.traffic.adopt(book)
    for i in range(20):
        assert run(dispatcher.predict("xgboost", None, single, RequestContext(f"s{i}", "web"))).variant == "stable"
    window = Window()
    window.merge(dispatcher.traffic.recorder.drain())
    candidate, stable = (window.summary("xgboost-1", v, 60, None, rules.max_principal_share)
                         for v in ("candidate", "stable"))
    assert candidate.requests == stable.requests == 20
    assert candidate.p95_ms < stable.p95_ms  # 22 ms per request, 0.02 ms per row; 2 ms for one row
    assert tripped(candidate, stable, rules) is None


def _record(recorder: Recorder, variant: str, principal: str, requests: int, errors: int = 0,
            classes: tuple[int, ...] = (0, 1, 2)) -> None:
    for i in range(requests):
        if i < errors:
            recorder.failed(EXPERIMENT, variant, principal)
        else:
            recorder.answered(EXPERIMENT, variant, 0.002, [classes[i % len(classes)]], principal)


def _decide(spec: ExperimentSettings, traffic, clock: Clock | None = None) -> tuple[str, str] | None:
    """The controller's decision on a running experiment after `traffic(recorder)` was recorded."""
    clock = clock or Clock()
    book, window = Book(), Window(clock=clock)
    decisions = Decisions(book, window, clock)
    record = decisions.adopt("xgboost", spec, "1.1.0", None)
    decisions.started(record, spec, False)
    clock.now += 5
    recorder = Recorder(clock)
    traffic(recorder)
    window.merge(recorder.drain())
    clock.now += 7  # past a rollout's 10 s step window, the traffic inside it
    return decisions.check(record, spec)


def _with(share: float, **rules) -> ExperimentSettings:
    rollout = rules.pop("rollout", None)
    return ExperimentSettings(candidate="1.1.0", weight=0.1, rollout=rollout,
                              rollback={"window_s": 300, "min_samples": 50, "max_principal_share": share, **rules})


def test_one_principal_flooding_the_stable_variant_cannot_dilute_a_failing_candidates_error_rate():
    """The candidate fails 12% of everyone's requests. One credential floods the model: most of its
    requests land on the stable variant, and the candidate's share of them (easy rows) succeed.
    Counted in full they would dilute the candidate's error rate to 2.4%; capped at half of the
    candidate's samples, it can at most halve the rate others see: 6% still trips the 5%."""
    def traffic(recorder):
        for app in ("app-1", "app-2", "app-3", "app-4"):
            _record(recorder, "candidate", app, 25, errors=3)
            _record(recorder, "stable", app, 200)
        _record(recorder, "stable", "flooder", 3600)
        _record(recorder, "candidate", "flooder", 400)

    assert _decide(_with(1.0), traffic) is None  # uncapped: the flood hides the failures
    action, reason = _decide(_with(0.5), traffic)
    assert action == "rollback" and reason.startswith("error rate 6.0% > 5.0% (12 of 200 requests)"), reason


def test_one_principal_cannot_advance_a_rollout():
    """A rollout steps on once a quiet step window holds `min_samples` in both variants. Others
    sent 10 requests to each variant; one credential's flood of healthy requests must not supply
    the other 40: it counts for at most as much as everyone else together."""
    rollout = {"steps": [0.1, 0.5, 1.0], "step_window_s": 10}

    def traffic(recorder):
        for app in ("app-1", "app-2"):
            _record(recorder, "candidate", app, 5)
            _record(recorder, "stable", app, 5)
        _record(recorder, "candidate", "flooder", 200)
        _record(recorder, "stable", "flooder", 1800)

    assert _decide(_with(1.0, rollout=rollout), traffic)[0] == "step"  # uncapped: the flood is evidence
    assert _decide(_with(0.5, rollout=rollout), traffic) is None


def test_one_principal_cannot_push_the_candidate_into_a_rollback():
    """What the cap guarantees: one credential's samples are at most `max_principal_share` of what
    counts. So its failing requests alone never reach `min_samples` (others' 20 healthy requests
    let it count 20: 40 < 50), and however many it sends, the error rate it can add is bounded by
    the share, whatever the others' traffic."""
    def traffic(recorder):
        _record(recorder, "candidate", "app-1", 20)
        _record(recorder, "stable", "app-1", 200)
        _record(recorder, "candidate", "saboteur", 1000, errors=1000)

    assert _decide(_with(1.0), traffic)[0] == "rollback"  # uncapped: 98% errors
    assert _decide(_with(0.5), traffic) is None
    for share, others in ((0.5, 100), (0.2, 1000), (0.04, 5000)):
        recorder, window = Recorder(Clock()), Window(clock=Clock())
        for app in range(30):  # enough credentials for every one of them to fit under the share
            _record(recorder, "candidate", f"app-{app}", others // 30)
        _record(recorder, "candidate", "saboteur", 10 * others, errors=10 * others)
        window.merge(recorder.drain())
        summary = window.summary(EXPERIMENT, "candidate", 60, None, share)
        assert summary.error_rate == pytest.approx(share)
        assert summary.uncounted > 9 * others
    # With a share below the error threshold no one credential can trip the error rate at all.
    recorder, window = Recorder(Clock()), Window(clock=Clock())
    for app in range(30):
        _record(recorder, "candidate", f"app-{app}", 10)
    _record(recorder, "candidate", "saboteur", 10_000, errors=10_000)
    window.merge(recorder.drain())
    summary = window.summary(EXPERIMENT, "candidate", 60, None, 0.04)
    assert tripped(summary, summary, RollbackSettings(max_principal_share=0.04)) is None


def test_a_lone_principal_counts_in_full_so_rollbacks_work_without_authentication():
    """With authentication off every request is the one anonymous principal; with one credential
    its traffic alone. There is no one else's traffic for it to outweigh: it counts in full."""
    def traffic(recorder):
        _record(recorder, "candidate", "", 100, errors=10)
        _record(recorder, "stable", "", 900)

    action, reason = _decide(_with(0.5), traffic)
    assert action == "rollback" and "(10 of 100 requests)" in reason


def test_per_principal_statistics_stay_bounded_and_keep_the_busiest():
    """Each second keeps the busiest principals and merges the rest; a flood is always kept."""
    clock = Clock()
    routers = [Recorder(clock), Recorder(clock)]
    for router in routers:
        for i in range(500):  # many credentials, one request each
            _record(router, "candidate", f"user-{i}", 1)
        _record(router, "candidate", "flooder", 800)
    window = Window(clock=clock)
    for router in routers:
        drained = router.drain()
        assert len(drained) == PRINCIPALS_PER_SECOND + 1 and "flooder" in {d[3] for d in drained}
        window.merge(drained)
    (second,) = window.buckets[(EXPERIMENT, "candidate")].values()
    assert len(second) <= PRINCIPALS_PER_SECOND + 1 and second["flooder"].requests == 1600
    assert sum(b.requests for b in second.values()) == 2600  # merged, never dropped
    assert capped(second, 0.5).requests == pytest.approx(2000)  # the flood counts as much as the 1,000 others


def test_predict_callers_do_not_see_the_variant_and_admins_do():
    keys = parse_keys(f"app:{hash_key('predict-key')}:predict,ops:{hash_key('admin-key')}:admin+predict")
    experiment = {"experiments": {"xgboost": {"candidate": "latest", "weight": 1.0}}}
    guarded, ingress = app_with(gate_with(keys, auth={"enabled": True}), **experiment)
    open_app, open_ingress = app_with(gate_with(keys), **experiment)
    for service in (ingress, open_ingress):
        service.dispatcher.traffic.adopt(_book(1.0))
    one = {"features": ROW, "model": "xgboost"}
    batch = {"instances": [ROW] * 2, "model": "xgboost"}
    tensor = {"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": ROW}]}
    for path, body in (("/api/v1/predict", one), ("/api/v1/predict/batch", batch)):
        status, _, answer = call(guarded, "POST", path, body, {"x-api-key": "predict-key"})
        assert status == 200 and "variant" not in answer and answer["version"] == "1.1.0", answer
        status, _, answer = call(guarded, "POST", path, body, {"authorization": "Bearer admin-key"})
        assert status == 200 and answer["variant"] == "candidate", answer
        status, _, answer = call(open_app, "POST", path, body)  # authentication off: nobody is an admin
        assert status == 200 and "variant" not in answer and answer["version"] == "1.1.0", answer
    for headers in ({"x-api-key": "predict-key"}, {"x-api-key": "admin-key"}):
        status, _, answer = call(guarded, "POST", "/v2/models/xgboost/infer", tensor, headers)
        assert status == 200 and "candidate" not in json.dumps(answer) and "variant" not in json.dumps(answer)
