"""KOIs by name over real HTTP: every name form, the catalogue row, 404s and 422s, and the
candidates ranking, which must equal ranking the stored out-of-fold probabilities."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import requests

from runtimes.schema import WITH_DIAGNOSTICS
from training.data import CURRENT, is_test_star, load_snapshot
from training.ensembles import member_out_of_fold

from .ray_cluster import SERVE_URL
from .test_serving import BATCH, PREDICT, as_json_row, post

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application
KOI = f"{SERVE_URL}/api/v1/koi"
CANDIDATES = f"{SERVE_URL}/api/v1/candidates"


def _features_of(koi: str) -> list:
    table = load_snapshot(CURRENT).table.set_index("kepoi_name")
    return as_json_row(table.loc[koi, list(WITH_DIAGNOSTICS)].to_numpy(dtype=np.float32))


@pytest.mark.parametrize("name", ["K00752.01", "KOI-752.01", "752.01", "koi 752.01", "Kepler-227 b", "kepler-227b"])
def test_every_name_form_predicts_the_koi_as_its_features_do(serve_app, name):
    by_name = post(PREDICT, {"koi": name, "model": "xgboost", "version": "2.1.0"})
    assert by_name.status_code == 200, by_name.text
    body = by_name.json()
    assert body["koi"] == "K00752.01" and body["disposition"] == "CONFIRMED"
    assert body["catalogue_version"] == "1.0.0" and body["version"] == "2.1.0"
    assert body["in_training_set"] is (not is_test_star(10797460))
    by_features = post(PREDICT, {"features": _features_of("K00752.01"), "model": "xgboost", "version": "2.1.0"}).json()
    assert body["probabilities"] == by_features["probabilities"]


def test_a_kic_id_answers_for_every_koi_of_its_star_and_batches_mix_forms(serve_app):
    table = load_snapshot(CURRENT).table
    kepid = int(table["kepid"].value_counts().index[0])  # the star with the most KOIs
    expected = sorted(table.loc[table["kepid"] == kepid, "kepoi_name"])
    body = post(PREDICT, {"koi": kepid, "model": "random_forest", "version": "2.1.0"}).json()
    assert [p["koi"] for p in body["predictions"]] == expected and len(expected) > 1
    batch = post(BATCH, {"kois": ["K00752.01", str(kepid), "Kepler-227 b"], "model": "ensemble"}).json()
    assert [p["koi"] for p in batch["predictions"]] == ["K00752.01", *expected, "K00752.01"]
    assert batch["catalogue_version"] == "1.0.0" and batch["version"] == "2.1.0"
    assert all(set(p) >= {"prediction", "probabilities", "disposition", "in_training_set"} for p in batch["predictions"])
    assert "missing_features" not in batch["predictions"][0]  # K00752.01 has every feature


def test_unknown_names_are_404s_and_malformed_ones_422s(serve_app):
    for name in ("K99999.01", "Kepler-99999 b", 1):
        response = post(PREDICT, {"koi": name})
        assert response.status_code == 404, (name, response.text)
        assert "koi" in response.json()["error"]
    for name in ("", "K00752", "hello", "K00752.01; DROP", "x" * 500, -5, 10**40, True, 7.5, [1]):
        response = post(PREDICT, {"koi": name})
        assert response.status_code == 422, (name, response.text)
        assert "koi" in response.json()["error"]
    both = post(PREDICT, {"koi": "K00752.01", "features": _features_of("K00752.01")})
    assert both.status_code == 422 and "exactly one" in both.json()["error"]
    too_many = post(BATCH, {"kois": ["K00752.01"] * 1001})
    assert too_many.status_code == 422 and "kois: 1001 rows exceed the limit of 1000" in too_many.json()["error"]
    response = post(BATCH, {"kois": ["K00752.01", "nonsense!"]})
    assert response.status_code == 422 and "kois[1]" in response.json()["error"]
    assert requests.get(f"{KOI}/K99999.01", timeout=30).status_code == 404
    assert requests.get(f"{KOI}/not-a-koi", timeout=30).status_code == 422


def test_the_catalogue_row(serve_app):
    body = requests.get(f"{KOI}/KOI-752.01", timeout=30).json()
    (row,) = body["kois"]
    assert body["catalogue_version"] == "1.0.0" and row["kepoi_name"] == "K00752.01" and row["kepid"] == 10797460
    assert row["kepler_name"] == "Kepler-227 b" and row["disposition"] == "CONFIRMED"
    features = [row["features"][n] for n in WITH_DIAGNOSTICS]
    np.testing.assert_allclose(np.array(features, dtype=np.float32), np.array(_features_of("K00752.01"), np.float32))


@pytest.mark.parametrize("model", ["ensemble", "xgboost"])
def test_the_candidates_ranking_is_the_stored_out_of_fold_ranking(serve_app, trained_registry, model):
    body = requests.get(CANDIDATES, params={"model": model, "version": "2.1.0", "top": 100}, timeout=60).json()
    assert body["model"] == model and body["version"] == "2.1.0" and body["catalogue_version"] == "1.0.0"
    names, _, probabilities = member_out_of_fold(trained_registry, model, "2.1.0")
    current = dict(zip(load_snapshot(CURRENT).table["kepoi_name"], load_snapshot(CURRENT).table["koi_disposition"]))
    candidates = [(-p[0], n) for n, p in zip(names, probabilities) if current[n] == "CANDIDATE"]
    assert body["candidates_in_catalogue"] == len(candidates) == 1979
    expected = [n for _, n in sorted(candidates)[:100]]
    assert [c["koi"] for c in body["candidates"]] == expected
    assert [c["rank"] for c in body["candidates"]] == list(range(1, 101))
    first = body["candidates"][0]
    assert first["p_confirmed"] == pytest.approx(first["probabilities"]["CONFIRMED"])
    if model == "ensemble":
        assert set(first["members"]) == {"xgboost", "random_forest"}
        _, _, xgb = member_out_of_fold(trained_registry, "xgboost", "2.1.0")
        assert first["members"]["xgboost"]["CONFIRMED"] == pytest.approx(xgb[names.index(first["koi"])][0])
    text = requests.get(CANDIDATES, params={"model": model, "version": "2.1.0", "top": 5, "format": "csv"},
                        timeout=60).text
    rows = list(csv.reader(io.StringIO(text.split("\n", 1)[1])))
    assert [r[1] for r in rows[1:]] == expected[:5] and rows[0][:3] == ["rank", "koi", "kepler_name"]


def test_ranking_needs_out_of_fold_predictions(serve_app):
    no_folds = requests.get(CANDIDATES, params={"model": "xgboost", "version": "1.1.0"}, timeout=30)
    assert no_folds.status_code == 422 and "out-of-fold" in no_folds.json()["error"]
    assert requests.get(CANDIDATES, params={"model": "keras_cnn"}, timeout=30).status_code == 422
    assert requests.get(CANDIDATES, params={"top": 0}, timeout=30).status_code == 422
