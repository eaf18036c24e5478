"""metadata.json of models and datasets, typed. The registry checks it on publish and serves it to
readers; it never interprets the model or the data themselves."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    # Extra keys (hyper-parameters, new metrics) survive a round trip.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Training(_Open):
    dataset_version: str
    training_samples: int
    epochs: int


class Evaluation(_Open):
    accuracy: float
    precision: float
    recall: float
    f1_score: float
    roc_auc: float
    averaging: str = "macro"
    evaluated_against: str = ""
    test_samples: int = 0


class InputSchema(_Open):
    features: int
    dtype: str
    feature_names: list[str]


class OutputSchema(_Open):
    classes: int
    labels: list[str]


class ModelMetadata(_Open):
    model_name: str
    version: str
    created_at: str
    framework: str
    framework_version: str
    model_file: str
    preprocessing_file: str | None = None
    training: Training
    performance: Evaluation
    evaluations: dict[str, dict] = Field(default_factory=dict)
    input_schema: InputSchema
    output_schema: OutputSchema


class DatasetFile(_Open):
    rows: int
    columns: list[str]


class DatasetSource(_Open):
    file: str
    sha256: str
    note: str = ""


class DatasetMetadata(_Open):
    """A dataset version's metadata.json: what each file holds and what it was built from."""

    name: str
    version: str
    created_at: str
    description: str = ""
    files: dict[str, DatasetFile]
    sources: list[DatasetSource] = Field(default_factory=list)
