"""Per-model preprocessing, fitted on the training stars and stored as JSON beside the model.

One transform serves every framework: an optional signed log for heavy-tailed columns, median
imputation of missing values, and standardization. XGBoost uses none of it (it routes missing
values itself), the forest imputes, the CNN uses all three.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .schema import FEATURES, N_FEATURES

FILE_NAME = "preprocessing.json"


@dataclass
class Preprocessor:
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    log_columns: list[int] = field(default_factory=list)
    impute: list[float] | None = None  # per-column fill for NaN, after the log
    mean: list[float] | None = None
    scale: list[float] | None = None
    notes: str = ""

    @classmethod
    def fit(cls, X: np.ndarray, log_skewed: bool, impute: bool, standardize: bool) -> "Preprocessor":
        X = np.asarray(X, dtype=np.float64)
        log_columns = _skewed_columns(X) if log_skewed else []
        Xt = _signed_log(X, log_columns)
        medians = np.nanmedian(Xt, axis=0)
        medians = np.where(np.isnan(medians), 0.0, medians)
        prep = cls(log_columns=log_columns, impute=medians.tolist() if impute else None)
        if standardize:
            filled = np.where(np.isnan(Xt), medians, Xt)
            std = filled.std(axis=0)
            prep.mean = filled.mean(axis=0).tolist()
            prep.scale = np.where(std > 0, std, 1.0).tolist()
        prep.notes = ("signed log1p on log_columns; NaN -> impute[i]; (x - mean) / scale"
                      if impute or standardize else "identity: missing values stay NaN for the model")
        return prep

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != N_FEATURES:
            raise ValueError(f"expected shape [n, {N_FEATURES}], got {list(X.shape)}")
        if not (self.log_columns or self.impute or self.mean):
            return X
        X = _signed_log(X, self.log_columns)
        if self.impute is not None:
            X = np.where(np.isnan(X), np.asarray(self.impute, dtype=np.float32), X)
        if self.mean is not None:
            X = (X - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.scale, dtype=np.float32)
        return X.astype(np.float32, copy=False)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> "Preprocessor":
        data = json.loads((Path(directory) / FILE_NAME).read_text())
        prep = cls(**data)
        if prep.features != list(FEATURES):
            raise ValueError(f"{FILE_NAME} was fitted on other features than this schema")
        return prep


def _skewed_columns(X: np.ndarray, threshold: float = 2.0) -> list[int]:
    columns = []
    for i in range(X.shape[1]):
        col = X[:, i][~np.isnan(X[:, i])]
        if col.size > 2 and col.std() > 0:
            skew = float(np.mean(((col - col.mean()) / col.std()) ** 3))
            if abs(skew) > threshold:
                columns.append(i)
    return columns


def _signed_log(X: np.ndarray, columns: list[int]) -> np.ndarray:
    if not columns:
        return X
    X = X.copy()
    X[:, columns] = np.sign(X[:, columns]) * np.log1p(np.abs(X[:, columns]))
    return X
