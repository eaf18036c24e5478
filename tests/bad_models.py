"""Real, signed, registered model versions that misbehave, for the experiment tests: each is an
artifact the runtimes load like any other, with nothing in the serving code that knows of it."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from runtimes.preprocessing import Preprocessor
from runtimes.random_forest import RandomForestRuntime
from runtimes.schema import LABELS
from runtimes.sklearn_internals import TreeState, fitted_tree, tree_state
from runtimes.xgboost_runtime import XGBoostRuntime
from training.data import load_snapshot

from .helpers import publish_copy

RAISING, SKEWED, GOOD_COPY = "8.0.0", "8.1.0", "8.2.0"
SLOW_FOREST = "8.0.0"


def _publish(registry, name: str, base_version: str, version: str, runtime) -> None:
    """Publish `runtime` under `version`, with the base version's metadata (renumbered)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        runtime.save(directory)
        metadata = json.loads((registry.pull(name, base_version) / "metadata.json").read_text())
        metadata["version"] = version
        (directory / "metadata.json").write_text(json.dumps(metadata))
        registry.publish(name, version, directory)


def _training_rows(n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    snapshot = load_snapshot()
    train, _, _ = snapshot.masks()
    return snapshot.X[train][:n], snapshot.y[train][:n]


def raising_xgboost():
    """Trained on 10 features: every predict on the 36-feature schema raises a shape error."""
    import xgboost as xgb

    X, y = _training_rows(500)
    booster = xgb.train({"objective": "multi:softprob", "num_class": len(LABELS), "nthread": 1},
                        xgb.DMatrix(X[:, :10], label=y), 5)
    return XGBoostRuntime(booster, Preprocessor())


def skewed_xgboost():
    """Trained on labels skewed toward CANDIDATE: nine in ten relabelled, so it predicts little else."""
    import xgboost as xgb

    X, y = _training_rows()
    rng = np.random.default_rng(0)
    skewed = np.where(rng.random(len(y)) < 0.9, LABELS.index("CANDIDATE"), y)
    booster = xgb.train({"objective": "multi:softprob", "num_class": len(LABELS), "nthread": 2, "max_depth": 4},
                        xgb.DMatrix(X, label=skewed), 20)
    return XGBoostRuntime(booster, Preprocessor())


def slow_forest():
    """A real forest of 100 trees plus one tree that is a chain 5,000 splits deep, which every row
    walks to its end (each split sends every finite value left, to the next split): the runtime
    walks trees a level at a time, so each call takes tens of milliseconds. The chain's leaf
    holds the training labels' own distribution, so the answers barely move."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = _training_rows()
    preprocessor = Preprocessor.fit(X, log_skewed=False, impute=True, standardize=False)
    forest = RandomForestClassifier(n_estimators=100, max_depth=6, n_jobs=2, random_state=0)
    forest.fit(preprocessor.transform(X), y)
    depth = 5000
    nodes = np.zeros(depth + 1, dtype=tree_state(forest.estimators_[0]).nodes.dtype)
    nodes["left_child"][:depth] = np.arange(1, depth + 1)
    nodes["right_child"][:depth] = depth
    nodes["left_child"][depth] = nodes["right_child"][depth] = -1  # the one leaf
    nodes["feature"][:depth], nodes["feature"][depth] = 0, -2
    nodes["threshold"][:depth], nodes["threshold"][depth] = np.finfo(np.float64).max, -2.0
    nodes["missing_go_to_left"][:depth] = 1
    nodes["n_node_samples"] = nodes["weighted_n_node_samples"] = len(y)
    values = np.tile(np.bincount(y, minlength=len(LABELS)) / len(y), (depth + 1, 1))[:, None, :]
    forest.estimators_.append(fitted_tree(TreeState(nodes, values, depth), X.shape[1], forest.classes_))
    forest.n_estimators = len(forest.estimators_)
    return RandomForestRuntime(forest, preprocessor)


def publish_bad_versions(registry) -> None:
    """Idempotent: each version is published once per registry."""
    wanted = [("xgboost", RAISING, raising_xgboost), ("xgboost", SKEWED, skewed_xgboost),
              ("random_forest", SLOW_FOREST, slow_forest)]
    for name, version, build in wanted:
        if not registry.exists(name, version):
            _publish(registry, name, "1.0.0", version, build())
    if not registry.exists("xgboost", GOOD_COPY):  # a healthy candidate, distinct from every other
        with tempfile.TemporaryDirectory() as tmp:
            publish_copy(registry, "xgboost", "1.1.0", GOOD_COPY, Path(tmp))
