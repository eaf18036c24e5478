"""Exact path-dependent TreeSHAP for a forest of scikit-learn trees, vectorised in NumPy.

Path-dependent TreeSHAP (Lundberg et al. 2020, shap's TreeExplainer without background data)
explains E[f(x) | x_S], each tree's expectation when the features outside S follow its training
covers. For one leaf that expectation is the leaf value times a product over the distinct features
j on its root-to-leaf path: o_j (1 if x meets every condition the path puts on j, else 0) when j
is in S, z_j (the product of the cover ratios of the path's splits on j) when it is not. The
Shapley values of such a product have a closed form:

    phi_i = v (o_i - z_i) sum_{S in P-{i}} |S|! (d-|S|-1)!/d! prod_{j in S} o_j prod_{j not in S} z_j
          = v (o_i - z_i) integral_0^1 prod_{j != i} (z_j + (o_j - z_j) t) dt,

a polynomial of degree d-1 that Gauss-Legendre quadrature with ceil(d/2) points integrates exactly.
A row changes only o, and each o_j is one interval test (the conditions a path puts on a feature
intersect to lo < x_j <= hi), so all else is laid out once: leaves are grouped into blocks of equal
d, their slots (leaf, distinct feature) stored [d, leaves] so every step is a whole-array operation
on arrays that stay in cache. Fancy indexing is avoided (np.take is several times faster), and each
block's slots are also kept in feature order, so contributions add up per feature by segments.
"""
from __future__ import annotations

import numpy as np

BLOCK_ELEMENTS = 1 << 16  # slots x quadrature points in one block (per row): its arrays fit in cache
CHUNK_ELEMENTS = 1 << 16  # rows x block elements worked on at once


