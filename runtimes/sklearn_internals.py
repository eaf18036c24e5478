"""The scikit-learn internals the Random Forest runtime relies on, kept in one place.

A fitted forest is stored as its trees' own node and value arrays (random_forest.py), because
pickle, scikit-learn's only way to save a fitted estimator, can run code when loaded. Taking
those arrays out of a fitted tree and building a working estimator back from them goes through
the pickle protocol of `Tree`, a class of the private `sklearn.tree._tree` module, and sets
fitted attributes by hand: no public API does either. tests/test_upstream_internals.py fails
when any of this changes in a scikit-learn release.

Reading a fitted tree's node attributes (`tree_.children_left`, `feature`, `threshold`,
`missing_go_to_left`, `value`, `max_depth`) is documented use of `DecisionTreeClassifier.tree_`
and stays where it is used (tree_arrays.py).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TreeState(NamedTuple):
    nodes: np.ndarray  # one record per node, in the private `Node` struct's layout
    values: np.ndarray  # [nodes, 1, classes] float64
    max_depth: int


def tree_state(estimator) -> TreeState:
    """The arrays that rebuild a fitted `DecisionTreeClassifier` (see `fitted_tree`)."""
    # The public node attributes give each field as its own array, but `Tree` can only be
    # rebuilt from whole node records in its private layout, which only the pickle protocol's
    # `Tree.__getstate__` returns.
    state = estimator.tree_.__getstate__()
    return TreeState(state["nodes"], state["values"], int(state["max_depth"]))


def fitted_tree(state: TreeState, n_features: int, classes: np.ndarray):
    """A fitted `DecisionTreeClassifier` whose tree is `state`, predicting `classes`."""
    # No public API builds a fitted tree from arrays: construct the private `Tree`, fill it
    # through its pickle protocol (`__setstate__` checks the node layout and value shape), then
    # set the fitted attributes that `predict_proba` reads.
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    classes = np.asarray(classes)
    tree = Tree(n_features, np.array([len(classes)], dtype=np.intp), 1)
    tree.__setstate__({"max_depth": int(state.max_depth), "node_count": len(state.nodes),
                       "nodes": state.nodes, "values": state.values})
    estimator = DecisionTreeClassifier()
    estimator.tree_, estimator.classes_, estimator.n_classes_ = tree, classes, len(classes)
    estimator.n_outputs_, estimator.n_features_in_, estimator.max_features_ = 1, n_features, n_features
    return estimator


def fitted_forest(trees: list, n_jobs: int = 1):
    """A fitted `RandomForestClassifier` made of `fitted_tree` estimators."""
    # No public API assembles a fitted forest from fitted trees: set on an unfitted one the
    # fitted attributes that `predict_proba` reads.
    from sklearn.ensemble import RandomForestClassifier

    first = trees[0]
    forest = RandomForestClassifier(n_estimators=len(trees), n_jobs=n_jobs)
    forest.estimators_, forest.classes_, forest.n_classes_ = list(trees), first.classes_, first.n_classes_
    forest.n_outputs_, forest.n_features_in_ = 1, first.n_features_in_
    return forest
