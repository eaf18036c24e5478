"""POST /api/v1/explain and V2's contributions output over real HTTP, on the single-node
application: each family's numbers add up as the README says, the explained answer is the
predicted one, and the limits and errors are clean."""
from __future__ import annotations

import numpy as np
import pytest

from runtimes.schema import FEATURES, LABELS, WITH_DIAGNOSTICS

from .ray_cluster import SERVE_URL
from .test_serving import PREDICT, post

pytestmark = [pytest.mark.ray, pytest.mark.trained]
EXPLAIN = f"{SERVE_URL}/api/v1/explain"
COMPLETENESS = {"tree_shap": 1e-5, "integrated_gradients": 0.005}


def _vector(by_class: dict) -> np.ndarray:
    return np.array([by_class[label] for label in LABELS])


def _check_adds_up(explanation: dict) -> None:
    values = np.array([explanation["values"][label] for label in LABELS])
    assert np.isfinite(values).all()
    total = _vector(explanation["base_value"]) + values.sum(axis=1)
    np.testing.assert_allclose(total + _vector(explanation["delta"]), _vector(explanation["output"]), atol=1e-9)
    assert np.abs(_vector(explanation["delta"])).max() <= COMPLETENESS[explanation["method"]]
    explained = explanation["values"][explanation["explained_class"]]
    assert list(np.argsort(-np.abs(explained), kind="stable")) == list(range(len(explained)))


@pytest.mark.parametrize("model", ["xgboost", "random_forest", "keras_cnn"])
def test_each_family_explains_the_answer_it_predicts_and_its_numbers_add_up(serve_app, model):
    request = {"koi": "K00752.01", "model": model, "version": "2.1.0"}
    response = post(EXPLAIN, request)
    assert response.status_code == 200, response.text
    body = response.json()
    predicted = post(PREDICT, request).json()
    (prediction,), (explanation,) = body["predictions"], body["explanations"]
    assert (body["model"], body["version"], explanation["version"]) == (model, "2.1.0", "2.1.0")
    assert prediction["koi"] == "K00752.01" and prediction["disposition"] == "CONFIRMED"
    np.testing.assert_allclose(_vector(prediction["probabilities"]), _vector(predicted["probabilities"]), atol=1e-6)
    assert prediction["prediction"] == predicted["prediction"] == explanation["explained_class"]
    assert sorted(explanation["feature_names"]) == sorted(WITH_DIAGNOSTICS)
    assert len(explanation["feature_labels"]) == len(explanation["feature_values"]) == 69
    _check_adds_up(explanation)
    if model == "xgboost":  # margins: their softmax is the answer
        margins = _vector(explanation["output"])
        softmax = np.exp(margins - margins.max()) / np.exp(margins - margins.max()).sum()
        np.testing.assert_allclose(softmax, _vector(prediction["probabilities"]), atol=1e-5)
        assert explanation["output_space"] == "margin"
    else:
        assert explanation["output_space"] == "probability"
        np.testing.assert_allclose(_vector(explanation["output"]), _vector(prediction["probabilities"]), atol=1e-6)


def test_the_ensemble_explains_its_weighted_members_and_says_they_do_not_add_up(serve_app):
    request = {"koi": "K00752.01", "model": "ensemble", "version": "2.1.0"}
    body = post(EXPLAIN, request).json()
    predicted = post(PREDICT, request).json()
    (explanation,) = body["explanations"]
    assert explanation["method"] == "weighted_members" and explanation["additive"] is False
    assert set(explanation["members"]) == set(predicted["ensemble"]["members"]) == set(explanation["weights"])
    np.testing.assert_allclose(_vector(explanation["output"]), _vector(predicted["probabilities"]), atol=1e-6)
    for member in explanation["members"].values():
        assert member["explained_class"] == explanation["explained_class"]
        _check_adds_up(member)


def test_feature_rows_and_several_kois_are_explained_row_by_row(serve_app):
    rows = [[0.5] * len(FEATURES), [1.0] * len(FEATURES)]
    body = post(EXPLAIN, {"instances": rows, "model": "xgboost", "version": "1.0.0"}).json()
    assert [e["version"] for e in body["explanations"]] == ["1.0.0", "1.0.0"]
    assert sorted(body["explanations"][0]["feature_names"]) == sorted(FEATURES)
    kic = post(EXPLAIN, {"koi": 10797460, "model": "random_forest", "version": "2.1.0"}).json()  # two KOIs
    assert [p["koi"] for p in kic["predictions"]] == ["K00752.01", "K00752.02"] and len(kic["explanations"]) == 2


@pytest.mark.parametrize("request_body, status, field", [
    ({"instances": [[1.0] * 36] * 33, "model": "xgboost"}, 422, "max_explain_rows"),
    ({"koi": "K99999.01", "model": "xgboost"}, 404, "K99999.01"),
    ({"koi": "K00752.01", "model": "gpt"}, 422, "model"),
    ({"features": [1.0] * 3, "model": "xgboost"}, 422, "features"),
    ({"koi": "K00752.01", "features": [1.0] * 36}, 422, "exactly one"),
    ({"koi": "K00752.01", "model": "xgboost", "version": "9.9.9"}, 404, "9.9.9"),
])
def test_bad_requests_are_refused_with_the_field_named(serve_app, request_body, status, field):
    response = post(EXPLAIN, request_body)
    assert response.status_code == status and field in response.json()["error"], response.text


def test_v2_answers_contributions_when_asked_and_the_ensemble_refuses_them(serve_app):
    row = [0.5] * len(WITH_DIAGNOSTICS)
    request = {"inputs": [{"name": "features", "shape": [1, 69], "datatype": "FP32", "data": row}],
               "outputs": [{"name": "probabilities"}, {"name": "contributions"}, {"name": "base_values"}]}
    response = post(f"{SERVE_URL}/v2/models/random_forest/versions/2.1.0/infer", request)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["contributions"]["shape"] == [1, 3, 69] and outputs["base_values"]["shape"] == [1, 3]
    assert outputs["contributions"]["parameters"]["feature_names"] == list(WITH_DIAGNOSTICS)
    contributions = np.array(outputs["contributions"]["data"]).reshape(3, 69)
    total = np.array(outputs["base_values"]["data"]) + contributions.sum(axis=1)
    np.testing.assert_allclose(total, outputs["probabilities"]["data"], atol=1e-5)  # FP32 on the wire
    refused = post(f"{SERVE_URL}/v2/models/ensemble/infer", request)
    assert refused.status_code == 400 and "contributions" in refused.json()["error"]
