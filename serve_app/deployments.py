"""The Ray wiring: one framework-neutral model deployment, bound once per model family.

Each replica serves several versions of its family through `@serve.multiplexed` (concrete
versions only; the router resolves aliases) and gathers concurrent requests with `@serve.batch`,
whose size and wait come from `user_config` via `reconfigure()`.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

from registry.versions import check_version, is_version
from runtimes.explanation import Explanation

from .config import BatchSettings, ModelSettings, RegistrySettings
from .errors import BadRequest
from .loading import LoadedModel, load_version
from .metrics import ModelMetrics
from .ray_internals import multiplexed_model_ids

logger = logging.getLogger("ray.serve")
EXPLAIN_BATCH_ROWS = 32  # explanations cost far more per row than predictions: smaller batches


class ModelServer:
    """Serves one model family. Bound as `keras_cnn`, `xgboost` and `random_forest`."""

    def __init__(self, model_name: str, settings: dict, registry: dict):
        self.model_name = model_name
        self.metrics = ModelMetrics(model_name)
        self.settings = ModelSettings(**settings)
        self.registry = RegistrySettings(**registry).config().open()
        async def load(version: str) -> LoadedModel:  # a plain function: Serve keeps its LRU state on it
            return await self._load(version)

        self.get_model = serve.multiplexed(max_num_models_per_replica=self.settings.max_models_per_replica)(load)
        self.max_batch_size = BatchSettings().max_batch_size
        # Configured versions load now and stay pinned: a replica whose default version cannot load
        # never becomes healthy. Other versions live only in the multiplexed LRU cache.
        self.default_version = self._resolve(self.settings.default_version)
        self.pinned: dict[str, LoadedModel] = {}
        for ref in [self.settings.default_version, *self.settings.preload]:
            version = self._resolve(ref)
            self.pinned[version] = load_version(self.registry, model_name, version, self.settings.threads)
            self.metrics.loaded(version, self.pinned[version].load_time_s, len(self.pinned))
        logger.info("%s ready with versions %s", model_name, sorted(self.pinned))

    def _resolve(self, ref: str) -> str:
        return check_version(ref) if is_version(ref) else self.registry.resolve(self.model_name, ref)

    async def _load(self, version: str) -> LoadedModel:
        if version in self.pinned:
            return self.pinned[version]
        model = load_version(self.registry, self.model_name, version, self.settings.threads)
        self.metrics.loaded(version, model.load_time_s, len(self.loaded_versions()) + 1)
        return model

    def reconfigure(self, user_config: dict) -> None:
        batch = BatchSettings(**(user_config or {}))
        self.max_batch_size = batch.max_batch_size
        self.predict_batch.set_max_batch_size(batch.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)

    def check_health(self) -> None:
        if self.default_version not in self.pinned:
            raise RuntimeError(f"{self.model_name} {self.default_version} is not loaded")

    async def predict(self, version: str, rows: np.ndarray, request_ids: list[str] = (), caller: str = "") -> np.ndarray:
        """Probabilities [n, 3] for rows [n, 36] from a concrete version. `request_ids` are those of
        the requests a router gathered into this call and `caller` that router's replica, for the
        batch log: @serve.batch merges calls from every router replica, up to `max_batch_size` rows."""
        if not is_version(version):
            raise BadRequest(f"model version must be concrete, got {version!r}")
        self.metrics.cache(hit=version in self.loaded_versions())
        model = await self.get_model(version)  # loads (or fails) for this request alone
        if len(rows) > self.max_batch_size:  # larger than any batch: a batch of its own
            self._log_batch(version, len(rows), [list(request_ids)], [caller])
            return model.runtime.predict_proba(rows)
        return await self.predict_batch((version, rows, list(request_ids), caller))

    def _log_batch(self, version: str, rows: int, request_ids: list[list[str]], callers: list[str]) -> None:
        logger.info("batch", extra={"model": self.model_name, "version": version, "rows": rows,
                                    "calls": len(callers), "callers": sorted(set(callers)),
                                    "request_ids": [r for ids in request_ids for r in ids]})

    @serve.batch(max_batch_size=BatchSettings().max_batch_size, batch_wait_timeout_s=0.0,
                 batch_size_fn=lambda items: sum(len(item[1]) for item in items))
    async def predict_batch(self, items: list[tuple[str, np.ndarray, list[str], str]]) -> list[np.ndarray]:
        # Serve splits batches by multiplexed model id; group anyway so direct calls stay correct.
        results: list[np.ndarray | None] = [None] * len(items)
        for version in {item[0] for item in items}:
            indices = [i for i, item in enumerate(items) if item[0] == version]
            self._log_batch(version, sum(len(items[i][1]) for i in indices), [items[i][2] for i in indices],
                            [items[i][3] for i in indices])
            model = await self.get_model(version)
            stacked = np.concatenate([items[i][1] for i in indices])
            probabilities = model.runtime.predict_proba(stacked)
            offset = 0
            for i in indices:
                n = len(items[i][1])
                results[i] = probabilities[offset:offset + n]
                offset += n
        return results

    async def explain(self, version: str, rows: np.ndarray, request_ids: list[str] = (), caller: str = "") -> Explanation:
        """Each row's attributions (runtimes/explanation.py), batched like predictions but apart
        from them, and computed off the event loop: a forest's TreeSHAP takes a while, and this
        replica's predictions and health checks must not wait behind it."""
        if not is_version(version):
            raise BadRequest(f"model version must be concrete, got {version!r}")
        model = await self.get_model(version)
        if len(rows) > EXPLAIN_BATCH_ROWS:
            return await asyncio.to_thread(model.runtime.explain, rows)
        return await self.explain_batch((version, rows, list(request_ids), caller))

    @serve.batch(max_batch_size=EXPLAIN_BATCH_ROWS, batch_wait_timeout_s=0.0,
                 batch_size_fn=lambda items: sum(len(item[1]) for item in items))
    async def explain_batch(self, items: list[tuple[str, np.ndarray, list[str], str]]) -> list[Explanation]:
        results: list[Explanation | None] = [None] * len(items)
        for version in {item[0] for item in items}:
            indices = [i for i, item in enumerate(items) if item[0] == version]
            model = await self.get_model(version)
            explained = await asyncio.to_thread(model.runtime.explain, np.concatenate([items[i][1] for i in indices]))
            offset = 0
            for i in indices:
                results[i] = explained.rows(offset, offset + len(items[i][1]))
                offset += len(items[i][1])
        return results

    async def describe(self, version: str) -> dict:
        model = await self.get_model(version)
        return {"version": version, "load_time_s": round(model.load_time_s, 4), "checksums": model.checksums,
                "pinned": version in self.pinned}

    def default_ref(self) -> str:
        """The version or alias this deployment's replicas were configured to serve by default. The
        router asks rather than trusting its own copy of the config, so a rollout that fails
        leaves requests on the default the running replicas were started with."""
        return self.settings.default_version

    def loaded_versions(self) -> list[str]:
        """Pinned versions plus whatever the multiplexed LRU cache holds now."""
        cached = multiplexed_model_ids(self.get_model)
        return sorted(set(self.pinned) | cached, key=lambda v: tuple(map(int, v.split("."))))
