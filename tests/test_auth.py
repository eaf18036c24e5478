"""Credentials, scopes and limits without Ray: API keys, JWTs of both algorithms, the scope map
and the token buckets."""
from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from serve_app.access import TokenBuckets, required_scope
from serve_app.auth import AuthError, Authenticator, JwtVerifier, hash_key, parse_keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(sign, alg: str, **claims) -> str:
    signing_input = f"{_b64(json.dumps({'alg': alg}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def test_api_keys_are_configured_as_hashes_with_scopes():
    auth = Authenticator(parse_keys(f"ops:{hash_key('s3cret')}:admin+predict, app:{hash_key('k2')}:predict"))
    assert auth.authorize({"authorization": "Bearer s3cret"}, "admin").name == "ops"
    assert auth.authorize({"x-api-key": "k2"}, "predict").name == "app"
    for headers, status in (({}, 401), ({"x-api-key": "wrong"}, 401), ({"x-api-key": "k2"}, 403)):
        with pytest.raises(AuthError) as error:
            auth.authorize(headers, "admin")
        assert error.value.status == status
    with pytest.raises(ValueError, match="entry 0"):
        parse_keys("ops:plaintext-key:admin")
    with pytest.raises(AuthError) as error:
        Authenticator({}).authorize({"x-api-key": "anything"}, "admin")
    assert error.value.status == 403 and "KEPLER_API_KEYS" in error.value.message


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_jwts_of_either_algorithm_are_verified(algorithm):
    if algorithm == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
        sign = key.sign
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sign = lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # noqa: E731
    verifier = JwtVerifier(_pem(key), audience="kepler-serve")
    claims = {"sub": "ci", "aud": "kepler-serve", "exp": time.time() + 60, "scope": "predict admin"}
    principal = verifier.verify(_token(sign, algorithm, **claims))
    assert principal.name == "jwt:ci" and principal.scopes == {"predict", "admin"}
    for bad, why in ((_token(sign, algorithm, **{**claims, "exp": time.time() - 60}), "expired"),
                     (_token(sign, algorithm, **{**claims, "aud": "other"}), "audience"),
                     (_token(sign, "HS256", **claims), "alg"),
                     (_token(lambda data: b"", "none", **claims), "alg"),
                     (_token(sign, algorithm, **claims)[:-4] + "AAAA", "signature")):
        with pytest.raises(AuthError, match=why):
            verifier.verify(bad)


def test_the_scope_map():
    for path in ("/api/v1/predict", "/api/v1/predict/batch", "/v2/models/xgboost/infer", "/api/v1/models",
                 "/api/v1/models/xgboost/info", "/docs", "/openapi.json", "/v2", "/v2/models/xgboost"):
        assert required_scope(path) == "predict", path
    for path in ("/api/v1/experiments", "/api/v1/experiments/xgboost/promote"):
        assert required_scope(path) == "admin", path
    for path in ("/api/v1/health", "/v2/health/live", "/v2/health/ready", "/v2/models/xgboost/ready", "/metrics"):
        assert required_scope(path) is None, path


def test_token_buckets_refill_continuously():
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    assert [buckets.take("k", 60) for _ in range(60)] == [0.0] * 60
    assert buckets.take("k", 60) == pytest.approx(1.0)  # one token a second
    assert buckets.take("other", 60) == 0.0  # per credential
    now[0] += 1.0
    assert buckets.take("k", 60) == 0.0
