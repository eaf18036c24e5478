"""Request and response types of the REST API (/api/v1). Values are checked once, on the whole
matrix: NaN, Infinity, 1e309, integers beyond float64 and numbers beyond float32's range are
422s naming the row and the feature."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictFloat, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from registry.versions import check_alias, is_version
from runtimes.schema import FEATURE_INDEX, FEATURES, LABELS, N_FEATURES

Number = StrictFloat | StrictInt
Features = list[Number | None] | dict[str, Number | None]
ModelChoice = Literal["auto", "ensemble", "keras_cnn", "xgboost", "random_forest"]

FEATURES_HELP = (f"{N_FEATURES} numbers (null = missing) in schema order ({', '.join(FEATURES[:3])}, ...), "
                 "or an object keyed by feature name (absent or null = missing). See GET /api/v1/schema.")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelChoice = Field("auto", description="'auto' (best registry ROC-AUC), a model name, or 'ensemble'")
    version: str | None = Field(None, description="a semantic version or an alias (stable, latest); default: "
                                                  "each model's configured default_version (stable)")
    return_all_models: bool = Field(False, description="also return every model's answer side by side")
    return_probabilities: bool = True

    @field_validator("version")
    @classmethod
    def _version(cls, version: str | None) -> str | None:
        if version is None or is_version(version):
            return version
        check_alias(version)  # InvalidName is a ValueError: a 422 naming the field
        return version


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _row(features: list | dict) -> list:
    """One row in schema order, None for missing; ValueError names the offending field."""
    if isinstance(features, dict):
        unknown = [k for k in features if k not in FEATURE_INDEX]
        if unknown:
            raise ValueError(f"unknown feature name(s) {unknown[:5]}; expected names from the schema")
        row: list = [None] * N_FEATURES
        for name, value in features.items():
            row[FEATURE_INDEX[name]] = value
        return row
    if len(features) != N_FEATURES:
        raise ValueError(f"expected {N_FEATURES} values in schema order, got {len(features)}")
    return features


class RowError(ValueError):
    def __init__(self, row: int, message: str):
        super().__init__(message)
        self.row = row


def features_matrix(rows: list[list | dict]) -> np.ndarray:
    """Rows as the float32 matrix the models compute in, NaN for missing. Every present value must
    be finite and within float32's range (|x| <= 3.4e38): anything else is a RowError naming the
    row and the feature, never an infinity reaching a model. Checked on the whole matrix at once."""
    ordered = []
    for i, features in enumerate(rows):
        try:
            ordered.append(_row(features))
        except ValueError as e:
            raise RowError(i, str(e)) from None
    try:
        matrix = np.array(ordered, dtype=np.float64)  # None -> NaN
    except OverflowError:  # an integer beyond float64
        matrix = None
    if matrix is not None and not np.isinf(matrix).any() and not (np.abs(matrix) > FLOAT32_MAX).any() \
            and int(np.isnan(matrix).sum()) == sum(row.count(None) for row in ordered):
        return matrix.astype(np.float32)
    for i, row in enumerate(ordered):  # the slow path, for the message only
        for j, value in enumerate(row):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(float_or_inf(value))
                                          and abs(float(value)) <= FLOAT32_MAX):
                raise RowError(i, f"{FEATURES[j]} (position {j}): {value!r:.40} is not a finite number "
                                  f"within float32's range (|x| <= {FLOAT32_MAX:.4g})")
    raise AssertionError("unreachable")


def float_or_inf(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


class PredictRequest(_Request):
    features: Features = Field(..., description=FEATURES_HELP)
    _matrix: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _rows(self) -> "PredictRequest":
        try:
            self._matrix = features_matrix([self.features])
        except ValueError as e:
            raise PydanticCustomError("value_error", "features: {reason}", {"reason": str(e)}) from None
        return self

    def matrix(self) -> np.ndarray:
        return self._matrix


class BatchPredictRequest(_Request):
    instances: list[Features] = Field(..., min_length=1, description=f"rows, each {FEATURES_HELP}")
    _matrix: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _rows(self) -> "BatchPredictRequest":
        try:
            self._matrix = features_matrix(self.instances)
        except RowError as e:
            raise PydanticCustomError("value_error", "instances[{row}]: {reason}", {"row": e.row, "reason": str(e)}) \
                from None
        return self

    def matrix(self) -> np.ndarray:
        return self._matrix


class ModelAnswer(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model: str
    version: str
    prediction: str
    probabilities: dict[str, float] | None = None


class EnsembleInfo(BaseModel):
    members: list[str] = Field(description="models that voted")
    weights: dict[str, float]
    degraded: bool = Field(description="true when a member was skipped (breaker open or failing)")
    skipped: dict[str, str] = Field(default_factory=dict, description="member -> why it did not vote")


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    request_id: str
    prediction: str = Field(description=f"one of {', '.join(LABELS)}")
    probabilities: dict[str, float] | None = None
    model: str
    version: str
    variant: str | None = Field(None, description="stable or candidate, when the model runs an experiment")
    latency_ms: float
    ensemble: EnsembleInfo | None = None
    all_models: list[ModelAnswer] | None = None


class BatchItem(BaseModel):
    prediction: str
    probabilities: dict[str, float] | None = None


class BatchPredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    request_id: str
    predictions: list[BatchItem]
    model: str
    version: str
    variant: str | None = Field(None, description="stable or candidate, when the model runs an experiment")
    latency_ms: float
    ensemble: EnsembleInfo | None = None
    all_models: dict[str, list[BatchItem]] | None = None


class WeightRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(..., ge=0, le=1, description="the candidate's share of the model's default traffic")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=500)


class ErrorResponse(BaseModel):
    error: str


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: str
    models_loaded: dict[str, list[str]]
    cache_size: int
    breakers: dict[str, str]
