"""ASGI middleware of the ingress, configured per instance: each takes the ingress's `Gate`, whose
fields `reconfigure()` sets from the validated user_config. Outermost first: access control
(nothing is read before the caller is known), the body limit, then V2 content types."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..access import ALWAYS_AUTHENTICATED, TokenBuckets, is_rate_limited, required_scope, route_path
from ..auth import AuthError, Authenticator, Principal
from ..config import RouterSettings
from ..rate_limits import SharedLimits


@dataclass
class Gate:
    """What the middleware enforces; one per ingress instance, set from its validated settings."""

    auth: Authenticator
    auth_enabled: bool
    requests_per_minute: float
    max_body_bytes: int
    replicas: int = 1  # router replicas sharing each credential's rate limit
    buckets: TokenBuckets = field(default_factory=TokenBuckets)
    shared: SharedLimits | None = None  # exact limits in Redis, when configured and answering

    @classmethod
    def of(cls, auth: Authenticator, settings: RouterSettings) -> "Gate":
        return cls(auth, settings.auth.enabled, settings.auth.requests_per_minute, settings.max_body_bytes)

    def configure(self, settings: RouterSettings) -> None:
        self.auth_enabled = settings.auth.enabled
        self.requests_per_minute = settings.auth.requests_per_minute
        self.max_body_bytes = settings.max_body_bytes

    def per_minute(self, principal: Principal) -> float:
        return principal.requests_per_minute or self.requests_per_minute

    async def admit(self, principal: Principal) -> float:
        """One request's token: 0, or the seconds until the caller may send again."""
        return await self._take(principal, 1.0)

    async def charge(self, principal: Principal | None, tokens: float) -> float:
        """Take `tokens` more, beyond the one its request took, capped at a full bucket so any
        call can run once the bucket has refilled: 0, or the wait."""
        if principal is None or tokens <= 0:
            return 0.0
        return await self._take(principal, tokens, extra=True)

    async def _take(self, principal: Principal, cost: float, extra: bool = False) -> float:
        per_minute = self.per_minute(principal)
        if self.shared is not None:
            wait = await self.shared.take(principal.name, per_minute, min(cost, per_minute - 1) if extra else cost)
            if wait is not None:
                return wait
        share = per_minute / max(1, self.replicas)  # Redis absent or bypassed: this replica's share
        return self.buckets.take(principal.name, share, min(cost, max(0.0, share - 1)) if extra else cost)


async def refuse(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class AccessControl:
    """Scopes per route (serve_app/access.py), then per-credential rate limits: exact across
    router replicas in Redis when configured, else each replica's share of the limit locally.
    With authentication off only the admin and feedback routes ask for a credential."""

    def __init__(self, app, gate: Gate):
        self.app, self.gate = app, gate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        gate, path = self.gate, route_path(scope)
        needed = required_scope(path)
        principal = None
        if needed in ALWAYS_AUTHENTICATED or (needed and gate.auth_enabled):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            try:
                principal = gate.auth.authorize(headers, needed)
            except AuthError as e:
                return await refuse(send, e.status, e.message, {"WWW-Authenticate": "Bearer"} if e.status == 401 else {})
        if principal is not None and is_rate_limited(path):
            wait = await gate.admit(principal)
            if wait:
                return await refuse(send, 429, f"rate limit exceeded: {gate.per_minute(principal):g} requests "
                                    "per minute", {"Retry-After": str(max(1, math.ceil(wait)))})
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for bodies over the limit, checked before anything parses them."""

    def __init__(self, app, gate: Gate):
        self.app, self.gate = app, gate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.gate.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > limit:
                return await self._refuse(send, limit)
            return await self.app(scope, receive, send)
        # No declared length (chunked): buffer up to the limit, then replay the body.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await self._refuse(send, limit)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, limit: int) -> None:
        await refuse(send, 413, f"request body exceeds the limit of {limit} bytes")


class V2JsonBodies:
    """V2 clients (tritonclient among them) may send JSON without a Content-Type: treat it as JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and route_path(scope).startswith("/v2/") and scope["method"] == "POST":
            headers = scope.get("headers") or []
            if not any(name == b"content-type" for name, _ in headers):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class PageHeaders:
    """The web page's headers: nothing but its own origin may run or load (no inline script, no
    third-party asset), and the browser may not sniff types or leak the URL elsewhere."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
               (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not (route_path(scope) == "/ui" or route_path(scope).startswith("/ui/")):
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)
        await self.app(scope, receive, with_headers)
