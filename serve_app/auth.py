"""Credentials with scopes, one mechanism for API keys and JWTs.

API keys are configured only as SHA-256 hashes, in KEPLER_API_KEYS (on Kubernetes, from a
Secret): one `name:sha256hex:scope+scope[:requests_per_minute]` per entry, separated by commas or
newlines. JWT bearer tokens are verified with the public key in KEPLER_JWT_PUBLIC_KEY (PEM text or
a path; EdDSA or RS256), their `exp` and `aud` (KEPLER_JWT_AUDIENCE) checked, scopes read from the
`scope` claim (space-separated) or `scopes` (a list). Clients send `Authorization: Bearer <key or
token>` or `X-API-Key: <key>`. Ray-free."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("predict", "admin")
ENV = "KEPLER_API_KEYS"
JWT_KEY_ENV, JWT_AUDIENCE_ENV = "KEPLER_JWT_PUBLIC_KEY", "KEPLER_JWT_AUDIENCE"
_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<hash>[0-9a-f]{64}):(?P<scopes>[a-z+]+)"
                    r"(?::(?P<rpm>[0-9]{1,9}))?$")
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    requests_per_minute: int | None = None  # overrides the configured rate limit


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]
    requests_per_minute: int | None = None


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
            raise ValueError(f"{ENV} entry {position}: expected name:sha256hex:scope[+scope][:requests_per_minute]")
        scopes = frozenset(match["scopes"].split("+"))
        if not scopes <= set(SCOPES):
            raise ValueError(f"{ENV} entry {position}: unknown scopes {sorted(scopes - set(SCOPES))}")
        keys[match["hash"]] = ApiKey(match["name"], scopes, int(match["rpm"]) if match["rpm"] else None)
    return keys


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class JwtVerifier:
    """EdDSA (Ed25519) or RS256 signatures, with `exp`, `nbf` and `aud` checked."""

    def __init__(self, public_key_pem: bytes, audience: str | None, leeway_s: float = 30):
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        self.key = load_pem_public_key(public_key_pem)
        if isinstance(self.key, ed25519.Ed25519PublicKey):
            self.algorithm = "EdDSA"
        elif isinstance(self.key, rsa.RSAPublicKey):
            self.algorithm = "RS256"
        else:
            raise ValueError(f"{JWT_KEY_ENV}: expected an Ed25519 or RSA public key")
        self.audience, self.leeway_s = audience, leeway_s

    @classmethod
    def from_env(cls) -> "JwtVerifier | None":
        configured = os.environ.get(JWT_KEY_ENV, "").strip()
        if not configured:
            return None
        pem = configured.encode() if configured.startswith("-----BEGIN") else Path(configured).read_bytes()
        return cls(pem, os.environ.get(JWT_AUDIENCE_ENV) or None)

    def _check_signature(self, signed: bytes, signature: bytes) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            if self.algorithm == "EdDSA":
                self.key.verify(signature, signed)
            else:
                self.key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise AuthError(401, "invalid token: bad signature") from None

    def verify(self, token: str) -> Principal:
        try:
            header_b64, payload_b64, signature_b64 = token.split(".")
            header, claims = json.loads(_b64(header_b64)), json.loads(_b64(payload_b64))
            signature = _b64(signature_b64)
        except (ValueError, UnicodeDecodeError):
            raise AuthError(401, "invalid token: not a JWT") from None
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != self.algorithm:
            raise AuthError(401, f"invalid token: expected alg {self.algorithm}")
        self._check_signature(f"{header_b64}.{payload_b64}".encode(), signature)
        now = time.time()
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] + self.leeway_s < now:
            raise AuthError(401, "invalid token: expired or without exp")
        if isinstance(claims.get("nbf"), (int, float)) and claims["nbf"] - self.leeway_s > now:
            raise AuthError(401, "invalid token: not valid yet")
        audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
        if self.audience and self.audience not in audiences:
            raise AuthError(401, f"invalid token: audience is not {self.audience!r}")
        scopes = claims.get("scopes") if isinstance(claims.get("scopes"), list) else str(claims.get("scope", "")).split()
        return Principal(f"jwt:{claims.get('sub', '?')}", frozenset(s for s in scopes if s in SCOPES))


class Authenticator:
    def __init__(self, keys: dict[str, ApiKey], jwt: JwtVerifier | None = None):
        self.keys, self.jwt = keys, jwt

    @classmethod
    def from_env(cls) -> "Authenticator":
        return cls(parse_keys(os.environ.get(ENV, "")), JwtVerifier.from_env())

    @property
    def configured(self) -> bool:
        return bool(self.keys) or self.jwt is not None

    @staticmethod
    def presented(headers) -> str | None:
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            return authorization[7:].strip() or None
        return headers.get("x-api-key") or None

    def identify(self, headers) -> Principal:
        """Who holds the presented credential; AuthError(401) when it is missing or invalid."""
        secret = self.presented(headers)
        if secret is None:
            raise AuthError(401, "missing credential: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        key = self.keys.get(hash_key(secret))
        if key is not None:
            return Principal(key.name, key.scopes, key.requests_per_minute)
        if self.jwt is not None and _JWT.match(secret):
            return self.jwt.verify(secret)
        raise AuthError(401, "invalid credential")

    def authorize(self, headers, scope: str) -> Principal:
        """The caller when it holds `scope`; AuthError(401 or 403) otherwise."""
        if not any(scope in key.scopes for key in self.keys.values()) and self.jwt is None:
            raise AuthError(403, f"the {scope} API is disabled: no key with the {scope!r} scope is configured ({ENV})")
        principal = self.identify(headers)
        if scope not in principal.scopes:
            raise AuthError(403, f"{principal.name!r} lacks the {scope!r} scope")
        return principal
