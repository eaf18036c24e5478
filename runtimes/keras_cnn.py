"""A Keras 1D CNN over the KOI parameters, saved in Keras 3's native .keras format.

Layout: each of the 16 catalogue parameters is one position of a sequence with three channels,
[value, upper error, lower error] (zero where a parameter has no error columns), so the
convolutions share weights across parameters and learn how a value relates to its uncertainty;
a dense head then sees the whole grid. The model's input is the preprocessed [None, 36] row:
the regrouping into the [16, 3] grid happens inside the model (ParameterGrid), so serving can
compile one function with a fixed [None, 36] signature.

Versions 2.x add 33 diagnostics that have no error columns. They do not join the grid: padding
them with zero "errors" would make the shared filters read a missing uncertainty as a perfectly
measured value, and positions in the grid share weights because they share a layout, which the
diagnostics (magnitudes, centroid offsets, event statistics) do not. They enter a dense branch
instead, after the same signed log, imputation and standardization, and meet the convolutional
features in the dense head. Input [None, 69]; the first 36 columns go to the grid.

Explanations are integrated gradients in probability space (integrated_gradients.py) against the
training medians: the preprocessed image of a row whose every value is missing.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from .base import FrameworkRuntime, Progress
from .explanation import Explanation
from .preprocessing import Preprocessor
from .schema import FEATURE_INDEX, FEATURES, N_CLASSES, N_FEATURES, PARAMETERS

EPOCHS = 40
FAST_EPOCHS = 3
IG_STEPS = 512  # completeness error <= 0.005 on the test stars; it halves as the steps double
BASELINE = "training medians after preprocessing (a row with every value missing)"


def grid_indices(n_inputs: int = N_FEATURES) -> list[int]:
    """For each (parameter, channel) cell, the feature column it reads (or the zero pad, which
    is appended after the last input column)."""
    pad = n_inputs
    indices = []
    for parameter, has_errors in PARAMETERS:
        indices.append(FEATURE_INDEX[parameter])
        if has_errors:
            indices += [FEATURE_INDEX[f"{parameter}_err1"], FEATURE_INDEX[f"{parameter}_err2"]]
        else:
            indices += [pad, pad]
    return indices


def _configure_threads(threads: int | None) -> None:
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TF already initialized in this process: it keeps its first setting


@functools.cache
def _layers():
    import keras

    @keras.saving.register_keras_serializable(package="kepler")
    class ParameterGrid(keras.layers.Layer):
        """[n, 36] -> [n, 16, 3]: regroup each parameter with its error columns."""

        def __init__(self, indices, **kwargs):
            super().__init__(**kwargs)
            self.indices = list(indices)

        def call(self, x):
            padded = keras.ops.concatenate([x, keras.ops.zeros_like(x[:, :1])], axis=1)
            return keras.ops.reshape(keras.ops.take(padded, self.indices, axis=1), (-1, len(PARAMETERS), 3))

        def get_config(self):
            return {**super().get_config(), "indices": self.indices}

    @keras.saving.register_keras_serializable(package="kepler")
    class Columns(keras.layers.Layer):
        """[n, k] -> [n, stop - start]: the diagnostics' columns (Lambda layers are refused on load)."""

        def __init__(self, start, stop, **kwargs):
            super().__init__(**kwargs)
            self.start, self.stop = int(start), int(stop)

        def call(self, x):
            return x[:, self.start:self.stop]

        def get_config(self):
            return {**super().get_config(), "start": self.start, "stop": self.stop}

    return ParameterGrid, Columns


