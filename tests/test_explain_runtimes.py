"""Explanations of the XGBoost and Keras CNN runtimes add up to what they explain.

XGBoost's TreeSHAP is exact: contributions plus bias give the margin whose softmax is
predict_proba. The CNN's integrated gradients are a quadrature: their completeness error is small
at the default steps and shrinks as the steps double. Tiny models trained here run first; the
trained 2.1.0 models are checked on the test stars.
"""
from __future__ import annotations

import numpy as np
import pytest

from runtimes.schema import FEATURES, WITH_DIAGNOSTICS


def _quiet(_: str) -> None:
    pass


def _softmax(margin: np.ndarray) -> np.ndarray:
    exp = np.exp(margin - margin.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    from training.data import CURRENT, load_snapshot

    snapshot = load_snapshot(CURRENT)
    train, validation, test = snapshot.masks()
    return snapshot, train, validation, test


def _slice(data, features, n_train, n_validation):
    snapshot, train, validation, _ = data
    X, y = snapshot.matrix(features), snapshot.y
    return X[train][:n_train], y[train][:n_train], X[validation][:n_validation], y[validation][:n_validation]


def _with_missing(X: np.ndarray) -> np.ndarray:
    """X, a row with nothing measured, and rows with a third of their values knocked out."""
    holes = X[:8].copy()
    holes[np.random.default_rng(0).random(holes.shape) < 1 / 3] = np.nan
    return np.vstack([X, np.full((1, X.shape[1]), np.nan), holes])


def _check_tree_shap(runtime, X: np.ndarray):
    explanation = runtime.explain(X)
    n, f = X.shape
    assert explanation.method == "tree_shap" and explanation.output_space == "margin"
    assert explanation.values.shape == (n, 3, f) and explanation.values.dtype == np.float64
    assert explanation.base_value.shape == explanation.output.shape == (n, 3)
    assert explanation.features == runtime.features
    np.testing.assert_array_equal(explanation.inputs, X.astype(np.float64))
    assert np.abs(explanation.delta).max() <= 1e-5
    np.testing.assert_allclose(explanation.probabilities, runtime.predict_proba(X), atol=0)
    np.testing.assert_allclose(_softmax(explanation.output), explanation.probabilities, atol=1e-6)
    return explanation


def test_xgboost_contributions_add_up_to_the_margin(data):
    from runtimes.xgboost_runtime import XGBoostRuntime

    X, y, X_val, y_val = _slice(data, WITH_DIAGNOSTICS, 600, 150)
    runtime = XGBoostRuntime()
    runtime.fit(X, y, X_val, y_val, seed=0, fast=True, progress=_quiet, features=WITH_DIAGNOSTICS, rounds=15)
    rows = _with_missing(X_val[:40])
    assert np.isnan(runtime.preprocessor.transform(rows)).any()  # table NaNs reach the trees as missing
    _check_tree_shap(runtime, rows)


def test_integrated_gradients_converge_and_vanish_at_the_baseline(data):
    from runtimes.keras_cnn import KerasCNNRuntime

    X, y, X_val, y_val = _slice(data, FEATURES, 600, 150)
    runtime = KerasCNNRuntime()
    runtime.fit(X, y, X_val, y_val, seed=0, fast=True, progress=_quiet, features=FEATURES)
    rows = _with_missing(X_val[:16])
    errors = []
    for steps in (8, 16, 32):
        explanation = runtime.explain(rows, steps=steps)
        assert explanation.details["steps"] == steps
        errors.append(np.abs(explanation.delta).mean())
    assert errors[2] < errors[1] < errors[0], errors
    explanation = runtime.explain(rows)
    assert explanation.method == "integrated_gradients" and explanation.output_space == "probability"
    assert explanation.values.shape == (len(rows), 3, len(FEATURES))
    np.testing.assert_allclose(explanation.output, runtime.predict_proba(rows), atol=0)
    assert np.abs(explanation.delta).max() <= 0.005
    # The row with nothing measured is the baseline itself: nothing to attribute.
    baseline_row = len(rows) - 9
    assert np.isnan(rows[baseline_row]).all()
    np.testing.assert_array_equal(explanation.values[baseline_row], 0.0)
    np.testing.assert_allclose(explanation.base_value[baseline_row], explanation.output[baseline_row], atol=1e-7)


def _top_feature_moves_output(explanation, X: np.ndarray, to_baseline, output, threshold: float) -> np.ndarray:
    """For each row whose largest attribution to its predicted class exceeds `threshold`: whether
    setting that feature to its baseline value moves the class's output against the attribution."""
    rows = np.arange(len(X))
    predicted = explanation.probabilities.argmax(axis=1)
    attributions = explanation.values[rows, predicted]
    top = np.abs(attributions).argmax(axis=1)
    top_value = attributions[rows, top]
    chosen = np.abs(top_value) > threshold
    ablated = X.copy()
    ablated[rows, top] = to_baseline(top)
    moved = explanation.output[rows, predicted] - output(ablated)[rows, predicted]
    return (np.sign(moved) == np.sign(top_value))[chosen]


@pytest.mark.trained
def test_trained_xgboost_explanations(trained_registry, data):
    from runtimes.base import load

    snapshot, train, _, test = data
    runtime = load("xgboost", trained_registry.pull("xgboost", "2.1.0"))
    X = snapshot.matrix(runtime.features)
    rows = X[test][::4]
    explanation = _check_tree_shap(runtime, rows)
    medians = np.nanmedian(X[train], axis=0)

    def margin(Z):
        return runtime.model.inplace_predict(runtime.preprocessor.transform(Z), predict_type="margin")

    # TreeSHAP's reference is the expected margin, not the median row: most rows, not every one.
    agrees = _top_feature_moves_output(explanation, rows, lambda top: medians[top], margin, 0.5)
    assert len(agrees) >= 50 and agrees.mean() >= 0.95, (len(agrees), agrees.mean())


@pytest.mark.trained
def test_trained_cnn_explanations(trained_registry, data):
    from runtimes.base import load

    snapshot, _, _, test = data
    runtime = load("keras_cnn", trained_registry.pull("keras_cnn", "2.1.0"))
    rows = snapshot.matrix(runtime.features)[test][::40]
    explanation = runtime.explain(rows)
    doubled = runtime.explain(rows, steps=2 * explanation.details["steps"])
    error, finer = np.abs(explanation.delta), np.abs(doubled.delta)
    assert error.max() <= 0.005 and finer.mean() < error.mean(), (error.max(), error.mean(), finer.mean())
    # Integrated gradients follow one path along which every feature moves at once; removing one
    # feature alone can disagree where features interact (a parameter and its error columns).
    agrees = _top_feature_moves_output(explanation, rows, lambda top: np.nan, runtime.predict_proba, 0.05)
    assert len(agrees) >= 30 and agrees.mean() >= 0.8, (len(agrees), agrees.mean())
