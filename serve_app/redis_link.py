"""The router's one Redis connection pool, behind a circuit breaker. Redis is an optimisation
(the shared cache, exact rate limits), never a dependency: every round trip is bounded by a
timeout, a failing Redis is bypassed after a few consecutive failures, and a probe after the
cooldown brings it back by itself. Ray-free."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable, Protocol, TypeVar

import redis.asyncio as redis

from .breaker import CircuitBreaker
from .config import CacheSettings

logger = logging.getLogger("ray.serve")
PASSWORD_ENV = "KEPLER_REDIS_PASSWORD"
T = TypeVar("T")


class RedisObserver(Protocol):
    def redis_state(self, bypassed: bool) -> None: ...
    def redis_error(self, operation: str) -> None: ...


class RedisLink:
    def __init__(self, settings: CacheSettings, observer: RedisObserver | None = None, clock=time.monotonic):
        self.url = settings.redis_url
        self.password = os.environ.get(PASSWORD_ENV) or None
        self.timeout_s = settings.redis_timeout_s
        self.client = redis.Redis.from_url(
            self.url, password=self.password, socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s, retry_on_timeout=False, max_connections=64)
        self.breaker = CircuitBreaker(settings.redis_failures, settings.redis_cooldown_s, clock)
        self.observer = observer
        self._bypassed = False

    def matches(self, settings: CacheSettings) -> bool:
        """Whether this link already serves these settings (a reconfigure keeps it, and its pool)."""
        return (self.url, self.timeout_s, self.breaker.failure_threshold, self.breaker.cooldown_s) == (
            settings.redis_url, settings.redis_timeout_s, settings.redis_failures, settings.redis_cooldown_s)

    @property
    def state(self) -> str:
        return "bypassed" if self._bypassed else "up"

    async def call(self, operation: str, work: Callable[[], Awaitable[T]], default: T) -> T:
        """`work()`'s result, or `default` when Redis is bypassed, fails or is slower than the
        timeout (the socket timeout alone does not bound a stopped server's pool checkout)."""
        if not self.breaker.allow():
            return default
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                result = await work()
        except asyncio.CancelledError:  # the request went away: no verdict on Redis
            self.breaker.release_probe()
            raise
        except Exception as e:  # noqa: BLE001 - redis-py's and the rate limiter's errors alike
            self.breaker.record_failure()
            if self.observer is not None:
                self.observer.redis_error(operation)
            self._changed(f"{operation}: {type(e).__name__}: {e}")
            return default
        self.breaker.record_success()
        self._changed()
        return result

    def _changed(self, reason: str = "") -> None:
        """Log and publish only state changes: one line when Redis goes away, one when it is back."""
        bypassed = self.breaker.opened_at is not None
        if bypassed == self._bypassed:
            return
        self._bypassed = bypassed
        if bypassed:
            logger.warning("Redis at %s bypassed after %d failures (%s): cache off, per-replica rate limits; "
                           "retrying every %g s", self.url, self.breaker.failure_threshold, reason,
                           self.breaker.cooldown_s)
        else:
            logger.warning("Redis at %s answers again: shared cache and exact rate limits resumed", self.url)
        if self.observer is not None:
            self.observer.redis_state(bypassed)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - closing a dead pool
            pass