def build_model(seed: int, n_inputs: int = N_FEATURES):
    import keras

    keras.utils.set_random_seed(seed)
    grid, columns = _layers()
    inputs = keras.Input(shape=(n_inputs,), name="features")
    x = grid(grid_indices(n_inputs), name="parameter_grid")(inputs)
    x = keras.layers.Conv1D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv1D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    if n_inputs > N_FEATURES:
        diagnostics = columns(N_FEATURES, n_inputs, name="diagnostics")(inputs)
        diagnostics = keras.layers.Dense(64, activation="relu")(diagnostics)
        x = keras.layers.Concatenate()([x, diagnostics])
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(N_CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="koi_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class KerasCNNRuntime(FrameworkRuntime):
    name: ClassVar[str] = "keras_cnn"
    framework: ClassVar[str] = "tensorflow"
    model_file: ClassVar[str] = "model.keras"

    def __init__(self, model=None, preprocessor: Preprocessor | None = None):
        super().__init__(model, preprocessor)
        self._compiled = None
        self._attributions = None

    @staticmethod
    def framework_version() -> str:
        import keras
        import tensorflow as tf

        return f"tensorflow {tf.__version__}, keras {keras.__version__}"

    def fit(self, X, y, X_val, y_val, *, seed: int, fast: bool, progress: Progress,
            features: tuple[str, ...] = FEATURES, **_) -> dict:
        import keras

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.preprocessor = Preprocessor.fit(X, log_skewed=True, impute=True, standardize=True, features=features)
        model = build_model(seed, len(features))
        epochs = FAST_EPOCHS if fast else EPOCHS

        class EpochProgress(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                progress(f"keras_cnn: epoch {epoch + 1}/{epochs} loss {logs.get('loss', 0):.4f} "
                         f"val_loss {logs.get('val_loss', 0):.4f} val_accuracy {logs.get('val_accuracy', 0):.3f}")

        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
        history = model.fit(self.preprocessor.transform(X), y, validation_data=(self.preprocessor.transform(X_val), y_val),
                            epochs=epochs, batch_size=64, verbose=0, shuffle=True, callbacks=[EpochProgress(), stop])
        self.model = model
        return {"epochs": len(history.history["loss"]), "training_samples": len(y), "batch_size": 64, "optimizer": "adam(1e-3)",
                "early_stopping": "val_loss, patience 8, best weights restored"}

    def _save_model(self, path: Path) -> None:
        self.model.save(path)

    @classmethod
    def load(cls, directory: Path, threads: int | None = None) -> "KerasCNNRuntime":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _configure_threads(threads)
        import keras

        _layers()
        # safe_mode refuses Lambda layers and any other way to smuggle bytecode into the file.
        model = keras.saving.load_model(Path(directory) / cls.model_file, compile=False, safe_mode=True)
        return cls(model, Preprocessor.load(directory))

    def _function(self):
        if self._compiled is None:
            import tensorflow as tf

            # One trace for every batch size: never model.predict per request. The concrete
            # function skips tf.function's per-call signature matching and input conversion.
            self._compiled = tf.function(lambda x: self.model(x, training=False)).get_concrete_function(
                tf.TensorSpec([None, len(self.preprocessor.features)], tf.float32))
        return self._compiled

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        X = tf.constant(self.preprocessor.transform(X), dtype=tf.float32)
        return np.asarray(self._function()(X), dtype=np.float64)

    def explain(self, X: np.ndarray, steps: int | None = None) -> Explanation:
        """Integrated gradients of every class's probability. The baseline is what the model sees
        for a KOI with nothing measured: each column's training median (missing values are imputed
        with it), so a feature's attribution is what its measured value changes against the median."""
        from .integrated_gradients import attribution_function, integrated_gradients

        steps = steps or IG_STEPS
        n_features = len(self.features)
        missing = np.full((1, n_features), np.nan)
        baseline = self.preprocessor.transform(missing)[0]
        if self._attributions is None:
            self._attributions = attribution_function(self.model, n_features, N_CLASSES)
        rows = self.preprocessor.transform(X)
        values = (integrated_gradients(self._attributions, rows, baseline, steps) if len(rows)
                  else np.zeros((0, N_CLASSES, n_features)))
        base_value = self.predict_proba(missing)
        probabilities = self.predict_proba(X)
        return Explanation(
            method="integrated_gradients", output_space="probability", features=self.features, values=values,
            base_value=np.repeat(base_value, len(rows), axis=0), output=probabilities,
            probabilities=probabilities, inputs=np.asarray(X, dtype=np.float64),
            details={"steps": steps, "baseline": BASELINE, "quadrature": "Gauss-Legendre on [0, 1]"})


RUNTIME = KerasCNNRuntime
