"""Credentials with scopes, one mechanism for API keys and JWTs.

API keys are configured only as SHA-256 hashes, in KEPLER_API_KEYS (on Kubernetes, from a
Secret): one `name:sha256hex:scope+scope[:requests_per_minute]` per entry, separated by commas or
newlines. JWT bearer tokens are verified by PyJWT with the public key in KEPLER_JWT_PUBLIC_KEY (PEM
text or a path): `alg` is pinned by the key's type (Ed25519: EdDSA, RSA: RS256), and `exp`, `iss`
(KEPLER_JWT_ISSUER) and `aud` (KEPLER_JWT_AUDIENCE) are required, so a token minted for another
service or by another issuer sharing the key is refused; a key without both is refused at startup.
Scopes come from the `scope` claim (space-separated) and/or `scopes` (a list of strings). Clients
send `Authorization: Bearer <key or token>` or `X-API-Key: <key>`. Any malformed credential is a
401, never another exception. Ray-free."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jwt

SCOPES = ("predict", "admin", "feedback")
ENV = "KEPLER_API_KEYS"
JWT_KEY_ENV, JWT_ISSUER_ENV, JWT_AUDIENCE_ENV = "KEPLER_JWT_PUBLIC_KEY", "KEPLER_JWT_ISSUER", "KEPLER_JWT_AUDIENCE"
# Far above any real token; bounds the work an unauthenticated caller can make the decoder do.
MAX_TOKEN_CHARS = 8192
_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<hash>[0-9a-f]{64}):(?P<scopes>[a-z+]+)"
                    r"(?::(?P<rpm>[0-9]{1,9}))?$")


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
    # surrogatepass: a lone surrogate in a presented key must not raise (same digest for any valid text)
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


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


class JwtVerifier:
    """Signature, `exp`, `nbf`, `iss` and `aud` checked by PyJWT, with the algorithm fixed by the key."""

    def __init__(self, public_key_pem: bytes, audience: str, issuer: str, leeway_s: float = 30):
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        self.key = load_pem_public_key(public_key_pem)
        # One algorithm per key type: a token cannot pick HS256 (the public key as an HMAC secret) or none.
        if isinstance(self.key, ed25519.Ed25519PublicKey):
            self.algorithm = "EdDSA"
        elif isinstance(self.key, rsa.RSAPublicKey):
            self.algorithm = "RS256"
        else:
            raise ValueError(f"{JWT_KEY_ENV}: expected an Ed25519 or RSA public key")
        for value, env in ((issuer, JWT_ISSUER_ENV), (audience, JWT_AUDIENCE_ENV)):
            if not value:
                raise ValueError(f"{JWT_KEY_ENV} is set but {env} is not: tokens are only accepted for "
                                 "a configured issuer and audience")
        self.audience, self.issuer, self.leeway_s = audience, issuer, leeway_s

    @classmethod
    def from_env(cls) -> "JwtVerifier | None":
        configured = os.environ.get(JWT_KEY_ENV, "").strip()
        if not configured:
            return None
        pem = configured.encode() if configured.startswith("-----BEGIN") else Path(configured).read_bytes()
        return cls(pem, audience=os.environ.get(JWT_AUDIENCE_ENV, "").strip(),
                   issuer=os.environ.get(JWT_ISSUER_ENV, "").strip())

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError(401, f"invalid token: longer than {MAX_TOKEN_CHARS} characters")
        try:
            claims = jwt.decode(token, self.key, algorithms=[self.algorithm], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway_s,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as error:
            raise AuthError(401, f"invalid token: {error}") from None
        except Exception:  # noqa: BLE001 - whatever a hostile token triggers in the decoder is still a bad token
            raise AuthError(401, "invalid token: malformed") from None
        scope, scopes = claims.get("scope", ""), claims.get("scopes", [])
        if not (isinstance(scope, str) and isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
            raise AuthError(401, "invalid token: `scope` must be a string and `scopes` a list of strings")
        granted = frozenset(s for s in [*scope.split(), *scopes] if s in SCOPES)
        return Principal(f"jwt:{claims.get('sub', '?')}", granted)


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
        authorization, api_key = headers.get("authorization"), headers.get("x-api-key")
        if isinstance(authorization, str) and authorization[:7].lower() == "bearer ":
            return authorization[7:].strip() or None
        return api_key if isinstance(api_key, str) and api_key else None

    def identify(self, headers) -> Principal:
        """Who holds the presented credential; AuthError(401) when it is missing or invalid."""
        secret = self.presented(headers)
        if secret is None:
            raise AuthError(401, "missing credential: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        key = self.keys.get(hash_key(secret))
        if key is not None:
            return Principal(key.name, key.scopes, key.requests_per_minute)
        if self.jwt is not None and secret.count(".") == 2:  # a JWT's three segments; anything else was a key
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
