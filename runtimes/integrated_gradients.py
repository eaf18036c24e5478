"""Integrated gradients (Sundararajan, Taly and Yan, 2017) for a Keras model of preprocessed rows.

Attribution of input column i to class c: (x_i - b_i) times the integral over a in [0, 1] of
dF_c/dx_i at b + a (x - b), F the model's probabilities. A row's attributions add up to
F(x) - F(b) up to the quadrature's error. The model's ReLUs make the integrand jump wherever a
unit switches along the path, so no rule converges faster than 1/steps (the error about halves as
the steps double) and the choice of rule matters little; Gauss-Legendre nodes are used. The
preprocessing is elementwise, so column i of the model's input is raw feature i: attributions in
the model's input space are the raw features'.
"""
from __future__ import annotations

import numpy as np

MAX_POINTS = 4096  # interpolation points per traced call: bounds the activations the backward passes hold


def quadrature(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def attribution_function(model, n_features: int, n_classes: int):
    """One traced function for every batch: (rows [r, f], baseline [f], nodes [s], weights [s]) ->
    attributions [r, classes, f] in float64. The outputs are a softmax, whose gradients sum to zero
    over the classes: the last class's gradient is minus the others', one backward pass fewer."""
    import tensorflow as tf

    def attributions(rows, baseline, nodes, weights):
        steps, difference = tf.shape(nodes)[0], rows - baseline
        points = baseline + nodes[None, :, None] * difference[:, None, :]  # [r, s, f]
        points = tf.reshape(points, (-1, n_features))
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(points)
            probabilities = model(points, training=False)
            totals = [tf.reduce_sum(probabilities[:, c]) for c in range(n_classes - 1)]
        # Rows do not interact in inference, so the gradient of a class's sum is each point's own.
        gradients = [tape.gradient(total, points) for total in totals]
        gradients = tf.stack(gradients + [-tf.add_n(gradients)], axis=1)  # [r * s, classes, f]
        gradients = tf.reshape(tf.cast(gradients, tf.float64), (tf.shape(rows)[0], steps, n_classes, n_features))
        integral = tf.einsum("s,rscf->rcf", tf.cast(weights, tf.float64), gradients)
        return integral * tf.cast(difference, tf.float64)[:, None, :]

    return tf.function(attributions).get_concrete_function(
        tf.TensorSpec([None, n_features], tf.float32), tf.TensorSpec([n_features], tf.float32),
        tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32))


def integrated_gradients(function, rows: np.ndarray, baseline: np.ndarray, steps: int) -> np.ndarray:
    """Attributions [n, classes, f] of preprocessed `rows` against `baseline` [f], in chunks of
    at most MAX_POINTS interpolation points."""
    import tensorflow as tf

    nodes, weights = (tf.constant(a, tf.float32) for a in quadrature(steps))
    baseline = tf.constant(baseline, tf.float32)
    chunk = max(1, MAX_POINTS // steps)
    parts = [function(tf.constant(rows[i:i + chunk], tf.float32), baseline, nodes, weights).numpy()
             for i in range(0, len(rows), chunk)]
    return np.concatenate(parts)
