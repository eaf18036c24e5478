"""The Random Forest's explanations (runtimes/tree_shap.py): exact path-dependent TreeSHAP, checked
against shap's TreeExplainer (the reference implementation, a test dependency only), against a
brute-force Shapley enumeration, and against the forest's own probabilities."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from runtimes.random_forest import RandomForestRuntime
from runtimes.schema import FEATURES, N_CLASSES
from runtimes.tree_arrays import PackedForest
from runtimes.tree_shap import TreeShap

TOLERANCE = 1e-6


def _labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes from bands of one feature (split again and again along a path) and an
    interaction, with 10% of the values missing."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    band = np.digitize(X[:, 0], [-1.0, -0.3, 0.3, 1.0]) % 3
    y = np.where(X[:, 1] * X[:, 2] > 0.8, 2, band)
    y = np.where(rng.random(n) < 0.1, rng.integers(0, N_CLASSES, n), y)
    X[rng.random(X.shape) < 0.1] = np.nan
    return X, y


def _repeats_a_feature(tree) -> bool:
    """Whether some root-to-leaf path splits on one feature more than once."""
    stack = [(0, frozenset())]
    while stack:
        node, seen = stack.pop()
        if tree.children_left[node] >= 0:
            if tree.feature[node] in seen:
                return True
            seen = seen | {tree.feature[node]}
            stack += [(tree.children_left[node], seen), (tree.children_right[node], seen)]
    return False


@pytest.fixture(scope="module")
def small_forest() -> tuple[RandomForestRuntime, np.ndarray]:
    X, y = _labelled(400, seed=1)
    runtime = RandomForestRuntime()
    runtime.fit(X[:300], y[:300], X[300:], y[300:], seed=0, fast=True, progress=lambda message: None)
    return runtime, _labelled(40, seed=2)[0]


def test_explain_equals_shap_tree_explainer_and_adds_up_to_the_probabilities(small_forest):
    import shap

    runtime, rows = small_forest
    assert any(_repeats_a_feature(estimator.tree_) for estimator in runtime.model.estimators_)
    explanation = runtime.explain(rows)
    explainer = shap.TreeExplainer(runtime.model)  # tree_path_dependent: the trees' covers, no data
    reference = explainer.shap_values(runtime.preprocessor.transform(rows))  # [rows, features, classes]
    np.testing.assert_allclose(explanation.values, reference.transpose(0, 2, 1), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(explanation.base_value, np.tile(explainer.expected_value, (len(rows), 1)),
                               rtol=0, atol=TOLERANCE)
    probabilities = runtime.predict_proba(rows)
    np.testing.assert_allclose(explanation.base_value + explanation.values.sum(axis=2), probabilities,
                               rtol=0, atol=TOLERANCE)
    assert np.abs(explanation.delta).max() < TOLERANCE
    assert (explanation.method, explanation.output_space, explanation.features) == (
        "tree_shap", "probability", runtime.features)
    assert explanation.values.shape == (len(rows), N_CLASSES, len(FEATURES))
    assert explanation.values.dtype == np.float64
    np.testing.assert_array_equal(explanation.output, probabilities)
    np.testing.assert_array_equal(explanation.inputs, rows.astype(np.float64))  # NaN stays NaN
    assert explanation.details["trees"] == len(runtime.model.estimators_)
    assert runtime.explain(rows[:0]).values.shape == (0, N_CLASSES, len(FEATURES))


def test_missing_values_take_each_split_s_missing_direction_as_the_packed_forest_does():
    from sklearn.ensemble import RandomForestClassifier

    X, y = _labelled(300, seed=3)  # not imputed: the trees learn where missing values go
    trees = [estimator.tree_ for estimator in RandomForestClassifier(20, random_state=0).fit(X, y).estimators_]
    rows = _labelled(30, seed=4)[0]
    values, expected = TreeShap(trees).shap_values(rows)
    np.testing.assert_allclose(expected + values.sum(axis=2), PackedForest(trees).predict_proba(rows),
                               rtol=0, atol=1e-12)


def _tree(children_left, children_right, feature, threshold, missing_left, cover, value):
    value = np.asarray(value, dtype=np.float64)[:, None, :]
    return SimpleNamespace(n_features=3, node_count=len(feature), children_left=np.array(children_left),
                           children_right=np.array(children_right), feature=np.array(feature),
                           threshold=np.array(threshold, dtype=np.float64), missing_go_to_left=np.array(missing_left),
                           weighted_n_node_samples=np.array(cover, dtype=np.float64), value=value,
                           max_depth=3)


def _brute_force(trees, x) -> np.ndarray:
    """Shapley values [classes, features] of S -> E[forest(x) | x_S] under the trees' covers, by
    enumerating every subset."""
    def expectation(tree, node, S):
        if tree.children_left[node] < 0:
            return tree.value[node, 0]
        j, left, right = tree.feature[node], tree.children_left[node], tree.children_right[node]
        if j in S:
            goes_left = tree.missing_go_to_left[node] if np.isnan(x[j]) else x[j] <= tree.threshold[node]
            return expectation(tree, left if goes_left else right, S)
        w = tree.weighted_n_node_samples
        return (w[left] * expectation(tree, left, S) + w[right] * expectation(tree, right, S)) / w[node]

    def game(S):
        return np.mean([expectation(tree, 0, S) for tree in trees], axis=0)

    n = 3
    phi = np.zeros((trees[0].value.shape[2], n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for S in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                phi[:, i] += weight * (game(set(S) | {i}) - game(set(S)))
    return phi


def test_exact_on_hand_built_trees_with_a_repeated_feature_an_empty_leaf_and_a_single_leaf():
    # Feature 0 is split twice on one path; node 4 is a leaf no training sample reached.
    deep = _tree(children_left=[1, 3, 5, 7, -1, -1, -1, -1, -1], children_right=[2, 4, 6, 8, -1, -1, -1, -1, -1],
                 feature=[0, 1, 0, 2, -2, -2, -2, -2, -2], threshold=[0.5, 0.0, 2.0, 1.0, -2, -2, -2, -2, -2],
                 missing_left=[1, 0, 1, 0, 0, 0, 0, 0, 0], cover=[10, 6, 4, 6, 0, 1, 3, 2, 4],
                 value=[[.5, .5], [.5, .5], [.5, .5], [.5, .5], [0, 1], [.9, .1], [.2, .8], [1, 0], [.3, .7]])
    stump = _tree([-1], [-1], [-2], [-2.0], [0], [5], [[.6, .4]])
    trees = [deep, stump]
    rows = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 2.0], [1.0, 0.0, 0.0], [3.0, np.nan, 0.5],
                     [np.nan, np.nan, 1.0], [0.25, np.nan, np.nan]], dtype=np.float32)
    explainer = TreeShap(trees)
    assert explainer.zero_cover
    values, expected = explainer.shap_values(rows)
    assert np.isfinite(values).all()
    for x, phi in zip(rows, values):
        np.testing.assert_allclose(phi, _brute_force(trees, x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(expected + values.sum(axis=2), PackedForest(trees).predict_proba(rows),
                               rtol=0, atol=1e-12)


@pytest.mark.trained
def test_the_2_1_0_forest_explains_test_stars_as_shap_does_and_its_top_attribution_points_the_right_way(
        trained_registry):
    import shap

    from runtimes.base import load
    from training.data import CURRENT, load_snapshot

    runtime = load("random_forest", trained_registry.pull("random_forest", "2.1.0"))
    data = load_snapshot(CURRENT)
    rows = data.matrix(runtime.features)[data.masks()[2]][:5]  # test stars
    explanation = runtime.explain(rows)
    explainer = shap.TreeExplainer(runtime.model)
    reference = explainer.shap_values(runtime.preprocessor.transform(rows))  # float32, as the trees compare
    np.testing.assert_allclose(explanation.values, reference.transpose(0, 2, 1), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(explanation.base_value[0], explainer.expected_value, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(explanation.base_value + explanation.values.sum(axis=2), runtime.predict_proba(rows),
                               rtol=0, atol=TOLERANCE)
    # Setting the most attributed feature to its baseline (the training median the forest imputes)
    # moves the predicted class's probability against the attribution.
    for row, values, probabilities in zip(rows, explanation.values, explanation.probabilities):
        label = probabilities.argmax()
        top = np.abs(values[label]).argmax()
        assert not np.isnan(row[top])  # a missing value already is the median
        moved = row.copy()
        moved[top] = runtime.preprocessor.impute[top]
        change = runtime.predict_proba(moved[None])[0, label] - probabilities[label]
        assert np.sign(change) == -np.sign(values[label, top]) != 0, (runtime.features[top], values[label, top], change)
