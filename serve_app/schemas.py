"""Request and response types of the REST API (/api/v1). Non-finite numbers are refused at
parse time (`allow_inf_nan=False`), so NaN, Infinity and 1e309 are 422s naming the field."""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from registry.versions import check_alias, is_version
from runtimes.schema import FEATURE_INDEX, FEATURES, LABELS, N_FEATURES

Number = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False)]
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


def features_row(features: list | dict) -> list[float]:
    """One row in schema order with NaN for missing; ValueError names the offending field."""
    if isinstance(features, dict):
        unknown = [k for k in features if k not in FEATURE_INDEX]
        if unknown:
            raise ValueError(f"unknown feature name(s) {unknown[:5]}; expected names from the schema")
        row = [np.nan] * N_FEATURES
        for name, value in features.items():
            row[FEATURE_INDEX[name]] = np.nan if value is None else float(value)
        return row
    if len(features) != N_FEATURES:
        raise ValueError(f"expected {N_FEATURES} values in schema order, got {len(features)}")
    return [np.nan if v is None else float(v) for v in features]


class PredictRequest(_Request):
    features: Features = Field(..., description=FEATURES_HELP)

    @field_validator("features")
    @classmethod
    def _shape(cls, features):
        features_row(features)
        return features

    def matrix(self) -> np.ndarray:
        return np.asarray([features_row(self.features)], dtype=np.float32)


class BatchPredictRequest(_Request):
    instances: list[Features] = Field(..., min_length=1, description=f"rows, each {FEATURES_HELP}")

    @field_validator("instances")
    @classmethod
    def _shape(cls, instances):
        for i, features in enumerate(instances):
            try:
                features_row(features)
            except ValueError as e:
                raise ValueError(f"instances[{i}]: {e}") from None
        return instances

    def matrix(self) -> np.ndarray:
        return np.asarray([features_row(f) for f in self.instances], dtype=np.float32)


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
