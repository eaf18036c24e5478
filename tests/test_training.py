"""Training on the real KOI data: the split, the floors, metadata, reproducibility, idempotence."""
from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest

from registry import ModelRegistry
from registry.stores import LocalStore
from runtimes import FEATURES, LABELS, load
from runtimes.preprocessing import Preprocessor
from runtimes.schema import DIAGNOSTICS, WITH_DIAGNOSTICS
from training.data import CURRENT, DIAGNOSTICS_FILE, SNAPSHOTS, data_dir, is_test_star, load_snapshot
from training.evaluate import evaluate
from training.train import train_all

# (model, version, labels) -> (accuracy, macro-F1, ROC-AUC) floors on the test stars.
FLOORS = {
    ("xgboost", "1.1.0", "koi_cumulative_2025-09-18"): (0.81, 0.77, 0.92),
    ("random_forest", "1.1.0", "koi_cumulative_2025-09-18"): (0.80, 0.75, 0.91),
    ("keras_cnn", "1.1.0", "koi_cumulative_2025-09-18"): (0.78, 0.72, 0.90),
    ("xgboost", "1.0.0", "koi_cumulative_2019-01-20"): (0.78, 0.74, 0.91),
    # 2.x: the 36 table features and the 33 vetting diagnostics, trained in full by the fixture.
    ("xgboost", "2.1.0", "koi_cumulative_2025-09-18"): (0.85, 0.81, 0.950),
    ("random_forest", "2.1.0", "koi_cumulative_2025-09-18"): (0.845, 0.80, 0.945),
    ("keras_cnn", "2.1.0", "koi_cumulative_2025-09-18"): (0.82, 0.77, 0.93),
    ("xgboost", "2.0.0", "koi_cumulative_2019-01-20"): (0.81, 0.78, 0.935),
    ("ensemble", "2.1.0", "koi_cumulative_2025-09-18"): (0.855, 0.82, 0.955),
}
BOTH_LABELS = {"koi_cumulative_2019-01-20", "koi_cumulative_2025-09-18"}
LEAKY = {"koi_pdisposition", "koi_score", "koi_fpflag_nt", "koi_fpflag_ss", "koi_fpflag_co", "koi_fpflag_ec",
         "kepler_name", "kepid", "kepoi_name", "koi_tce_delivname", "koi_teq_err1", "koi_teq_err2", "koi_disposition"}


def test_schema_has_36_numeric_non_leaky_features_and_33_diagnostics():
    table = load_snapshot(CURRENT).table
    assert len(FEATURES) == 36 and len(set(FEATURES)) == 36 and len(DIAGNOSTICS) == 33
    assert not (LEAKY | {"koi_comment"}) & set(FEATURES + DIAGNOSTICS)
    assert set(FEATURES) | set(DIAGNOSTICS) | LEAKY | {"loc_rowid"} >= set(table.columns)
    assert all(np.issubdtype(table[f].dtype, np.number) for f in FEATURES + DIAGNOSTICS)
    assert LABELS == ("CONFIRMED", "CANDIDATE", "FALSE_POSITIVE")


def test_the_bundled_diagnostics_are_the_documented_file_joined_by_name():
    raw = gzip.decompress((data_dir() / DIAGNOSTICS_FILE).read_bytes())
    assert hashlib.sha256(raw).hexdigest() == "69fdcce44cce60f112bde0c219ecac1ad349d99afec80cce49942f18540a492e"
    snapshot = load_snapshot(CURRENT)
    assert snapshot.table["koi_max_mult_ev"].isna().sum() == 1142  # the KOIs absent from the DR25 run
    assert snapshot.complete_diagnostics.sum() == 6682
    # Preprocessing never lets a model see a diagnostic's absence: every family fills them.
    X = snapshot.matrix(WITH_DIAGNOSTICS)
    for impute in (False, True):
        prep = Preprocessor.fit(X, log_skewed=False, impute=impute, standardize=False, features=WITH_DIAGNOSTICS)
        filled = prep.transform(X)
        assert not np.isnan(filled[:, 36:]).any()
        assert np.isnan(filled[:, :36]).any() != impute  # table values: NaN stays NaN for XGBoost only


