"""Versions 2.x: the diagnostics, the out-of-fold predictions and the fitted ensemble, on the
registry the trained fixture fills in full (the whole recipe, as a quickstart runs it)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from registry import IntegrityError
from runtimes import load
from runtimes.ensemble import EnsembleRecord, combine
from runtimes.schema import WITH_DIAGNOSTICS
from training.data import CURRENT, load_snapshot
from training.ensemble_fit import fold_ids
from training.ensembles import member_out_of_fold
from training.evaluate import evaluate

pytestmark = pytest.mark.trained
LABELS_2025 = "koi_cumulative_2025-09-18"


def test_2x_metadata_declares_69_features_and_reports_the_complete_diagnostics_subset(trained_registry):
    for name in ("xgboost", "random_forest", "keras_cnn", "ensemble"):
        for version in ("2.0.0", "2.1.0"):
            meta = trained_registry.metadata(name, version)
            assert meta.input_schema.feature_names == list(WITH_DIAGNOSTICS) and meta.input_schema.features == 69
            complete = meta.model_extra["evaluations_complete_diagnostics"]
            assert set(complete) == set(meta.evaluations) == {"koi_cumulative_2019-01-20", LABELS_2025}
            assert all(e["test_samples"] == 1241 for e in complete.values())
            card = (trained_registry.pull(name, version) / "MODEL_CARD.md").read_text()
            assert f"# {name} {version}" in card and "koi_max_mult_ev is missing exactly" in card
            assert "complete diagnostics" in card


def test_out_of_fold_predictions_never_come_from_a_model_that_saw_the_star(trained_registry):
    data = load_snapshot(CURRENT)
    test = data.masks()[2]
    runtime = load("xgboost", trained_registry.pull("xgboost", "2.1.0"))
    served = runtime.predict_proba(data.matrix(WITH_DIAGNOSTICS))
    names, folds, oof = member_out_of_fold(trained_registry, "xgboost", "2.1.0")
    assert names == list(data.table["kepoi_name"])
    expected = fold_ids(data.kepid)
    assert list(folds) == ["test" if f < 0 else str(f) for f in expected]
    # Test stars: the served model, which never saw them; the rest: fold models, which did not
    # see their stars (the served model did, so it is more confident on them).
    np.testing.assert_allclose(oof[test], served[test], atol=1e-6)
    assert not np.allclose(oof[~test], served[~test], atol=1e-3)
    own_label = served[~test][np.arange((~test).sum()), data.y[~test]]
    fold_label = oof[~test][np.arange((~test).sum()), data.y[~test]]
    assert own_label.mean() > fold_label.mean()
    assert np.allclose(oof.sum(axis=1), 1.0, atol=1e-5)


def test_the_ensemble_record_is_fitted_out_of_sample_checksummed_and_reproduces_its_metrics(trained_registry):
    meta = trained_registry.metadata("ensemble", "2.1.0")
    data = trained_registry.read_file("ensemble", "2.1.0", "ensemble.json")
    assert trained_registry.manifest("ensemble", "2.1.0")["ensemble.json"] == hashlib.sha256(data).hexdigest()
    record = EnsembleRecord.from_json(data)
    assert record.version == "2.1.0" and set(record.members) == {"xgboost", "random_forest"}
    assert "keras_cnn" in record.excluded
    assert record.fitted_on["rows"] == 9564 - 1803  # every non-test star's KOI, none of the test stars'
    assert record.fitted_on["log_loss"]["fitted"] <= record.fitted_on["log_loss"]["plain_average"]
    # The members' test predictions, combined by the record, give the stored metrics.
    snapshot = load_snapshot(CURRENT)
    test = snapshot.masks()[2]
    X = snapshot.matrix(WITH_DIAGNOSTICS)[test]
    members = {m: load(m, trained_registry.pull(m, "2.1.0")).predict_proba(X) for m in record.members}
    recomputed = evaluate(snapshot.y[test], combine(record, members), LABELS_2025)
    stored = meta.evaluations[LABELS_2025]
    for metric in ("accuracy", "f1_score", "roc_auc", "expected_calibration_error"):
        assert recomputed[metric] == pytest.approx(stored[metric], abs=1e-6), metric
    best_member = max(trained_registry.metadata(m, "2.1.0").evaluations[LABELS_2025]["roc_auc"] for m in record.members)
    assert stored["roc_auc"] >= best_member - 0.003
    assert stored["expected_calibration_error"] <= 0.03


def test_a_tampered_ensemble_record_is_refused(trained_registry, tmp_path):
    from registry import ModelRegistry
    from registry.stores import LocalStore
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(trained_registry.store.root / "models" / "ensemble", root / "models" / "ensemble")
    copy = ModelRegistry(LocalStore(root), tmp_path / "cache")
    key = "models/ensemble/v2.1.0/ensemble.json"
    record = EnsembleRecord.from_json(copy.store.get(key))
    heavier = record.model_copy(update={"weights": {m: (1.0 if m == "random_forest" else 0.0) for m in record.members}})
    copy.store.put(key, heavier.to_json())
    with pytest.raises(IntegrityError):
        copy.read_file("ensemble", "2.1.0", "ensemble.json")
    with pytest.raises(IntegrityError):
        copy.pull("ensemble", "2.1.0")


def test_the_report_shows_every_version_the_ensembles_and_the_complete_diagnostics_rows(trained_registry, capsys):
    from training.registry_cli import main

    assert main(["--registry", str(trained_registry.store.root), "report"]) == 0
    table = capsys.readouterr().out
    assert "| ensemble | 2.1.0 | 2025-09-18 | all (1803) |" in table
    assert "| xgboost | 2.1.0 | 2025-09-18 | complete diagnostics (1241) |" in table
    assert "| keras_cnn | 1.0.0 | 2019-01-20 | all (1803) |" in table


def test_the_2019_recipe_ranks_the_2019_candidates_that_were_confirmed_by_2025_first(trained_registry):
    from training.retrospective import precision_at

    result = precision_at(trained_registry, "ensemble", "2.0.0")
    assert result["candidates_2019"] == 2424 and result["confirmed_by_2025"] == 445
    assert result["precision_at_50"] >= 3 * result["base_rate"] and result["precision_at_100"] >= 3 * result["base_rate"]


def test_a_bootstrap_points_every_family_and_the_ensemble_at_2_1_0_and_publishes_the_catalogue(
        trained_registry, tmp_path, capsys):
    """What `kepler-train` leaves in an empty registry, from versions already trained (copied, so
    nothing is trained twice): the defaults requests without a version get."""
    from registry import ModelRegistry
    from registry.stores import LocalStore
    from training.train import DEFAULT_VERSIONS, train_all

    fresh = ModelRegistry(LocalStore(tmp_path / "registry"), tmp_path / "cache")
    for name in ("xgboost", "random_forest", "keras_cnn", "ensemble"):
        for version in DEFAULT_VERSIONS:
            fresh.publish(name, version, trained_registry.pull(name, version))
    assert train_all(fresh) == []  # everything there: only aliases and the catalogue left to do
    for name in ("xgboost", "random_forest", "keras_cnn", "ensemble"):
        assert fresh.aliases(name) == {"stable": "2.1.0", "latest": "2.1.0"}, name
        assert fresh.versions(name) == ["2.0.0", "2.1.0"]
    assert fresh.datasets.aliases("koi_catalogue") == {"stable": "1.0.0", "latest": "1.0.0"}
    assert "already registered, skipping" in capsys.readouterr().err
