"""The Serve application end to end over real HTTP: the REST API, its errors, the docs page,
versions and aliases, agreement with the offline models."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from runtimes import LABELS, load
from runtimes.ensemble import EnsembleRecord, combine
from runtimes.schema import DIAGNOSTICS, FEATURES
from training.data import CURRENT, load_snapshot

from .ray_cluster import SERVE_URL

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application

PREDICT = f"{SERVE_URL}/api/v1/predict"
BATCH = f"{SERVE_URL}/api/v1/predict/batch"


def held_out(n: int = 40, offset: int = 0) -> np.ndarray:
    data = load_snapshot(CURRENT)
    return data.X[data.masks()[2]][offset:offset + n]


def as_json_row(row: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in row]


def post(url: str, body, **kwargs) -> requests.Response:
    return requests.post(url, json=body, timeout=60, **kwargs)


def test_health_reports_every_configured_version(serve_app):
    health = requests.get(f"{SERVE_URL}/api/v1/health", timeout=10).json()
    assert health["status"] == "healthy"
    assert {m: set(v) >= {"1.0.0", "1.1.0"} for m, v in health["models_loaded"].items()} == {
        "keras_cnn": True, "xgboost": True, "random_forest": True}
    assert health["cache_size"] >= 6 and "timestamp" in health


def test_models_listing_has_versions_and_aliases(serve_app):
    models = requests.get(f"{SERVE_URL}/api/v1/models", timeout=10).json()
    for name in ("keras_cnn", "xgboost", "random_forest"):
        assert models[name]["versions"] == ["1.0.0", "1.1.0", "2.0.0", "2.1.0"]
        assert models[name]["aliases"] == {"stable": "1.0.0", "latest": "1.1.0"}


@pytest.mark.parametrize("model", ["xgboost", "random_forest", "keras_cnn", "ensemble"])
def test_single_prediction_shape(serve_app, model):
    response = post(PREDICT, {"features": as_json_row(held_out(1)[0]), "model": model})
    assert response.status_code == 200, response.text
    body = response.json()
    # The ensemble's default is its own `stable` alias: the fitted 2.1.0 record and its members at 2.1.0.
    assert body["prediction"] in LABELS and body["model"] == model
    assert body["version"] == ("2.1.0" if model == "ensemble" else "1.0.0")
    assert set(body["probabilities"]) == set(LABELS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["request_id"] and body["latency_ms"] > 0
    assert body["prediction"] == max(body["probabilities"], key=body["probabilities"].get)


def test_auto_picks_the_best_registry_roc_auc(serve_app, trained_registry):
    expected = max(("keras_cnn", "xgboost", "random_forest"),
                   key=lambda m: trained_registry.metadata(m, "1.1.0").performance.roc_auc)
    body = post(PREDICT, {"features": as_json_row(held_out(1)[0]), "version": "1.1.0"}).json()
    assert body["model"] == expected and body["version"] == "1.1.0"


@pytest.mark.parametrize("model", ["xgboost", "random_forest", "keras_cnn"])
def test_served_probabilities_equal_the_offline_model(serve_app, trained_registry, model):
    rows = held_out(60)
    offline = load(model, trained_registry.pull(model, "1.1.0")).predict_proba(rows)
    body = post(BATCH, {"instances": [as_json_row(r) for r in rows], "model": model, "version": "1.1.0"}).json()
    served = np.array([[p["probabilities"][label] for label in LABELS] for p in body["predictions"]])
    np.testing.assert_allclose(served, offline, atol=1e-6)
    for i in range(3):  # single calls agree with the batch
        single = post(PREDICT, {"features": as_json_row(rows[i]), "model": model, "version": "1.1.0"}).json()
        np.testing.assert_allclose([single["probabilities"][label] for label in LABELS], served[i], atol=1e-6)


def test_features_by_name_equal_features_in_order(serve_app):
    row = held_out(1)[0]
    by_name = {name: (None if np.isnan(v) else float(v)) for name, v in zip(FEATURES, row)}
    a = post(PREDICT, {"features": as_json_row(row), "model": "xgboost"}).json()
    b = post(PREDICT, {"features": by_name, "model": "xgboost"}).json()
    assert a["probabilities"] == b["probabilities"]


def test_ensemble_is_the_weighted_soft_vote_of_its_members(serve_app):
    """1.1.0 has no fitted record: the configured (equal) weights over every family."""
    body = post(PREDICT, {"features": as_json_row(held_out(1, 5)[0]), "model": "ensemble", "version": "1.1.0",
                          "return_all_models": True}).json()
    assert body["ensemble"]["degraded"] is False and body["ensemble"].get("record") is None
    assert sorted(body["ensemble"]["members"]) == ["keras_cnn", "random_forest", "xgboost"]
    members = {a["model"]: a for a in body["all_models"]}
    weights = body["ensemble"]["weights"]
    for label in LABELS:
        vote = sum(weights[m] * members[m]["probabilities"][label] for m in members) / sum(weights.values())
        assert body["probabilities"][label] == pytest.approx(vote, abs=1e-6)


def test_the_default_ensemble_is_the_fitted_record_over_its_version(serve_app, trained_registry):
    """No version named: the ensemble's stable alias (2.1.0), its record's weights and temperatures,
    every member called at 2.1.0, and the answer equal to the record applied offline."""
    rows = held_out(20, 3)
    record = EnsembleRecord.from_json(trained_registry.read_file("ensemble", "2.1.0", "ensemble.json"))
    offline = combine(record, {m: load(m, trained_registry.pull(m, "2.1.0")).predict_proba(
        np.hstack([rows, np.full((len(rows), 33), np.nan, dtype=np.float32)])) for m in record.members})
    body = post(BATCH, {"instances": [as_json_row(r) for r in rows], "model": "ensemble",
                        "return_all_models": True}).json()
    assert body["version"] == "2.1.0" and body["ensemble"]["record"] == "2.1.0"
    assert body["ensemble"]["weights"] == record.weights and body["ensemble"]["temperatures"] == record.temperatures
    assert sorted(body["all_models"]) == sorted(record.members)
    served = np.array([[p["probabilities"][label] for label in LABELS] for p in body["predictions"]])
    np.testing.assert_allclose(served, offline, atol=1e-6)
    assert all(set(DIAGNOSTICS) <= set(p["missing_features"]) for p in body["predictions"])  # 36 values sent


def test_return_probabilities_false_leaves_them_out(serve_app):
    body = post(PREDICT, {"features": as_json_row(held_out(1)[0]), "model": "xgboost",
                          "return_probabilities": False}).json()
    assert "probabilities" not in body and body["prediction"] in LABELS


def test_both_versions_answer_in_one_run(serve_app):
    row = as_json_row(held_out(1, 7)[0])
    answers = {v: post(PREDICT, {"features": row, "model": "xgboost", "version": v}).json() for v in ("1.0.0", "1.1.0")}
    assert {v: a["version"] for v, a in answers.items()} == {"1.0.0": "1.0.0", "1.1.0": "1.1.0"}
    assert answers["1.0.0"]["probabilities"] != answers["1.1.0"]["probabilities"]
    assert post(PREDICT, {"features": row, "model": "xgboost", "version": "latest"}).json()["version"] == "1.1.0"


def test_moving_stable_changes_the_default_within_the_cache_period(serve_app, trained_registry):
    row = as_json_row(held_out(1)[0])
    assert post(PREDICT, {"features": row, "model": "random_forest"}).json()["version"] == "1.0.0"
    trained_registry.promote("random_forest", "stable", "1.1.0")
    try:
        deadline, served = time.monotonic() + 10, None
        while time.monotonic() < deadline and served != "1.1.0":
            served = post(PREDICT, {"features": row, "model": "random_forest"}).json()["version"]
            time.sleep(0.2)
        assert served == "1.1.0"
    finally:  # and back, until the routers' alias caches agree, so no test after this one sees 1.1.0
        trained_registry.promote("random_forest", "stable", "1.0.0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and post(PREDICT, {"features": row, "model": "random_forest"}).json()[
                "version"] != "1.0.0":
            time.sleep(0.2)


def test_batch_endpoint(serve_app):
    rows = [as_json_row(r) for r in held_out(5)]
    body = post(BATCH, {"instances": rows, "model": "ensemble"}).json()
    assert len(body["predictions"]) == 5 and body["model"] == "ensemble"
    full = post(BATCH, {"instances": rows * 200, "model": "xgboost"})  # exactly the 1,000-row limit
    assert full.status_code == 200 and len(full.json()["predictions"]) == 1000


def _row(**changes):
    row: list = [1.0] * 36
    for index, value in changes.items():
        row[int(index.removeprefix("i"))] = value
    return row


BAD_REQUESTS = [
    ("NaN token", b'{"features": [NaN' + b', 1' * 35 + b']}', "features"),
    ("Infinity token", b'{"features": [Infinity' + b', 1' * 35 + b']}', "features"),
    ("1e309", b'{"features": [1e309' + b', 1' * 35 + b']}', "features"),
    ("35 features", json.dumps({"features": [1.0] * 35}).encode(), "expected 36 (the table features) or 69"),
    ("37 features", json.dumps({"features": [1.0] * 37}).encode(), "expected 36 (the table features) or 69"),
    ("unknown name", json.dumps({"features": {"koi_period": 1, "koi_nonsense": 2}}).encode(), "koi_nonsense"),
    ("a string", json.dumps({"features": _row(i3="big")}).encode(), "features[3]"),
    ("a boolean", json.dumps({"features": _row(i4=True)}).encode(), "features[4]"),
    ("a nested list", json.dumps({"features": _row(i0=[1])}).encode(), "features[0]"),
    ("no features", json.dumps({"model": "xgboost"}).encode(), "features"),
    ("unknown model", json.dumps({"features": _row(), "model": "gpt"}).encode(), "model"),
    ("unknown field", json.dumps({"features": _row(), "colour": "red"}).encode(), "colour"),
    ("bad version", json.dumps({"features": _row(), "version": "1.x"}).encode(), "version"),
    ("not JSON", b'{"features": [1, 2', "body"),
    ("a list body", b"[1, 2, 3]", "body"),
    ("invalid UTF-8", b'{"features": "\xff\xfe"}', ""),
]


@pytest.mark.parametrize("body, field", [(b, f) for _, b, f in BAD_REQUESTS], ids=[n for n, *_ in BAD_REQUESTS])
def test_bad_predict_requests_get_422_naming_the_field(serve_app, body, field):
    response = requests.post(PREDICT, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]


@pytest.mark.parametrize("body, status, message", [
    ({"instances": []}, 422, "instances"),
    ({"instances": [[1.0] * 36] * 1001}, 422, "1001 rows exceed the limit of 1000"),
    ({"instances": [[1.0] * 36, [1.0] * 30]}, 422, "instances[1]"),
    ({"instances": [[1.0] * 36] * 10_000}, (413, 422), "limit"),
])
def test_bad_batches(serve_app, body, status, message):
    response = post(BATCH, body)
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), response.text[:300]
    assert message in response.json()["error"]


def test_unknown_version_is_404_and_the_model_stays_healthy(serve_app):
    response = post(PREDICT, {"features": _row(), "model": "xgboost", "version": "9.9.9"})
    assert response.status_code == 404 and "9.9.9" in response.json()["error"]
    response = post(PREDICT, {"features": _row(), "model": "xgboost", "version": "nightly"})
    assert response.status_code == 404 and "nightly" in response.json()["error"]
    assert post(PREDICT, {"features": _row(), "model": "xgboost"}).status_code == 200


def test_body_over_the_byte_limit_is_413(serve_app):
    body = b'{"features": [' + b"1.0, " * 500_000 + b"1.0]}"
    response = requests.post(PREDICT, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():
        for _ in range(100):
            yield b" " * 50_000
    chunked = requests.post(PREDICT, data=chunks(), headers={"Content-Type": "application/json"}, timeout=60)
    assert chunked.status_code == 413


def test_model_info(serve_app, trained_registry):
    info = requests.get(f"{SERVE_URL}/api/v1/models/keras_cnn/info", params={"version": "latest"}, timeout=30).json()
    assert info["version"] == "1.1.0" and info["requested"] == "latest"
    assert info["metadata"]["input_schema"]["feature_names"] == list(FEATURES)
    assert info["metadata"]["performance"]["roc_auc"] > 0.9
    assert info["checksums"] == trained_registry.manifest("keras_cnn", "1.1.0")
    assert info["aliases"] == {"stable": "1.0.0", "latest": "1.1.0"} and info["load_time_s"] > 0
    missing = requests.get(f"{SERVE_URL}/api/v1/models/nope/info", timeout=10)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert requests.get(f"{SERVE_URL}/api/v1/models/xgboost/info", params={"version": "3.0.0"},
                        timeout=10).status_code == 404


def test_docs_render_from_local_assets(serve_app):
    page = requests.get(f"{SERVE_URL}/docs", timeout=10)
    assert page.status_code == 200 and "swagger-ui" in page.text
    assets = [part.split('"')[0] for part in page.text.split('src="')[1:] + page.text.split('href="')[1:]]
    assert assets and all(a.startswith("/") for a in assets), assets  # nothing from a CDN
    for asset in assets:
        assert requests.get(f"{SERVE_URL}{asset}", timeout=10).status_code == 200, asset
    spec = requests.get(f"{SERVE_URL}/openapi.json", timeout=10).json()
    assert {"/api/v1/predict", "/api/v1/predict/batch", "/v2/models/{name}/infer"} <= set(spec["paths"])
    assert "400" in spec["paths"]["/v2/models/{name}/infer"]["post"]["responses"]


def test_a_version_that_cannot_load_fails_only_its_requests(serve_app, trained_registry, tmp_path):
    """A registered xgboost version whose model file is not a booster (checksums intact)."""
    import shutil

    source = tmp_path / "broken"
    shutil.copytree(trained_registry.pull("xgboost", "1.1.0"), source)
    (source / "checksum.sha256").unlink()
    (source / "model.json").write_text('{"learner": "not a booster"}')
    metadata = json.loads((source / "metadata.json").read_text())
    (source / "metadata.json").write_text(json.dumps({**metadata, "version": "9.0.0"}))
    trained_registry.publish("xgboost", "9.0.0", source)
    try:
        response = post(PREDICT, {"features": _row(), "model": "xgboost", "version": "9.0.0"})
        assert response.status_code == 503 and "cannot be loaded" in response.json()["error"]
        assert response.headers.get("Retry-After")
        assert post(PREDICT, {"features": _row(), "model": "xgboost"}).status_code == 200
        health = requests.get(f"{SERVE_URL}/api/v1/health", timeout=10).json()
        assert health["status"] == "healthy" and health["breakers"]["xgboost"] == "closed"
    finally:
        trained_registry.archive("xgboost", "9.0.0")


def test_requests_reach_the_router_through_haproxy(serve_app):
    """configs/ingress.env took effect: HAProxy holds port 8000 and passes predictions to the
    Router replica's own HTTP server (its statistics count them), not to Serve's proxy actor."""
    import csv
    import io

    def router_answers() -> int:
        deadline, rows, text = time.monotonic() + 30, [], ""
        while not rows and time.monotonic() < deadline:  # HAProxy reloads its servers when replicas change
            text = requests.get("http://127.0.0.1:8404/stats;csv", timeout=10).text.lstrip("# ")
            rows = [r for r in csv.DictReader(io.StringIO(text)) if "Router" in r["svname"]]
            time.sleep(0.0 if rows else 0.5)
        assert rows, text[:500]
        return sum(int(r["hrsp_2xx"] or 0) for r in rows)

    before = router_answers()
    for _ in range(5):
        assert post(PREDICT, {"features": as_json_row(held_out(1)[0]), "model": "xgboost"}).status_code == 200
    assert router_answers() - before >= 5
