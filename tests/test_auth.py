"""Credentials, scopes and limits without Ray: API keys, JWTs of both algorithms (and hostile
ones), the scope map and the token buckets."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from serve_app import auth as auth_module
from serve_app.access import TokenBuckets, required_scope
from serve_app.auth import MAX_TOKEN_CHARS, AuthError, Authenticator, JwtVerifier, hash_key, parse_keys

from .conftest import JwtIssuer

ISSUER, AUDIENCE = JwtIssuer.ISSUER, JwtIssuer.AUDIENCE


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(sign, alg: str, **claims) -> str:
    signing_input = f"{_b64(json.dumps({'alg': alg}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _signed(sign, header: bytes, payload: bytes) -> str:
    """A token from raw header and payload bytes, validly signed: what is wrong is inside."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _claims(**overrides) -> dict:
    claims = {"sub": "ci", "iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 60, "scope": "predict admin"}
    return {k: v for k, v in {**claims, **overrides}.items() if v is not None}


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rsa_sign(key):
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


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
def test_jwts_of_either_algorithm_are_verified(algorithm, ed_key, rsa_key):
    key, sign = (ed_key, ed_key.sign) if algorithm == "EdDSA" else (rsa_key, _rsa_sign(rsa_key))
    verifier = JwtVerifier(_pem(key), audience=AUDIENCE, issuer=ISSUER)
    principal = verifier.verify(_token(sign, algorithm, **_claims()))
    assert principal.name == "jwt:ci" and principal.scopes == {"predict", "admin"}
    assert verifier.verify(_token(sign, algorithm, **_claims(scope=None, scopes=["predict", "x"]))).scopes == {"predict"}
    assert verifier.verify(_token(sign, algorithm, **_claims(aud=["other", AUDIENCE]))).name == "jwt:ci"
    for bad, why in ((_token(sign, algorithm, **_claims(exp=time.time() - 60)), "(?i)expired"),
                     (_token(sign, algorithm, **_claims(nbf=time.time() + 600)), "(?i)not yet valid"),
                     (_token(sign, algorithm, **_claims(aud="other")), "(?i)audience"),
                     (_token(sign, algorithm, **_claims(iss="https://elsewhere.test")), "(?i)issuer"),
                     (_token(sign, algorithm, **_claims(exp=None)), 'missing the "exp"'),
                     (_token(sign, algorithm, **_claims(iss=None)), 'missing the "iss"'),
                     (_token(sign, algorithm, **_claims(aud=None)), 'missing the "aud"'),
                     (_token(sign, algorithm, **_claims())[:-4] + "AAAA", "(?i)signature")):
        with pytest.raises(AuthError, match=why) as error:
            verifier.verify(bad)
        assert error.value.status == 401


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_the_algorithm_is_pinned_by_the_key(algorithm, ed_key, rsa_key):
    key = ed_key if algorithm == "EdDSA" else rsa_key
    pem = _pem(key)
    verifier = JwtVerifier(pem, audience=AUDIENCE, issuer=ISSUER)
    assert verifier.algorithm == algorithm
    other = ("RS256", _rsa_sign(rsa_key)) if algorithm == "EdDSA" else ("EdDSA", ed_key.sign)
    for bad in (_token(lambda data: hmac.new(pem, data, hashlib.sha256).digest(), "HS256", **_claims()),
                _token(lambda data: b"", "none", **_claims()),
                _token(lambda data: b"", "None", **_claims()),
                _token(other[1], other[0], **_claims()),  # signed with the other key type's algorithm
                _token(key.sign if algorithm == "EdDSA" else _rsa_sign(key), other[0], **_claims())):
        with pytest.raises(AuthError) as error:
            verifier.verify(bad)
        assert error.value.status == 401
    with pytest.raises(ValueError, match="Ed25519 or RSA"):
        JwtVerifier(_pem(ec.generate_private_key(ec.SECP256R1())), audience=AUDIENCE, issuer=ISSUER)


def test_oversized_tokens_are_refused_before_decoding(ed_key, monkeypatch):
    verifier = JwtVerifier(_pem(ed_key), audience=AUDIENCE, issuer=ISSUER)
    decoded = []
    monkeypatch.setattr(auth_module.jwt, "decode", lambda *args, **kwargs: decoded.append(args))
    token = _token(ed_key.sign, "EdDSA", **_claims(pad="x" * MAX_TOKEN_CHARS))
    with pytest.raises(AuthError, match="longer than") as error:
        verifier.verify(token)
    assert error.value.status == 401 and decoded == []


@pytest.mark.parametrize("capped", [True, False], ids=["capped", "uncapped"])
def test_hostile_tokens_are_401s_and_nothing_else(capped, ed_key, monkeypatch):
    if not capped:  # what the decoder itself makes of them, had they been short enough
        monkeypatch.setattr(auth_module, "MAX_TOKEN_CHARS", 10**7)
    auth = Authenticator({}, JwtVerifier(_pem(ed_key), audience=AUDIENCE, issuer=ISSUER))
    sign, alg = ed_key.sign, json.dumps({"alg": "EdDSA"}).encode()
    claims = json.dumps(_claims()).encode()
    deep = ("[" * 10_000 + "]" * 10_000).encode()
    hostile = [
        _signed(sign, b'{"alg": "EdDSA", "x": ' + deep + b"}", claims),  # a header nested 10,000 deep
        _signed(sign, alg, b'{"x": ' + deep + b"}"),
        _signed(sign, deep, claims),
        _signed(sign, b'{"alg": "EdDSA", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}", claims),  # under the cap
        _signed(sign, b"not json", claims),
        _signed(sign, alg, b"not json"),
        _signed(sign, b"[1, 2]", claims),
        _signed(sign, alg, b"[1, 2]"),
        _signed(sign, b'{"alg": ["EdDSA"]}', claims),
        _signed(sign, b'{"alg": null}', claims),
        _signed(sign, b"\xff\xfe", claims),
        _signed(sign, alg, b"\xff\xfe"),
        _signed(sign, alg, b'{"exp": 1' + b"0" * 5000 + b', "iss": "https://issuer.test", "aud": "kepler-serve"}'),
        _signed(sign, alg, json.dumps(_claims(exp=1e308 * 10)).encode()),  # Infinity
        _signed(sign, alg, json.dumps(_claims(exp=float("nan"))).encode()),
        _signed(sign, alg, json.dumps(_claims(exp="tomorrow")).encode()),
        _signed(sign, alg, json.dumps(_claims(nbf=[1])).encode()),
        _signed(sign, alg, json.dumps(_claims(iat=10**30)).encode()),
        _signed(sign, alg, json.dumps(_claims(iss=["https://issuer.test"])).encode()),
        _signed(sign, alg, json.dumps(_claims(aud={"kepler-serve": 1})).encode()),
        _signed(sign, alg, json.dumps(_claims(sub=12)).encode()),
        _signed(sign, alg, json.dumps(_claims(scope=["predict"])).encode()),
        _signed(sign, alg, json.dumps(_claims(scope=7)).encode()),
        _signed(sign, alg, json.dumps(_claims(scopes="predict")).encode()),
        _signed(sign, alg, json.dumps(_claims(scopes=[["predict"]])).encode()),
        _signed(sign, alg, json.dumps(_claims(scopes={"predict": True})).encode()),
        "..", "a.b.c", "!!!.@@@.###", "é.é.é", "\ud800.\udfff.x", "\x00.\x00.\x00",
        f"{_b64(alg)}.{_b64(claims)}.", f"{_b64(alg)}.{_b64(claims)}.====", f"{_b64(alg)}..",
        ".".join(["A" * 3000] * 3),
    ]
    for token in hostile:
        with pytest.raises(AuthError) as error:
            auth.authorize({"authorization": f"Bearer {token}"}, "predict")
        assert error.value.status == 401, token[:80]
    for headers in ({"authorization": None}, {"authorization": b"Bearer x.y.z"}, {"x-api-key": 7},
                    {"authorization": "Bearer \ud800"}, {"x-api-key": "\ud800\x00"}, {"authorization": "Bearer"}):
        with pytest.raises(AuthError) as error:
            auth.authorize(headers, "predict")
        assert error.value.status == 401, headers


def test_a_jwt_key_needs_an_issuer_and_an_audience(ed_key, monkeypatch, tmp_path):
    (tmp_path / "jwt.pub").write_bytes(_pem(ed_key))
    monkeypatch.delenv("KEPLER_API_KEYS", raising=False)
    monkeypatch.setenv("KEPLER_JWT_PUBLIC_KEY", str(tmp_path / "jwt.pub"))
    for issuer, audience, missing in ((None, AUDIENCE, "KEPLER_JWT_ISSUER"), (ISSUER, None, "KEPLER_JWT_AUDIENCE"),
                                      (" ", AUDIENCE, "KEPLER_JWT_ISSUER"), (None, None, "KEPLER_JWT_ISSUER")):
        for name, value in (("KEPLER_JWT_ISSUER", issuer), ("KEPLER_JWT_AUDIENCE", audience)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=missing):
            Authenticator.from_env()
    monkeypatch.setenv("KEPLER_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("KEPLER_JWT_AUDIENCE", AUDIENCE)
    auth = Authenticator.from_env()
    token = JwtIssuer()
    token.key = ed_key
    assert auth.authorize({"authorization": f"Bearer {token.token(sub='ci', exp=time.time() + 60, scope='predict')}"},
                          "predict").name == "jwt:ci"
    monkeypatch.delenv("KEPLER_JWT_PUBLIC_KEY")
    monkeypatch.delenv("KEPLER_JWT_ISSUER")
    assert Authenticator.from_env().jwt is None  # no key: the other two are not needed


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


def test_token_buckets_are_bounded_and_forget_the_longest_idle():
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0], max_entries=3)
    for who in ("a", "b", "c"):
        buckets.take(who, 60)
    buckets.take("a", 60)  # a is recent again: b is now the longest idle
    buckets.take("d", 60)
    assert list(buckets.buckets) == ["c", "a", "d"]
    for i in range(1000):  # many distinct subjects cannot grow the table
        buckets.take(f"token-subject-{i}", 60)
    assert len(buckets.buckets) == 3


def _asgi_status(app, path: str, root_path: str, headers: dict[str, str]) -> int:
    """The status `app` answers a GET of `path` presented with `root_path`."""
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "root_path": root_path, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.mark.parametrize("path, root_path", [
    ("/kepler/api/v1/experiments", "/kepler"),  # root_path set, the full path kept (Starlette's way)
    ("/api/v1/experiments", "/kepler"),  # root_path set, the prefix already stripped
    ("/kepler/api/v1/experiments/xgboost/promote", "/kepler/"),
    ("/api/v1/experiments", ""),  # no prefix at all
])
def test_scope_checks_see_the_route_after_any_prefix(path, root_path):
    from serve_app.config import RouterSettings
    from serve_app.http.middleware import AccessControl, Gate

    async def app(scope, receive, send):  # reached only when the middleware lets the call through
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    keys = parse_keys(f"app:{hash_key('predict-key')}:predict,ops:{hash_key('admin-key')}:admin")
    gate = Gate.of(Authenticator(keys), RouterSettings())
    control = AccessControl(app, gate)
    assert _asgi_status(control, path, root_path, {}) == 401
    assert _asgi_status(control, path, root_path, {"X-API-Key": "predict-key"}) == 403  # not an admin
    assert _asgi_status(control, path, root_path, {"X-API-Key": "admin-key"}) == 200
    predict = path.replace("experiments/xgboost/promote", "models").replace("experiments", "models")
    assert _asgi_status(control, predict, root_path, {}) == 401  # authentication is on by default
    assert _asgi_status(control, predict, root_path, {"X-API-Key": "predict-key"}) == 200
