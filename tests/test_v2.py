"""Open Inference Protocol V2 over REST/JSON, and a standard V2 client library against it."""
from __future__ import annotations

import numpy as np
import pytest
import requests

from runtimes import LABELS, load

from .ray_cluster import SERVE_URL
from .test_serving import held_out

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application

V2 = f"{SERVE_URL}/v2"


def test_server_metadata_and_health(serve_app):
    assert requests.get(V2, timeout=10).json()["name"] == "kepler-serve"
    assert requests.get(f"{V2}/health/live", timeout=10).status_code == 200
    assert requests.get(f"{V2}/health/ready", timeout=10).status_code == 200


@pytest.mark.parametrize("name", ["xgboost", "random_forest", "keras_cnn", "ensemble"])
def test_model_metadata_and_readiness(serve_app, name):
    metadata = requests.get(f"{V2}/models/{name}", timeout=10).json()
    assert metadata["name"] == name and metadata["versions"] == ["1.0.0", "1.1.0", "2.0.0", "2.1.0"]
    (inputs,) = metadata["inputs"]  # the default version's schema (1.0.0: the 36 table features)
    assert (inputs["name"], inputs["datatype"], inputs["shape"]) == ("features", "FP32", [-1, 36])
    assert inputs["parameters"]["accepted_shapes"] == [[-1, 36]] and len(inputs["parameters"]["feature_names"]) == 36
    wide = requests.get(f"{V2}/models/{name}/versions/2.1.0", timeout=10).json()["inputs"][0]
    assert wide["shape"] == [-1, 69] and wide["parameters"]["accepted_shapes"] == [[-1, 36], [-1, 69]]
    explained = {} if name == "ensemble" else {"contributions": ("FP32", [-1, 3, 36]), "base_values": ("FP32", [-1, 3])}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "probabilities": ("FP32", [-1, 3]), "labels": ("BYTES", [-1]), **explained}
    assert requests.get(f"{V2}/models/{name}/versions/1.1.0", timeout=10).json()["name"] == name
    assert requests.get(f"{V2}/models/{name}/ready", timeout=10).json() == {"name": name, "ready": True}
    assert requests.get(f"{V2}/models/{name}/versions/1.0.0/ready", timeout=10).status_code == 200


def test_two_row_fp64_request_from_the_spec(serve_app, trained_registry):
    rows = np.nan_to_num(held_out(2).astype(np.float64), nan=0.0)
    request = {"id": "42", "inputs": [{"name": "features", "shape": [2, 36], "datatype": "FP64",
                                       "data": rows.tolist()}]}  # nested, row-major
    response = requests.post(f"{V2}/models/xgboost/versions/1.1.0/infer", json=request, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "xgboost" and body["model_version"] == "1.1.0" and body["id"] == "42"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 3] and outputs["probabilities"]["datatype"] == "FP32"
    offline = load("xgboost", trained_registry.pull("xgboost", "1.1.0")).predict_proba(rows.astype(np.float32))
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (2, 3)), offline, atol=1e-6)
    assert outputs["labels"] == {"name": "labels", "shape": [2], "datatype": "BYTES",
                                 "data": [LABELS[i] for i in offline.argmax(axis=1)]}
    flat = {"inputs": [{**request["inputs"][0], "data": rows.ravel().tolist()}]}
    flat_body = requests.post(f"{V2}/models/xgboost/versions/1.1.0/infer", json=flat, timeout=30).json()
    assert flat_body["outputs"] == body["outputs"]


def test_requested_outputs_are_honoured(serve_app):
    request = {"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": [1.0] * 36}],
               "outputs": [{"name": "labels"}]}
    body = requests.post(f"{V2}/models/ensemble/infer", json=request, timeout=30).json()
    assert [o["name"] for o in body["outputs"]] == ["labels"] and body["model_name"] == "ensemble"


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["inputs"][0].update(shape=[1, 35]), "shape"),
    (lambda r: r["inputs"][0].update(datatype="BYTES"), "datatype"),
    (lambda r: r["inputs"][0]["data"].__setitem__(0, None), "number"),
    (lambda r: r["inputs"][0].update(shape=[2, 36]), "needs 72 values"),
    (lambda r: r.update(outputs=[{"name": "logits"}]), "logits"),
    (lambda r: r.update(inputs=[]), "inputs"),
    (lambda r: r["inputs"][0].pop("data"), "data"),
])
def test_v2_errors_are_400_with_an_error_field(serve_app, mutate, message):
    request = {"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": [1.0] * 36}]}
    mutate(request)
    response = requests.post(f"{V2}/models/xgboost/infer", json=request, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_unknown_v2_model_and_version_are_400(serve_app):
    request = {"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": [1.0] * 36}]}
    assert requests.post(f"{V2}/models/gpt/infer", json=request, timeout=30).status_code == 400
    response = requests.post(f"{V2}/models/xgboost/versions/7.0.0/infer", json=request, timeout=30)
    assert response.status_code == 400 and "7.0.0" in response.json()["error"]
    assert requests.get(f"{V2}/models/gpt", timeout=10).status_code == 400


def test_tritonclient_speaks_to_it_unchanged(serve_app):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url="127.0.0.1:8000")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("random_forest")
    metadata = client.get_model_metadata("random_forest")
    assert metadata["inputs"][0]["shape"] == [-1, 36]
    rows = np.nan_to_num(held_out(3), nan=0.0).astype(np.float32)
    features = httpclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False),
               httpclient.InferRequestedOutput("labels", binary_data=False)]
    result = client.infer("random_forest", inputs=[features], outputs=outputs, model_version="1.1.0")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("labels")] == [
        LABELS[i] for i in probabilities.argmax(axis=1)]
