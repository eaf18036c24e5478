"""Exact per-credential rate limits shared by every router replica, through Redis: the `limits`
library's moving window (N requests in any 60 s), counted in one place however the proxies spread
a client's requests. While Redis is bypassed the caller falls back to each replica's share of the
limit in its own token buckets (access.TokenBuckets). Ray-free."""
from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from .redis_link import RedisLink

KEY_PREFIX = "kepler:limits"


class SharedLimits:
    def __init__(self, link: RedisLink):
        self.link = link
        # The limiter keeps its own pool (the library's client), with the same bounds as the link's.
        storage = RedisStorage(f"async+{link.url}", implementation="redispy", key_prefix=KEY_PREFIX,
                               password=link.password, socket_timeout=link.timeout_s,
                               socket_connect_timeout=link.timeout_s)
        self.limiter = MovingWindowRateLimiter(storage)

    async def take(self, who: str, per_minute: float, cost: float = 1.0) -> float | None:
        """0 when a request costing `cost` may go now, else the seconds until the window frees
        enough; None when Redis cannot say (the caller falls back to its local share)."""
        item = RateLimitItemPerMinute(max(1, int(per_minute)))
        cost = max(1, min(math.ceil(cost), item.amount))  # a call costs at most a full window
        allowed = await self.link.call("rate_limit", lambda: self.limiter.hit(item, who, cost=cost), None)
        if allowed is None:
            return None
        if allowed:
            return 0.0
        stats = await self.link.call("rate_limit", lambda: self.limiter.get_window_stats(item, who), None)
        return max(1.0, stats.reset_time - time.time()) if stats is not None else 1.0
