"""API keys with scopes. Keys are configured only as SHA-256 hashes, in the environment variable
KEPLER_API_KEYS (on Kubernetes, from a Secret), one `name:sha256hex:scope+scope` per entry,
separated by commas or newlines. Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`.
Ray-free."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

SCOPES = ("predict", "admin")
ENV = "KEPLER_API_KEYS"
_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<hash>[0-9a-f]{64}):(?P<scopes>[a-z+]+)$")


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str) -> dict[str, ApiKey]:
    """sha256 -> key; refuses malformed entries and unknown scopes with the entry's position."""
    keys: dict[str, ApiKey] = {}
    for position, entry in enumerate(e.strip() for e in re.split(r"[,\n]", text or "")):
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if not match:
            raise ValueError(f"{ENV} entry {position}: expected name:sha256hex:scope[+scope]")
        scopes = frozenset(match["scopes"].split("+"))
        if not scopes <= set(SCOPES):
            raise ValueError(f"{ENV} entry {position}: unknown scopes {sorted(scopes - set(SCOPES))}")
        keys[match["hash"]] = ApiKey(match["name"], scopes)
    return keys


class Authenticator:
    def __init__(self, keys: dict[str, ApiKey]):
        self.keys = keys

    @classmethod
    def from_env(cls) -> "Authenticator":
        return cls(parse_keys(os.environ.get(ENV, "")))

    @staticmethod
    def presented(headers) -> str | None:
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            return authorization[7:].strip() or None
        return headers.get("x-api-key") or None

    def authorize(self, headers, scope: str) -> str:
        """The caller's name when it holds `scope`; AuthError(401 or 403) otherwise."""
        if not any(scope in key.scopes for key in self.keys.values()):
            raise AuthError(403, f"the {scope} API is disabled: no key with the {scope!r} scope is configured ({ENV})")
        secret = self.presented(headers)
        if secret is None:
            raise AuthError(401, "missing credential: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        key = self.keys.get(hash_key(secret))
        if key is None:
            raise AuthError(401, "invalid credential")
        if scope not in key.scopes:
            raise AuthError(403, f"key {key.name!r} lacks the {scope!r} scope")
        return key.name
