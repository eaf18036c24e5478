"""Who may call what, and how often: the policy the ingress's AccessControl middleware enforces.

The scope map: predictions (REST and V2 infer), model listings and metadata, the schema and the
docs need `predict`; experiments and their admin actions need `admin`, and labels sent back
(`/api/v1/feedback`) need `feedback`, both always, since they move traffic; health, readiness and
`/metrics` stay open for probes and scrapers, and so do the web page's own assets (`/ui`: the
page asks for a key and sends it with each API call). With authentication off (the local
quickstart, with a warning at startup) only the admin and feedback routes ask for a credential.

Rate limits are token buckets per credential, refilled continuously: `requests_per_minute` (or
the key's own) spread over the router replicas, each enforcing its share locally, so no request
waits on another process; an explanation takes more tokens than a prediction (explain_cost). Without authentication there is no credential to limit. Ray-free."""
from __future__ import annotations

import re
import time
from collections import OrderedDict


OPEN = re.compile(r"^/(api/v1/health|v2/health/(live|ready)|v2/models/[^/]+(/versions/[^/]+)?/ready|metrics"
                  r"|docs-assets/.*|ui(/.*)?)$")
ADMIN = re.compile(r"^/api/v1/experiments(/.*)?$")
FEEDBACK = re.compile(r"^/api/v1/feedback$")
ALWAYS_AUTHENTICATED = ("admin", "feedback")  # they change what serves: a credential even with auth off
LIMITED = re.compile(r"^/(api/v1/(predict(/batch)?|explain|feedback)|v2/models/[^/]+(/versions/[^/]+)?/infer)$")


def route_path(scope) -> str:
    """The path the application routes on, after any prefix it is mounted under. ASGI servers
    present a prefix two ways: `root_path` set with the full path kept in `path` (what Starlette
    expects), or with the prefix already stripped. Policy must see the route in both, or a
    prefixed admin route would not look like one."""
    path, root = scope.get("path", ""), (scope.get("root_path") or "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def is_rate_limited(path: str) -> bool:
    return LIMITED.match(path) is not None


def required_scope(path: str) -> str | None:
    if OPEN.match(path):
        return None
    if ADMIN.match(path):
        return "admin"
    return "feedback" if FEEDBACK.match(path) else "predict"


class TokenBuckets:
    """One bucket per credential, at most `max_entries`: beyond that the least recently used is
    forgotten (it has been idle longest, so its bucket had refilled most), which bounds the memory
    many distinct token subjects can take."""

    def __init__(self, clock=time.monotonic, max_entries: int = 10_000):
        self.clock, self.max_entries = clock, max_entries
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # who -> (tokens, last refill)

    def take(self, who: str, per_minute: float, cost: float = 1.0) -> float:
        """0 when a request costing `cost` tokens may go now, else the seconds until it may."""
        now = self.clock()
        tokens, last = self.buckets.get(who, (per_minute, now))
        tokens = min(per_minute, tokens + (now - last) * per_minute / 60)
        wait = 0.0 if tokens >= cost else (cost - tokens) * 60 / per_minute
        self.buckets[who] = (tokens - cost if not wait else tokens, now)
        self.buckets.move_to_end(who)
        while len(self.buckets) > self.max_entries:
            self.buckets.popitem(last=False)
        return wait
