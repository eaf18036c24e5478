"""A value the open probes read, refreshed at most once per period. Ray-free.

Health, readiness and /metrics answer without credentials, so each request must not become
calls to every model deployment or to the node's metrics agent: callers within a period get
the last answer, and concurrent callers past it share one refresh. A failed refresh is not kept
(the next caller tries again), and every caller waiting on it gets its error."""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class Refreshed(Generic[T]):
    def __init__(self, compute: Callable[[], Awaitable[T]], period_s: float = 1.0, clock=time.monotonic):
        self.compute, self.period_s, self.clock = compute, period_s, clock
        self._value: T | None = None
        self._at = float("-inf")
        self._refresh: asyncio.Future | None = None

    async def get(self) -> T:
        if self.clock() - self._at < self.period_s:
            return self._value
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._recompute())
        return await asyncio.shield(self._refresh)  # a caller that goes away leaves it running

    async def _recompute(self) -> T:
        value = await self.compute()
        self._value, self._at = value, self.clock()
        return value
