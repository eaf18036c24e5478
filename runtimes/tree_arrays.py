"""A forest's trees packed into flat NumPy arrays and walked all at once.

scikit-learn's `predict_proba` visits its trees one by one from Python (about 70 µs a tree, 28 ms
for 400 trees and a single row); walking every (row, tree) pair a level at a time with array
indexing answers one row in under a millisecond and 32 rows in about 3 ms. The comparisons and
the summation order are scikit-learn's own (float32 features against float64 thresholds, trees
added in order, then divided by their count), so probabilities are bit-identical.
"""
from __future__ import annotations

import numpy as np


class PackedForest:
    def __init__(self, trees: list) -> None:
        """`trees`: scikit-learn `Tree` objects (a fitted forest's `estimator.tree_`)."""
        sizes = [tree.node_count for tree in trees]
        self.roots = np.cumsum([0, *sizes[:-1]])
        children, features, thresholds, missing_left, values = [], [], [], [], []
        for offset, tree in zip(self.roots, trees):
            # The tree's documented node arrays (tests/test_upstream_internals.py checks their shapes).
            index = np.arange(tree.node_count) + offset
            leaf = tree.children_left < 0
            # A leaf points at itself, so rows that reached one stay put while deeper trees finish.
            children.append(np.stack([np.where(leaf, index, tree.children_left + offset),
                                      np.where(leaf, index, tree.children_right + offset)], axis=1))
            features.append(np.where(leaf, 0, tree.feature))
            thresholds.append(np.where(leaf, np.inf, tree.threshold))
            missing_left.append(tree.missing_go_to_left.astype(bool))
            # scikit-learn (>= 1.4) stores each node's class fractions and answers them as they are.
            values.append(np.asarray(tree.value[:, 0, :], dtype=np.float64))
        self.children = np.concatenate(children).ravel()  # left child at 2i, right child at 2i + 1
        self.feature = np.concatenate(features)
        self.threshold = np.concatenate(thresholds)
        self.missing_left = np.concatenate(missing_left)
        self.is_leaf = self.children[0::2] == np.arange(len(self.feature))
        self.value = np.concatenate(values)
        self.depth = max(tree.max_depth for tree in trees)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)  # trees compare float32 features, as scikit-learn does
        rows, width = X.shape
        trees = len(self.roots)
        features = X.astype(np.float64).ravel()
        reached = np.tile(self.roots, rows)  # [row * trees + tree]: the node each pair has reached
        walking = np.arange(rows * trees)  # the pairs not at a leaf yet
        node, row_start = reached.copy(), np.repeat(np.arange(rows) * width, trees)
        has_missing = bool(np.isnan(features).any())
        for level in range(self.depth):
            x = features[row_start + self.feature[node]]
            go_right = ~(x <= self.threshold[node])
            if has_missing:
                go_right &= ~(np.isnan(x) & self.missing_left[node])
            node = self.children[2 * node + go_right]
            if level % 4 == 3:  # drop finished pairs now and then: most leaves are far above max depth
                reached[walking] = node
                deeper = ~self.is_leaf[node]
                walking, node, row_start = walking[deeper], node[deeper], row_start[deeper]
                if not len(walking):
                    break
        reached[walking] = node
        leaf_values = self.value[reached].reshape(rows, trees, self.value.shape[1])
        # A running sum adds the trees in order, as scikit-learn accumulates them (np.sum pairs them).
        return np.cumsum(leaf_values, axis=1)[:, -1] / trees
