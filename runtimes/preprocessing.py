"""Per-model preprocessing, fitted on the training stars and stored as JSON beside the model.

One transform serves every framework: an optional signed log for heavy-tailed columns, median
imputation of missing values, and standardization. XGBoost uses none of it (it routes missing
table values itself), the forest imputes, the CNN uses all three.

Missing diagnostics are always imputed, whatever the framework. A diagnostic is missing for whole
pipeline cohorts (koi_max_mult_ev exactly for KOIs absent from the DR25 run, koi_bin_oedp_sig
exactly where the excluded koi_score is missing), whose labels differ sharply; a model that saw
the gap itself would learn which cohort a KOI belongs to, information the excluded columns
carry, and would treat a request that simply omits the diagnostics as such a KOI.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .schema import DIAGNOSTICS, FEATURE_SETS, FEATURES

FILE_NAME = "preprocessing.json"


@dataclass
class Preprocessor:
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    log_columns: list[int] = field(default_factory=list)
    impute: list[float | None] | None = None  # per-column fill for NaN, after the log; None: left NaN
    mean: list[float] | None = None
    scale: list[float] | None = None
    notes: str = ""

    @classmethod
    def fit(cls, X: np.ndarray, log_skewed: bool, impute: bool, standardize: bool,
            features: tuple[str, ...] = FEATURES) -> "Preprocessor":
        X = np.asarray(X, dtype=np.float64)
        log_columns = _skewed_columns(X) if log_skewed else []
        Xt = _signed_log(X, log_columns)
        medians = np.nanmedian(Xt, axis=0)
        medians = np.where(np.isnan(medians), 0.0, medians)
        fill = [float(m) if impute or name in DIAGNOSTICS else None for m, name in zip(medians, features)]
        prep = cls(features=list(features), log_columns=log_columns,
                   impute=fill if any(v is not None for v in fill) else None)
        if standardize:
            filled = np.where(np.isnan(Xt), medians, Xt)
            std = filled.std(axis=0)
            prep.mean = filled.mean(axis=0).tolist()
            prep.scale = np.where(std > 0, std, 1.0).tolist()
        prep.notes = ("signed log1p on log_columns; NaN -> impute[i] (null: stays NaN); (x - mean) / scale"
                      if prep.impute or standardize else "identity: missing values stay NaN for the model")
        return prep

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"expected shape [n, {len(self.features)}], got {list(X.shape)}")
        if not (self.log_columns or self.impute or self.mean):
            return X
        X = _signed_log(X, self.log_columns)
        if self.impute is not None:
            fill = np.array([np.nan if v is None else v for v in self.impute], dtype=np.float32)
            X = np.where(np.isnan(X), fill, X)
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
        if tuple(prep.features) not in FEATURE_SETS.values():
            raise ValueError(f"{FILE_NAME} was fitted on features that are no known feature set")
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
