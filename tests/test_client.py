"""The Python client against the real application (its retry rules: tests/test_client_retry.py)."""
from __future__ import annotations


import pytest

from serve_app.client import KeplerClient, KeplerError

from .ray_cluster import SERVE_URL
from .test_serving import as_json_row, held_out


@pytest.mark.ray
@pytest.mark.trained
def test_client_against_the_application(serve_app):
    client = KeplerClient(SERVE_URL, timeout=30)
    result = client.predict(as_json_row(held_out(1)[0]), model="ensemble", return_all_models=True)
    assert result.model == "ensemble" and result.prediction in result.probabilities
    assert len(result.all_models) == 2 and result.version == "2.1.0"  # the fitted record's tree members
    assert set(result.missing_features or []) >= {"koi_max_mult_ev"}  # 36 values: the diagnostics missing
    koi = client.predict_koi("Kepler-227 b", model="xgboost", version="2.1.0")
    assert koi.koi == "K00752.01" and koi.disposition == "CONFIRMED" and koi.catalogue_version == "1.0.0"
    star = client.predict_koi(10797460, model="xgboost", version="2.1.0")
    assert [p["koi"] for p in star.predictions][0] == "K00752.01"
    by_name = client.predict({"koi_period": 9.49, "koi_depth": 615.8}, model="xgboost", version="latest")
    assert by_name.version == "1.1.0"
    batch = client.predict_batch([as_json_row(r) for r in held_out(4)], model="random_forest")
    assert len(batch.labels) == 4
    assert set(client.models()) == {"keras_cnn", "xgboost", "random_forest"}
    assert client.model_info("xgboost")["version"] == "1.0.0"
    assert client.health()["status"] == "healthy"
    assert client.explain(koi="K00752.01", model="xgboost")["explanations"][0]["method"]
    outputs = {o["name"]: o for o in client.infer("xgboost", [as_json_row(r) for r in held_out(2)])["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 3]
    with pytest.raises(KeplerError) as error:
        client.predict([1.0] * 35, model="xgboost")
    assert error.value.status == 422 and "36" in error.value.message
