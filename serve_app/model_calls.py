"""The dispatcher's batch and call stages: one model deployment's answer for some rows, through
its circuit breaker, batched with concurrent requests for the same version, retried once when
the replica died. Ray-free: the call itself is an injected function.

`call(deployment, version, rows, request_ids)` answers probabilities [n, 3]. It raises a
ServingError for the request's own problem (unknown version: the breaker is not fed),
`Overloaded` when the model's queue is full (load shedding, not a failure), `ReplicaGone` when
the replica died under the call (retried once on another), anything else for a failing model.

A model deployment has one breaker. A variant deployment (`<model>_candidate`, `_shadow`) has
one per version: each experiment brings a new version, which must not inherit the breaker an
earlier candidate opened (its first requests would be turned away and counted against it)."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import numpy as np

from .breaker import CircuitBreaker
from .coalescing import Coalescer
from .config import RouterSettings
from .errors import BreakerOpen, ModelUnavailable, ReplicaGone, ServingError

logger = logging.getLogger("ray.serve")
Call = Callable[[str, str, np.ndarray, list[str]], Awaitable[np.ndarray]]


class ModelCalls:
    def __init__(self, call: Call, models: list[str], settings: RouterSettings, clock=None):
        self.call = call
        self.clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}  # model deployment -> its breaker
        self.variant_breakers: dict[tuple[str, str], CircuitBreaker] = {}  # (variant deployment, version)
        self.coalescer = Coalescer(self._send, settings.batching.calls_in_flight, settings.batching.max_rows)
        self.configure(settings)
        self.breakers = {name: self._new_breaker() for name in models}

    def configure(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.timeout_s = settings.model_timeout_s
        self.coalescer.calls_in_flight = settings.batching.calls_in_flight
        self.coalescer.max_rows = settings.batching.max_rows
        for breaker in [*self.breakers.values(), *self.variant_breakers.values()]:
            breaker.failure_threshold = settings.breaker.failure_threshold
            breaker.cooldown_s = settings.breaker.cooldown_s

    def _new_breaker(self) -> CircuitBreaker:
        breaker = CircuitBreaker(self.settings.breaker.failure_threshold, self.settings.breaker.cooldown_s)
        if self.clock is not None:
            breaker.clock = self.clock
        return breaker

    def breaker(self, deployment: str, version: str) -> CircuitBreaker:
        if deployment in self.breakers:
            return self.breakers[deployment]
        key = (deployment, version)
        if key not in self.variant_breakers:
            if len(self.variant_breakers) >= 64:  # experiments come and go: forget the oldest
                del self.variant_breakers[next(iter(self.variant_breakers))]
            self.variant_breakers[key] = self._new_breaker()
        return self.variant_breakers[key]

    def state(self, deployment: str) -> str:
        return self.breakers[deployment].state.value

    async def __call__(self, deployment: str, version: str, rows: np.ndarray, request_id: str) -> np.ndarray:
        """Turned away while the deployment's breaker is open, with that breaker's Retry-After."""
        breaker = self.breaker(deployment, version)
        if not breaker.allow():
            wait = breaker.retry_after_s()
            raise BreakerOpen(f"{deployment} is failing; its circuit breaker is open. Retry in {wait} s", wait)
        return await self.coalescer((deployment, version), rows, request_id)

    async def _send(self, key: tuple[str, str], rows: np.ndarray, request_ids: list[str]) -> np.ndarray:
        """One call for the rows of one or more requests; its outcome feeds the breaker once."""
        deployment, version = key
        breaker = self.breaker(deployment, version)
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout_s):  # no extra task per call, unlike wait_for
                    result = await self.call(deployment, version, rows, request_ids)
            except ServingError:  # the request's own problem, or load shed: says nothing of the model
                breaker.release_probe()
                raise
            except ReplicaGone:
                if attempt == 1:
                    logger.warning("%s replica died under a request; retrying once", deployment)
                    continue
                breaker.record_failure()
                raise ModelUnavailable(f"{deployment} replicas are unavailable") from None
            except Exception as e:  # noqa: BLE001 - a failing or timed-out model: feed the breaker
                breaker.record_failure()
                logger.warning("%s %s failed: %s", deployment, version, type(e).__name__)
                raise ModelUnavailable(f"{deployment} {version} failed: {type(e).__name__}") from None
            breaker.record_success()
            return result
        raise AssertionError("unreachable")
