"""The router's prediction cache and shared rate limits, built from its CacheSettings and rebuilt
only when they change, so a reconfigure keeps the cached rows, the Redis pool and its breaker."""
from __future__ import annotations

import asyncio

from .config import CacheSettings
from .prediction_cache import CacheObserver, MemoryStore, PredictionCache, RedisStore
from .rate_limits import SharedLimits
from .redis_link import RedisLink, RedisObserver


class Observer(CacheObserver, RedisObserver):
    pass


class CacheSetup:
    def __init__(self, observer: Observer | None = None):
        self.observer = observer
        self.settings: CacheSettings | None = None
        self.link: RedisLink | None = None
        self.cache: PredictionCache | None = None
        self.limits: SharedLimits | None = None

    def configure(self, settings: CacheSettings) -> None:
        if settings == self.settings:
            return
        self.settings = settings
        if self.link is not None and not (settings.redis_url and self.link.matches(settings)):
            _close_later(self.link)
            self.link = self.limits = None
        if settings.redis_url and self.link is None:
            self.link = RedisLink(settings, self.observer)
            self.limits = SharedLimits(self.link)
        store = (RedisStore(self.link, settings.ttl_s) if self.link is not None
                 else MemoryStore(settings.max_entries, settings.max_bytes))
        self.cache = PredictionCache(store, self.observer) if settings.enabled else None

    def describe(self) -> dict:
        """For the health answer: which cache answers, and whether Redis is in use or bypassed."""
        return {"backend": self.cache.backend if self.cache is not None else "off",
                "redis": self.link.state if self.link is not None else "not configured"}


def _close_later(link: RedisLink) -> None:
    try:
        asyncio.get_running_loop().create_task(link.close())
    except RuntimeError:  # no loop (a test's synchronous reconfigure): the pool is collected
        pass
