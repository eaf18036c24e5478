"""Who may call what, and how often: the policy the ingress's AccessControl middleware enforces.

The scope map: predictions (REST and V2 infer), model listings and metadata, the schema and the
docs need `predict`; experiments and their admin actions need `admin`, always; health, readiness and
`/metrics` stay open for probes and scrapers, and so do the web page's own assets (`/ui`: the
page asks for a key and sends it with each API call). With authentication off (the local
quickstart, with a warning at startup) only the admin routes ask for a credential.

Rate limits are token buckets per credential, refilled continuously: `requests_per_minute` (or
the key's own) spread over the router replicas, each enforcing its share locally, so no request
waits on another process; an explanation takes more tokens than a prediction (explain_cost). Without authentication there is no credential to limit. Ray-free."""
from __future__ import annotations

import re
import time


OPEN = re.compile(r"^/(api/v1/health|v2/health/(live|ready)|v2/models/[^/]+(/versions/[^/]+)?/ready|metrics"
                  r"|docs-assets/.*|ui(/.*)?)$")
ADMIN = re.compile(r"^/api/v1/experiments(/.*)?$")
LIMITED = re.compile(r"^/(api/v1/(predict(/batch)?|explain)|v2/models/[^/]+(/versions/[^/]+)?/infer)$")


def is_rate_limited(path: str) -> bool:
    return LIMITED.match(path) is not None


def required_scope(path: str) -> str | None:
    if OPEN.match(path):
        return None
    return "admin" if ADMIN.match(path) else "predict"


class TokenBuckets:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, last refill)

    def take(self, who: str, per_minute: float, cost: float = 1.0) -> float:
        """0 when a request costing `cost` tokens may go now, else the seconds until it may."""
        now = self.clock()
        tokens, last = self.buckets.get(who, (per_minute, now))
        tokens = min(per_minute, tokens + (now - last) * per_minute / 60)
        if tokens >= cost:
            self.buckets[who] = (tokens - cost, now)
            return 0.0
        self.buckets[who] = (tokens, now)
        return (cost - tokens) * 60 / per_minute
