"""The one interface every framework implements, and lazy lookup by name.

Runtimes import no Ray: training and serving share them, so there is no train/serve skew.
Frameworks are imported inside each runtime module, and a module is imported only when its
runtime is asked for, so a process serving XGBoost never loads TensorFlow.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import numpy as np

from .explanation import Explanation
from .preprocessing import Preprocessor

Progress = Callable[[str], None]


class Runtime(Protocol):
    name: ClassVar[str]
    framework: ClassVar[str]
    model_file: ClassVar[str]

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
            seed: int, fast: bool, progress: Progress, features: tuple[str, ...]) -> dict: ...
    """Train on columns `features` (a schema.FEATURE_SETS value); returns the hyper-parameters and
    training facts worth recording."""

    def save(self, directory: Path) -> list[Path]: ...

    @classmethod
    def load(cls, directory: Path, threads: int | None = None) -> "Runtime": ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...
    """Raw features [n, len(features)] (NaN = missing) -> probabilities [n, 3] in LABELS order."""

    def explain(self, X: np.ndarray) -> Explanation: ...
    """Raw features [n, len(features)] -> each row's per-class, per-feature attributions (explanation.py)."""

    @staticmethod
    def framework_version() -> str: ...


class FrameworkRuntime:
    """What every runtime shares: its fitted model, its preprocessing and how both are saved."""

    name: ClassVar[str]
    framework: ClassVar[str]
    model_file: ClassVar[str]

    def __init__(self, model=None, preprocessor: Preprocessor | None = None):
        self.model = model
        self.preprocessor = preprocessor or Preprocessor()

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.preprocessor.features)

    def save(self, directory: Path) -> list[Path]:
        path = Path(directory) / self.model_file
        self._save_model(path)
        return [path, self.preprocessor.save(directory)]

    def _save_model(self, path: Path) -> None:
        raise NotImplementedError


_MODULES = {
    "keras_cnn": "runtimes.keras_cnn",
    "xgboost": "runtimes.xgboost_runtime",
    "random_forest": "runtimes.random_forest",
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODULES)


def runtime_class(name: str) -> type[Runtime]:
    if name not in _MODULES:
        raise KeyError(f"unknown model {name!r}: expected one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).RUNTIME


def load(name: str, directory: Path, threads: int | None = None) -> Runtime:
    return runtime_class(name).load(Path(directory), threads=threads)


def normalize(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True)