class TreeShap:
    def __init__(self, trees: list) -> None:
        """`trees`: scikit-learn `Tree` objects (a fitted forest's `estimator.tree_`) predicting the
        same classes, whose `value` holds each node's class fractions (scikit-learn >= 1.4)."""
        self.n_features = width = int(trees[0].n_features)
        sizes = [tree.node_count for tree in trees]
        offsets = np.cumsum([0, *sizes[:-1]])
        left = np.concatenate([np.where(t.children_left < 0, -1, t.children_left + o) for t, o in zip(trees, offsets)])
        right = np.concatenate([np.where(t.children_right < 0, -1, t.children_right + o)
                                for t, o in zip(trees, offsets)])
        feature = np.concatenate([tree.feature for tree in trees])
        threshold = np.concatenate([tree.threshold for tree in trees])
        missing_left = np.concatenate([tree.missing_go_to_left for tree in trees]).astype(bool)
        cover = np.concatenate([tree.weighted_n_node_samples for tree in trees]).astype(np.float64)
        value = np.concatenate([np.asarray(tree.value[:, 0, :], dtype=np.float64) for tree in trees]) / len(trees)

        leaves = np.flatnonzero(left < 0)
        root_cover = np.repeat(cover[offsets], sizes)[leaves]
        # The forest's expected output: every leaf's value weighted by its share of its tree's cover.
        self.expected_value = (value[leaves] * (cover[leaves] / root_cover)[:, None]).sum(axis=0)

        # Every leaf's steps (the nodes on its path below the root), found climbing from all leaves at once.
        internal = np.flatnonzero(left >= 0)
        parent = np.full(len(left), -1, dtype=np.int32)
        parent[left[internal]] = parent[right[internal]] = internal
        went_left = np.zeros(len(left), dtype=bool)
        went_left[left[internal]] = True
        step_leaf, step_child = [], []
        leaf, node = np.arange(len(leaves), dtype=np.int32), leaves.astype(np.int32)
        while len(node):
            up = parent[node] >= 0
            leaf, node = leaf[up], node[up]
            step_leaf.append(leaf)
            step_child.append(node)
            node = parent[node]
        child = np.concatenate(step_child)
        key = np.concatenate(step_leaf).astype(np.int64) * width + feature[parent[child]]
        del step_leaf, step_child

        # A leaf's steps merged by feature into slots: cover ratios multiply, conditions intersect.
        order = np.argsort(key)
        key, child = key[order], child[order]
        del order
        first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        slot_leaf, slot_feature = np.divmod(key[first], width)
        del key
        node = parent[child]
        z = np.multiply.reduceat(cover[child] / cover[node], first)
        goes_left, split = went_left[child], threshold[node]
        hi = np.minimum.reduceat(np.where(goes_left, split, np.inf), first)
        lo = np.maximum.reduceat(np.where(goes_left, -np.inf, split), first)
        nan_ok = np.logical_and.reduceat(goes_left == missing_left[node], first)
        del child, node, goes_left, split

        # Blocks of leaves with the same number d of distinct features, their slots laid out [d, leaves].
        d = np.bincount(slot_leaf, minlength=len(leaves))
        first_slot = np.cumsum(d) - d
        by_d = np.argsort(d, kind="stable")
        bounds = np.searchsorted(d[by_d], np.arange(d.max(initial=0) + 2))
        self.blocks, layout, start = [], [], 0
        for count in range(1, len(bounds) - 1):
            group = by_d[bounds[count]:bounds[count + 1]]
            if not len(group):
                continue
            points, weights = np.polynomial.legendre.leggauss((count + 1) // 2)
            per_block = max(1, BLOCK_ELEMENTS // (count * len(points)))
            for piece in np.array_split(group, -(-len(group) // per_block)):
                layout.append((first_slot[piece] + np.arange(count)[:, None]).ravel())
                self.blocks.append(_Block(start, count, len(piece), (points + 1) / 2, weights / 2,
                                          np.ascontiguousarray(value[leaves[piece]].T)))
                start += count * len(piece)
        layout = np.concatenate(layout) if layout else np.zeros(0, dtype=np.int64)
        self.feature = slot_feature[layout].astype(np.min_scalar_type(width))
        self.z = z[layout]
        self.zero_cover = bool((self.z <= 0).any())  # a split that sends no training weight one way
        # x (float32) <= t (float64) exactly when x <= the largest float32 not above t.
        self.lo, self.hi = _float32_floor(lo[layout]), _float32_floor(hi[layout])
        self.nan_ok = nan_ok[layout]

        # Each block's slots in feature order (so contributions add up per feature in segments), and their leaves.
        block_starts = np.array([block.start for block in self.blocks], dtype=np.int64)
        block_sizes = np.array([block.size for block in self.blocks], dtype=np.int64)
        block_key = np.repeat(np.arange(len(self.blocks)), block_sizes) * width + self.feature
        order = np.argsort(block_key, kind="stable")
        block_key = block_key[order]
        order -= np.repeat(block_starts, block_sizes)
        index = np.min_scalar_type(block_sizes.max(initial=1) - 1)
        self.by_feature = order.astype(index)
        self.leaf = (order % np.repeat([block.leaves for block in self.blocks], block_sizes)).astype(index)
        del order
        segments = np.flatnonzero(np.concatenate([[True], block_key[1:] != block_key[:-1]]))
        ends = np.searchsorted(segments, block_starts + block_sizes)
        for block, begin, end in zip(self.blocks, np.searchsorted(segments, block_starts), ends):
            block.segments = segments[begin:end] - block.start
            block.features = block_key[segments[begin:end]] % width

    def shap_values(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X: features [n, n_features] as the trees compare them (float32; NaN takes each split's
        missing-value direction). Returns (values [n, classes, n_features], expected [classes])."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected shape [n, {self.n_features}], got {list(X.shape)}")
        values = np.zeros((len(X), len(self.expected_value), self.n_features))
        missing = bool(np.isnan(X).any())
        for block in self.blocks:
            rows = max(1, CHUNK_ELEMENTS // block.elements)
            for first in range(0, len(X), rows):
                chunk = slice(first, first + rows)
                values[chunk, :, block.features] += self._block(block, X[chunk], missing)
        return values, self.expected_value.copy()

    def _block(self, block: "_Block", X: np.ndarray, missing: bool) -> np.ndarray:
        """One block's contributions to rows X: [rows, classes, block.features]."""
        rows, d, leaves = len(X), block.d, block.leaves
        slots = slice(block.start, block.start + block.size)
        x = np.take(X, self.feature[slots], axis=1)
        o = (x > self.lo[slots]) & (x <= self.hi[slots])
        if missing:
            o = np.where(np.isnan(x), self.nan_ok[slots], o)
        a = np.subtract(o, self.z[slots])  # o_j - z_j, [rows, d * leaves]
        f = np.multiply(a.reshape(rows, d, 1, leaves), block.points[:, None])
        f += self.z[slots].reshape(d, 1, leaves)  # f[r, j, g, leaf] = z_j + (o_j - z_j) t_g
        product = f.prod(axis=1)
        product *= block.weights[:, None]
        if self.zero_cover:  # f = 0 only where z_j = o_j = 0: then a_j = 0 and the product is 0 too
            np.divide(product[:, None], f, out=f, where=f != 0)
        else:
            np.divide(product[:, None], f, out=f)  # the product over the other features, weighted
        contribution = f.sum(axis=2).reshape(rows, -1)
        contribution *= a
        contribution = np.take(contribution, self.by_feature[slots], axis=1)[:, None, :]
        contribution = contribution * np.take(block.value, self.leaf[slots], axis=1)  # [rows, classes, slots]
        return np.add.reduceat(contribution, block.segments, axis=2)


class _Block:
    """Leaves with `d` distinct features each; their slots are [start, start + size), laid out [d, leaves]."""

    def __init__(self, start: int, d: int, leaves: int, points: np.ndarray, weights: np.ndarray,
                 value: np.ndarray) -> None:
        self.start, self.d, self.leaves, self.size = start, d, leaves, d * leaves
        self.points, self.weights = points, weights  # Gauss-Legendre on [0, 1], ceil(d / 2) points
        self.value = value  # [classes, leaves]: the leaf values divided by the number of trees
        self.elements = self.size * len(points)
        self.segments = self.features = np.zeros(0, dtype=np.int64)  # by feature: where each starts, which


def _float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= each t: for float32 x, x <= t exactly when x <= this."""
    rounded = t.astype(np.float32)
    return np.where(rounded > t, np.nextafter(rounded, np.float32(-np.inf)), rounded)