def test_split_is_by_star_and_matches_the_documented_rule():
    for snapshot in SNAPSHOTS:
        data = load_snapshot(snapshot)
        train, validation, test = data.masks()
        assert test.sum() == 1803 and (train | validation | test).all()
        assert not set(data.kepid[test]) & set(data.kepid[~test])
        expected = [int(hashlib.sha256(str(k).encode()).hexdigest(), 16) % 100 < 20 for k in data.kepid]
        assert list(test) == expected == [is_test_star(k) for k in data.kepid]


def test_snapshots_differ_only_in_labels():
    old, new = load_snapshot("2019-01-20"), load_snapshot("2025-09-18")
    assert list(old.table["kepoi_name"]) == list(new.table["kepoi_name"])
    np.testing.assert_array_equal(old.X, new.X)
    assert (old.y != new.y).sum() == 447


@pytest.mark.trained
@pytest.mark.parametrize("key", list(FLOORS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_trained_models_meet_the_floors(trained_registry, key):
    name, version, labels = key
    evaluation = trained_registry.metadata(name, version).evaluations[labels]
    accuracy, f1, auc = FLOORS[key]
    assert evaluation["accuracy"] >= accuracy and evaluation["f1_score"] >= f1 and evaluation["roc_auc"] >= auc, evaluation


@pytest.mark.trained
def test_metadata_follows_the_seed_schema(trained_registry):
    for name in ("xgboost", "random_forest", "keras_cnn"):
        assert trained_registry.aliases(name) == {"stable": "1.0.0", "latest": "1.1.0"}
        for version, own in (("1.0.0", "koi_cumulative_2019-01-20"), ("1.1.0", "koi_cumulative_2025-09-18")):
            meta = trained_registry.metadata(name, version)
            assert meta.training.dataset_version == own
            assert meta.performance.evaluated_against == own and meta.performance.averaging == "macro"
            assert meta.input_schema.feature_names == list(FEATURES) and meta.input_schema.features == 36
            assert meta.output_schema.labels == list(LABELS)
            assert set(meta.evaluations) == BOTH_LABELS
            evaluation = meta.evaluations["koi_cumulative_2025-09-18"]
            assert set(evaluation["per_class"]) == set(LABELS)
            matrix = np.array(evaluation["confusion_matrix"]["matrix"])
            assert matrix.shape == (3, 3) and matrix.sum() == 1803
            assert 0 <= evaluation["expected_calibration_error"] < 0.2
            directory = trained_registry.pull(name, version)
            assert (directory / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert json.loads((directory / "preprocessing.json").read_text())["features"] == list(FEATURES)


@pytest.mark.trained
@pytest.mark.parametrize("name", ["xgboost", "random_forest", "keras_cnn"])
def test_registered_model_reproduces_its_metadata(trained_registry, name):
    data = load_snapshot(CURRENT)
    test = data.masks()[2]
    runtime = load(name, trained_registry.pull(name, "1.1.0"))
    recomputed = evaluate(data.y[test], runtime.predict_proba(data.X[test]), "koi_cumulative_2025-09-18")
    stored = trained_registry.metadata(name, "1.1.0").evaluations["koi_cumulative_2025-09-18"]
    for metric in ("accuracy", "precision", "recall", "f1_score", "roc_auc", "expected_calibration_error"):
        assert recomputed[metric] == pytest.approx(stored[metric], abs=1e-6), metric
    assert recomputed["confusion_matrix"] == stored["confusion_matrix"]


@pytest.mark.trained
def test_training_again_is_idempotent(trained_registry, capsys):
    before = {n: trained_registry.manifest(n, "1.1.0") for n in ("xgboost", "random_forest", "keras_cnn")}
    assert train_all(trained_registry) == []
    assert "already registered, skipping" in capsys.readouterr().err
    assert before == {n: trained_registry.manifest(n, "1.1.0") for n in before}


@pytest.mark.trained
def test_full_retraining_is_bit_identical_for_trees(trained_registry, tmp_path):
    fresh = ModelRegistry(LocalStore(tmp_path / "again"), tmp_path / "cache")
    train_all(fresh, models=("xgboost", "random_forest"), versions=("1.1.0",))
    data = load_snapshot(CURRENT)
    X_test = data.X[data.masks()[2]]
    for name, model_file in (("xgboost", "model.json"), ("random_forest", "model.npz")):
        assert fresh.manifest(name, "1.1.0")[model_file] == trained_registry.manifest(name, "1.1.0")[model_file]
        a = load(name, fresh.pull(name, "1.1.0")).predict_proba(X_test)
        b = load(name, trained_registry.pull(name, "1.1.0")).predict_proba(X_test)
        assert np.array_equal(a, b)


@pytest.mark.trained  # no trained registry, but two fast trainings of every family on the real data
def test_fast_mode_is_reproducible(tmp_path):
    runs = []
    for run in ("a", "b"):
        registry = ModelRegistry(LocalStore(tmp_path / run), tmp_path / f"cache-{run}")
        published = train_all(registry, versions=("1.1.0",), fast=True)
        assert {m["model_name"] for m in published} == {"xgboost", "random_forest", "keras_cnn"}
        assert all(m["training"]["fast"] for m in published)
        runs.append(registry)
    a, b = runs
    for name, model_file in (("xgboost", "model.json"), ("random_forest", "model.npz")):
        assert a.manifest(name, "1.1.0")[model_file] == b.manifest(name, "1.1.0")[model_file]
    cnn_a, cnn_b = a.metadata("keras_cnn", "1.1.0").performance, b.metadata("keras_cnn", "1.1.0").performance
    for metric in ("accuracy", "f1_score", "roc_auc"):
        assert abs(getattr(cnn_a, metric) - getattr(cnn_b, metric)) <= 0.01


@pytest.mark.trained
def test_forest_file_cannot_carry_code(tmp_path, trained_registry):
    """A pickle smuggled into model.npz is refused by the loader and never executed."""
    import io
    import shutil
    import zipfile

    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    directory = tmp_path / "forest"
    shutil.copytree(trained_registry.pull("random_forest", "1.1.0"), directory)
    buffer = io.BytesIO()
    np.save(buffer, np.array([Exploit()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(directory / "model.npz") as original:
        members = {name: original.read(name) for name in original.namelist()}
    members["n_trees.npy"] = buffer.getvalue()
    with zipfile.ZipFile(directory / "model.npz", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="allow_pickle"):
        load("random_forest", directory)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.trained
def test_packed_forest_answers_exactly_as_scikit_learn(trained_registry):
    """The serving path walks the trees as flat arrays (runtimes/tree_arrays.py); its
    probabilities are scikit-learn's own, bit for bit: for the test set, for single rows, and
    for rows with missing values sent straight to the trees (each split's learnt direction)."""
    runtime = load("random_forest", trained_registry.pull("random_forest", "1.1.0"))
    data = load_snapshot(CURRENT)
    X = runtime.preprocessor.transform(data.X[data.masks()[2]])
    assert np.array_equal(runtime.packed.predict_proba(X), runtime.model.predict_proba(X))
    for row in X[:5]:
        assert np.array_equal(runtime.packed.predict_proba(row[None]), runtime.model.predict_proba(row[None]))
    holes = X[:200].copy()
    holes[np.random.default_rng(0).random(holes.shape) < 0.2] = np.nan
    assert np.array_equal(runtime.packed.predict_proba(holes), runtime.model.predict_proba(holes))
