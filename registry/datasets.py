"""Datasets: versioned like models, beside them in the same store.

    datasets/<name>/v<semver>/<data files>, metadata.json
    datasets/<name>/v<semver>/checksum.sha256   written last, signed like a model's
    datasets/<name>/<alias>                     {"version": "1.0.0", ...}

Every guarantee of a model version holds (see registry.py): a create-only claim, the manifest
written last, a signature checked on read, aliases, verified pulls, the cached copy while the
store is down. Reach them from a ModelRegistry as `registry.datasets`.
"""
from __future__ import annotations

from .metadata import DatasetMetadata
from .registry import ArtifactRegistry


class DatasetRegistry(ArtifactRegistry[DatasetMetadata]):
    NAMESPACE, KIND, METADATA_TYPE = "datasets", "dataset", DatasetMetadata
    # Model names cannot begin with '_', so no model's cached versions can collide with these.
    CACHE_SUBDIR = "_datasets"

    @staticmethod
    def _describes(metadata: DatasetMetadata) -> tuple[str, str]:
        return metadata.name, metadata.version

    @staticmethod
    def _needs(metadata: DatasetMetadata) -> list[str]:
        return sorted(metadata.files)
