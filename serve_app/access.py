"""Who may call what, and how often: an ASGI middleware in front of every route of the router.

The scope map: predictions (REST and V2 infer), model listings and metadata, the schema and the
docs need `predict`; experiments and their admin actions need `admin`, always; health, readiness
and `/metrics` stay open for probes and scrapers. With authentication off (the local
quickstart, with a warning at startup) only the admin routes ask for a credential.

Rate limits are token buckets per credential, refilled continuously: `requests_per_minute` (or
the key's own) spread over the router replicas, each enforcing its share locally, so no request
waits on another process. Without authentication there is no credential to limit. Ray-free."""
from __future__ import annotations

import json
import math
import re
import time

from .auth import AuthError, Authenticator, Principal

OPEN = re.compile(r"^/(api/v1/health|v2/health/(live|ready)|v2/models/[^/]+(/versions/[^/]+)?/ready|metrics"
                  r"|docs-assets/.*)$")
ADMIN = re.compile(r"^/api/v1/experiments(/.*)?$")
LIMITED = re.compile(r"^/(api/v1/predict(/batch)?|v2/models/[^/]+(/versions/[^/]+)?/infer)$")


def required_scope(path: str) -> str | None:
    if OPEN.match(path):
        return None
    return "admin" if ADMIN.match(path) else "predict"


class TokenBuckets:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, last refill)

    def take(self, who: str, per_minute: float) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = self.clock()
        tokens, last = self.buckets.get(who, (per_minute, now))
        tokens = min(per_minute, tokens + (now - last) * per_minute / 60)
        if tokens >= 1:
            self.buckets[who] = (tokens - 1, now)
            return 0.0
        self.buckets[who] = (tokens, now)
        return (1 - tokens) * 60 / per_minute


class AccessControl:
    """Configured by the router (one router per replica process): `auth`, `enabled`, limits."""

    auth = Authenticator({})
    enabled = False
    requests_per_minute = 100.0
    replicas = 1
    buckets = TokenBuckets()

    def __init__(self, asgi_app):
        self.app = asgi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        needed = required_scope(path)
        principal = None
        if needed == "admin" or (needed and self.enabled):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            try:
                principal = self.auth.authorize(headers, needed)
            except AuthError as e:
                return await _refuse(send, e.status, e.message, {"WWW-Authenticate": "Bearer"} if e.status == 401 else {})
        if principal is not None and LIMITED.match(path):
            wait = self.buckets.take(principal.name, self._per_minute(principal) / max(1, self.replicas))
            if wait:
                return await _refuse(send, 429, "rate limit exceeded: "
                                     f"{self._per_minute(principal):g} requests per minute",
                                     {"Retry-After": str(max(1, math.ceil(wait)))})
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _per_minute(self, principal: Principal) -> float:
        return principal.requests_per_minute or self.requests_per_minute


async def _refuse(send, status: int, message: str, headers: dict[str, str]) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
