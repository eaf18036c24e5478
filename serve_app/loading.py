"""Pull a version from the registry, verify it and load it into its runtime. Ray-free."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from registry import ModelRegistry, RegistryError, checksums
from registry.errors import NotFound, RegistryUnavailable
from runtimes import Runtime, load

from .errors import ModelUnavailable, not_found, scrubbed, withheld


@dataclass
class LoadedModel:
    name: str
    version: str
    runtime: Runtime
    load_time_s: float
    checksums: dict[str, str] = field(default_factory=dict)


def load_version(registry: ModelRegistry, name: str, version: str, threads: int) -> LoadedModel:
    started = time.perf_counter()
    try:
        directory = registry.pull(name, version)
        manifest = checksums.parse((directory / checksums.MANIFEST).read_bytes(), str(directory))
    except NotFound as e:
        raise not_found(e) from None
    except (RegistryError, OSError) as e:  # the store, the cache directory: where they are is logged only
        why = "the model registry cannot be reached" if isinstance(e, RegistryUnavailable) else scrubbed(e)
        raise withheld(ModelUnavailable, f"{name} {version} cannot be pulled: {why}", e) from None
    try:
        runtime = load(name, directory, threads=threads)
        runtime.predict_proba(np.zeros((1, len(runtime.features)), dtype=np.float32))  # warm: compile/trace now
    except Exception as e:  # noqa: BLE001 - any framework error means "this version cannot load"
        raise withheld(ModelUnavailable, f"{name} {version} cannot be loaded: {scrubbed(e)}", e) from None
    return LoadedModel(name, version, runtime, time.perf_counter() - started, manifest)
