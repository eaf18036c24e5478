"""Request and response types of the REST API (/api/v1). Rows are parsed by feature_rows.py
(which lengths and names are accepted, and the value checks) into FeatureRows."""
from __future__ import annotations

from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StrictFloat, StrictInt, StrictStr, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from registry.versions import check_alias, is_version
from runtimes.schema import FEATURES, LABELS

from .feature_rows import ACCEPTED, FeatureRows, RowError, parse_rows

Number = StrictFloat | StrictInt
Features = list[Number | None] | dict[str, Number | None]
ModelChoice = Literal["auto", "ensemble", "keras_cnn", "xgboost", "random_forest"]

FEATURES_HELP = (f"{ACCEPTED} numbers (null = missing) in schema order ({', '.join(FEATURES[:3])}, ...), "
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


KOIName = StrictStr | StrictInt
KOI_HELP = ("a KOI (K00752.01, KOI-752.01, 752.01), a Kepler name (Kepler-227 b) or a KIC id (10797460: every "
            "KOI of that star), looked up in the KOI catalogue")


class PredictRequest(_Request):
    features: Features | None = Field(None, description=FEATURES_HELP)
    koi: KOIName | None = Field(None, description=f"instead of features: {KOI_HELP}")
    _rows: FeatureRows | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _parse(self) -> "PredictRequest":
        if (self.features is None) == (self.koi is None):
            raise PydanticCustomError("value_error", "features or koi: give exactly one of them")
        if self.features is not None:
            try:
                self._rows = parse_rows([self.features])
            except ValueError as e:
                raise PydanticCustomError("value_error", "features: {reason}", {"reason": str(e)}) from None
        return self

    def rows(self) -> FeatureRows | None:
        """The parsed rows; None when the request names a KOI instead."""
        return self._rows


class BatchPredictRequest(_Request):
    instances: list[Features] | None = Field(None, min_length=1, description=f"rows, each {FEATURES_HELP}")
    kois: list[KOIName] | None = Field(None, min_length=1, description=f"instead of instances: each {KOI_HELP}")
    _rows: FeatureRows | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _parse(self) -> "BatchPredictRequest":
        if (self.instances is None) == (self.kois is None):
            raise PydanticCustomError("value_error", "instances or kois: give exactly one of them")
        if self.instances is not None:
            try:
                self._rows = parse_rows(self.instances)
            except RowError as e:
                raise PydanticCustomError("value_error", "instances[{row}]: {reason}",
                                          {"row": e.row, "reason": str(e)}) from None
        return self

    def rows(self) -> FeatureRows | None:
        return self._rows


class ExplainRequest(BaseModel):
    """Rows to explain, as for predict and predict/batch: exactly one of features, instances, koi, kois."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelChoice = Field("auto", description="a model name, 'ensemble' (each member explained, with the "
                                                   "weights that combine them) or 'auto'")
    version: str | None = _Request.model_fields["version"]
    features: Features | None = Field(None, description=f"one row: {FEATURES_HELP}")
    instances: list[Features] | None = Field(None, min_length=1, description="rows, each as `features`")
    koi: KOIName | None = Field(None, description=KOI_HELP)
    kois: list[KOIName] | None = Field(None, min_length=1, description="KOIs, each as `koi`")
    _rows: FeatureRows | None = PrivateAttr(None)

    _version = field_validator("version")(_Request._version.__func__)

    @model_validator(mode="after")
    def _parse(self) -> "ExplainRequest":
        given = [name for name in ("features", "instances", "koi", "kois") if getattr(self, name) is not None]
        if len(given) != 1:
            raise PydanticCustomError("value_error", "features, instances, koi or kois: give exactly one of them")
        rows = [self.features] if self.features is not None else self.instances
        if rows is not None:
            try:
                self._rows = parse_rows(rows)
            except RowError as e:
                field = "features" if self.features is not None else f"instances[{e.row}]"
                raise PydanticCustomError("value_error", "{field}: {reason}", {"field": field, "reason": str(e)}) from None
        return self

    def rows(self) -> FeatureRows | None:
        return self._rows

    def names(self) -> list | None:
        """The KOI names asked for; None when the request carries features."""
        return [self.koi] if self.koi is not None else self.kois


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
    record: str | None = Field(None, description="the version whose fitted ensemble record voted (members "
                                                 "called at that version); null: the configured weights")
    temperatures: dict[str, float] | None = Field(None, description="per-member temperature scaling applied "
                                                                    "before the weighted average")


MISSING_HELP = "features the answering version needs that the row lacked (answered from training medians)"


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    request_id: str
    prediction: str = Field(description=f"one of {', '.join(LABELS)}")
    probabilities: dict[str, float] | None = None
    missing_features: list[str] | None = Field(None, description=MISSING_HELP)
    koi: str | None = Field(None, description="the KOI asked about, when asked by name")
    disposition: str | None = Field(None, description="its archive disposition in the catalogue")
    in_training_set: bool | None = Field(None, description="whether the answering version was trained on its star")
    catalogue_version: str | None = None
    model: str
    version: str
    variant: str | None = Field(None, description="stable or candidate, when the model runs an experiment; "
                                "named to callers with the admin scope only")
    latency_ms: float
    ensemble: EnsembleInfo | None = None
    all_models: list[ModelAnswer] | None = None


class BatchItem(BaseModel):
    prediction: str
    probabilities: dict[str, float] | None = None
    missing_features: list[str] | None = Field(None, description=MISSING_HELP)
    koi: str | None = None
    disposition: str | None = None
    in_training_set: bool | None = None


class BatchPredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    request_id: str
    predictions: list[BatchItem]
    catalogue_version: str | None = None
    model: str
    version: str
    variant: str | None = Field(None, description="stable or candidate, when the model runs an experiment; "
                                "named to callers with the admin scope only")
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
    prediction_cache: dict[str, str] = Field(default_factory=dict, description="backend (memory, redis or off) "
                                             "and whether Redis is up or bypassed")
    breakers: dict[str, str]
