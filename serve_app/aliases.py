"""Alias resolution for the router: registry answers cached for a few seconds, and the last
known answer kept while the registry is unreachable. Ray-free."""
from __future__ import annotations

import asyncio
import logging
import time

from registry import InvalidName, ModelRegistry, NotFound, RegistryError
from registry.versions import check_version, is_version

from .errors import BadRequest, ModelUnavailable, not_found, withheld

logger = logging.getLogger("ray.serve")


class AliasResolver:
    def __init__(self, registry: ModelRegistry, ttl_s: float, clock=time.monotonic):
        self.registry = registry
        self.ttl_s = ttl_s
        self.clock = clock
        self._known: dict[tuple[str, str], tuple[str, float]] = {}

    async def resolve(self, model: str, ref: str) -> str:
        if is_version(ref):
            return check_version(ref)
        key = (model, ref)
        cached = self._known.get(key)
        if cached and self.clock() - cached[1] < self.ttl_s:
            return cached[0]
        try:
            version = await asyncio.to_thread(self.registry.resolve, model, ref)
        except NotFound as e:
            raise not_found(e) from None
        except InvalidName as e:
            raise BadRequest(f"version: {e}") from None
        except (RegistryError, OSError, ValueError, LookupError, TypeError) as e:  # unreachable or malformed
            if cached:
                logger.warning("registry unreachable, serving %s %s as %s: %s", model, ref, cached[0], e)
                return cached[0]
            raise withheld(ModelUnavailable, f"cannot resolve {model} {ref}: the model registry cannot be read now",
                           e) from None
        self._known[key] = (version, self.clock())
        return version
