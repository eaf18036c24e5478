"""Per-version feature schemas over real HTTP: 36 and 69 positional values, features by name
across versions, the missing ones listed, other lengths refused, and the V2 side of it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from runtimes import LABELS, load
from runtimes.schema import DIAGNOSTICS, FEATURES, WITH_DIAGNOSTICS
from training.data import CURRENT, load_snapshot

from .ray_cluster import SERVE_URL
from .test_serving import BATCH, PREDICT, as_json_row, post

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application


def wide_held_out(n: int = 30) -> np.ndarray:
    data = load_snapshot(CURRENT)
    return data.matrix(WITH_DIAGNOSTICS)[data.masks()[2]][:n]


def served(body: dict) -> np.ndarray:
    return np.array([[p["probabilities"][label] for label in LABELS] for p in body["predictions"]])


@pytest.mark.parametrize("model", ["xgboost", "random_forest", "keras_cnn"])
def test_2_1_0_answers_equal_the_offline_model_for_69_and_36_values(serve_app, trained_registry, model):
    rows = wide_held_out()
    runtime = load(model, trained_registry.pull(model, "2.1.0"))
    body = post(BATCH, {"instances": [as_json_row(r) for r in rows], "model": model, "version": "2.1.0"}).json()
    np.testing.assert_allclose(served(body), runtime.predict_proba(rows), atol=1e-6)
    narrow = rows.copy()
    narrow[:, 36:] = np.nan  # 36 values: the diagnostics are missing, and listed
    body = post(BATCH, {"instances": [as_json_row(r[:36]) for r in rows], "model": model, "version": "2.1.0"}).json()
    np.testing.assert_allclose(served(body), runtime.predict_proba(narrow), atol=1e-6)
    assert all(set(DIAGNOSTICS) <= set(p["missing_features"]) for p in body["predictions"])


def test_features_by_name_serve_every_version(serve_app):
    row = wide_held_out(1)[0]
    by_name = {name: float(v) for name, v in zip(WITH_DIAGNOSTICS, row) if not np.isnan(v)}
    for version, width in (("1.1.0", 36), ("2.1.0", 69)):
        positional = post(PREDICT, {"features": as_json_row(row[:width]), "model": "xgboost", "version": version})
        named = post(PREDICT, {"features": by_name, "model": "xgboost", "version": version})
        assert positional.status_code == named.status_code == 200, (positional.text, named.text)
        assert named.json()["probabilities"] == positional.json()["probabilities"]
    partial = {k: v for k, v in by_name.items() if k in FEATURES[:10] or k == "koi_max_mult_ev"}
    body = post(PREDICT, {"features": partial, "model": "xgboost", "version": "2.1.0"}).json()
    assert set(body["missing_features"]) == set(WITH_DIAGNOSTICS) - set(partial)


def test_other_lengths_and_69_values_for_a_1x_version_are_422s(serve_app):
    row = as_json_row(wide_held_out(1)[0])
    for length in (35, 37, 68, 70):
        response = post(PREDICT, {"features": (row * 2)[:length], "model": "xgboost"})
        assert response.status_code == 422 and "36 (the table features) or 69" in response.json()["error"]
    response = post(PREDICT, {"features": row, "model": "xgboost", "version": "1.1.0"})
    assert response.status_code == 422
    assert "xgboost 1.1.0 takes 36 values per row; 69 positional values" in response.json()["error"]
    assert post(PREDICT, {"features": row, "model": "xgboost", "version": "2.0.0"}).status_code == 200


def test_the_schema_endpoint_follows_model_and_version(serve_app):
    schema = requests.get(f"{SERVE_URL}/api/v1/schema", params={"model": "xgboost", "version": "2.1.0"},
                          timeout=10).json()
    assert schema["version"] == "2.1.0" and schema["input"]["feature_names"] == list(WITH_DIAGNOSTICS)
    assert schema["positional_lengths"] == [36, 69]
    old = requests.get(f"{SERVE_URL}/api/v1/schema", params={"model": "xgboost", "version": "1.0.0"}, timeout=10).json()
    assert old["input"]["features"] == 36 and old["positional_lengths"] == [36]
    assert requests.get(f"{SERVE_URL}/api/v1/schema", params={"model": "nope"}, timeout=10).status_code == 422


def test_v2_takes_69_columns_for_2x_and_marks_missing_values_with_a_parameter(serve_app, trained_registry):
    rows = wide_held_out(4)
    sentinel = -9999.0
    data = np.where(np.isnan(rows), sentinel, rows)
    request = {"parameters": {"missing_value": sentinel},
               "inputs": [{"name": "features", "shape": [4, 69], "datatype": "FP64", "data": data.tolist()}]}
    response = requests.post(f"{SERVE_URL}/v2/models/random_forest/versions/2.1.0/infer", json=request, timeout=30)
    assert response.status_code == 200, response.text
    probabilities = np.array(response.json()["outputs"][0]["data"]).reshape(4, 3)
    offline = load("random_forest", trained_registry.pull("random_forest", "2.1.0")).predict_proba(rows)
    np.testing.assert_allclose(probabilities, offline, atol=1e-6)
    old = requests.post(f"{SERVE_URL}/v2/models/random_forest/versions/1.1.0/infer", json=request, timeout=30)
    assert old.status_code == 400 and "takes 36 values per row" in old.json()["error"]
    unmarked = {"inputs": [{**request["inputs"][0], "data": rows.tolist()}]}  # NaN is no V2 value
    bad = requests.post(f"{SERVE_URL}/v2/models/random_forest/versions/2.1.0/infer", data=json.dumps(unmarked),
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert bad.status_code == 400 and "finite" in bad.json()["error"], bad.text
