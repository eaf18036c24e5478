"""The dispatcher's first two stages: a request's version reference becomes a concrete version,
and its rows are checked against that version's input schema. Ray-free: what the running model
replicas serve by default comes through an injected function.

Aliases are cached for `ttl_s` and the last answer is kept while the registry is unreachable
(AliasResolver); the replicas' default is asked once, then refreshed in the background, so the
request path never waits on it once known. Versions are immutable, so metadata is cached for good."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

import numpy as np

from registry import InvalidName, ModelRegistry, NotFound
from runtimes.schema import KNOWN_FEATURES, N_FEATURES

from .aliases import AliasResolver
from .errors import BadRequest, ModelUnavailable, NotFoundError, not_found, withheld
from .feature_rows import FeatureRows

logger = logging.getLogger("ray.serve")
DefaultRef = Callable[[str], Awaitable[str]]


async def registry_call(function):
    """A blocking registry read off the event loop, its failures as domain errors whose messages
    name neither the store (path, bucket, endpoint) nor the failure's own text: those are logged."""
    try:
        return await asyncio.to_thread(function)
    except NotFound as e:
        raise not_found(e) from None
    except InvalidName as e:
        raise BadRequest(str(e)) from None
    except Exception as e:  # noqa: BLE001 - registry unreachable or malformed
        raise withheld(ModelUnavailable, "registry unavailable: the model registry cannot be read now", e) from None


class Versions:
    def __init__(self, registry: ModelRegistry, default_ref: DefaultRef, configured: dict[str, str],
                 ttl_s: float, clock=time.monotonic):
        """`default_ref(model)` asks the model's replicas what they serve by default; `configured`
        is the application's own default per model, used until they first answer."""
        self.registry = registry
        self.aliases = AliasResolver(registry, ttl_s, clock)
        self.ask_default, self.configured, self.clock = default_ref, configured, clock
        self._defaults: dict[str, tuple[str, float]] = {}
        self._refreshing: dict[str, asyncio.Task] = {}
        self._metadata: dict[tuple[str, str], dict] = {}
        self._unreadable: dict[tuple[str, str], float] = {}  # metadata read failed at (clock)
        self._archived: dict[tuple[str, str], tuple[bool, float]] = {}  # -> (archived, checked at)
        self.pinned: set[tuple[str, str]] = set()  # (model, version) the configuration names: always served

    @property
    def ttl_s(self) -> float:
        return self.aliases.ttl_s

    @ttl_s.setter
    def ttl_s(self, value: float) -> None:
        self.aliases.ttl_s = value

    async def resolve(self, model: str, ref: str | None) -> str:
        """A request's version or alias, else the replicas' default, as a concrete version. One a
        client names must not be archived, unless the configuration names it: refused here, before
        any model call, metric series, cache entry or load exists for it."""
        version = await self.aliases.resolve(model, ref or await self._default_ref(model))
        if ref is not None and (model, version) not in self.pinned and await self._is_archived(model, version):
            raise NotFoundError(f"version: {model} {version} is archived; it serves only where the "
                                "configuration names it")
        return version

    async def _is_archived(self, model: str, version: str) -> bool:
        """Asked of the registry at most once per `ttl_s` per version, answered or not; while it
        cannot be read the last answer stands, else the version is let through (the replica still
        has to pull it)."""
        known = self._archived.get((model, version))
        if known is not None and self.clock() - known[1] < self.ttl_s:
            return known[0]
        try:
            archived = await asyncio.to_thread(self.registry.is_archived, model, version)
        except Exception as e:  # noqa: BLE001 - unreachable: availability first, the replica decides
            logger.warning("cannot tell whether %s %s is archived: %s", model, version, type(e).__name__)
            # Not asked again for ttl_s: during an outage no request waits on the store's timeouts.
            archived = known[0] if known is not None else False
        if len(self._archived) >= 1024:  # clients may name any version: keep the newest answers only
            del self._archived[next(iter(self._archived))]
        self._archived[(model, version)] = (archived, self.clock())
        return archived

    async def _default_ref(self, model: str) -> str:
        cached = self._defaults.get(model)
        if cached is None:
            return await self._refresh_default(model)
        if self.clock() - cached[1] >= self.ttl_s and model not in self._refreshing:
            self._refreshing[model] = asyncio.ensure_future(self._refresh_default(model))
        return cached[0]

    async def _refresh_default(self, model: str) -> str:
        cached = self._defaults.get(model)
        try:
            ref = await self.ask_default(model)
        except Exception:  # noqa: BLE001 - unreachable: the last answer, else the configuration's
            ref = cached[0] if cached else self.configured[model]
        finally:
            self._refreshing.pop(model, None)
        self._defaults[model] = (ref, self.clock())
        return ref

    async def metadata(self, model: str, version: str) -> dict:
        """A version's metadata, read once. A failed read is not retried for `ttl_s`: while the
        registry is unreachable, requests for a version never read must not each wait on it."""
        key = (model, version)
        if key not in self._metadata:
            failed_at = self._unreadable.get(key)
            if failed_at is not None and self.clock() - failed_at < self.ttl_s:
                raise ModelUnavailable(f"registry unavailable: metadata of {model} {version} unreadable")
            try:
                metadata = await registry_call(lambda: self.registry.metadata(model, version))
            except ModelUnavailable:
                if len(self._unreadable) >= 64:  # clients may name any version: keep the newest only
                    del self._unreadable[next(iter(self._unreadable))]
                self._unreadable[key] = self.clock()
                raise
            self._unreadable.pop(key, None)
            self._metadata[key] = metadata.model_dump()
        return self._metadata[key]

    async def check_input(self, model: str, version: str, rows: FeatureRows) -> tuple[np.ndarray, tuple[str, ...]]:
        """The rows projected onto the version's own features (feature_rows.py has the rule), and
        those features. A registry that cannot be read now leaves the check to the replica, which
        refuses rows its runtime cannot take."""
        try:
            schema = (await self.metadata(model, version))["input_schema"]
        except ModelUnavailable:
            width = max(rows.positional, default=N_FEATURES)
            return np.ascontiguousarray(rows.values[:, :width]), KNOWN_FEATURES[:width]
        names = tuple(schema.get("feature_names") or KNOWN_FEATURES[:schema["features"]])
        return rows.for_version(names, f"{model} {version}"), names
