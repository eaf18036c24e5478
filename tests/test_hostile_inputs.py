"""Hostile values, generated, against every Ray-free layer a request's input passes through: the
REST request schemas and their feature rows, V2 tensor decoding, KOI names and suggestions,
credentials (API keys, JWT bearer tokens) and explain requests, each alone (through the HTTP app
with fake models: tests/test_hostile_http.py).

The property, for every layer: it accepts and answers a finite, valid result, or it raises the
project's own client error (BadRequest, NotFoundError, RowError, V2Error, MalformedName,
UnknownKOI, AuthError 401/403) or a pydantic ValidationError, which the HTTP layer answers with a
4xx naming the field; never any other exception, and over HTTP never a 5xx.

Bodies are parsed as FastAPI parses them (`Request.json()`, the standard library's json.loads,
which takes NaN, Infinity and -Infinity, keeps the last of duplicate keys, refuses integers of
over 4,300 digits and raises RecursionError on deep nesting), so raw JSON text goes through the
app itself. Examples are derandomized: every run tries the same inputs."""
from __future__ import annotations

import asyncio
import math
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from runtimes.catalogue import MalformedName, UnknownKOI
from runtimes.schema import KNOWN_FEATURES
from serve_app import v2 as codec
from serve_app.auth import SCOPES, AuthError, Authenticator, JwtVerifier, Principal, hash_key, parse_keys
from serve_app.errors import BadRequest, NotFoundError
from serve_app.feature_rows import FLOAT32_MAX, WIDTHS as ROW_WIDTHS, FeatureRows, RowError, parse_rows
from serve_app.http.errors import first_problem
from serve_app.koi import KOIService
from serve_app.schemas import BatchPredictRequest, ExplainRequest, PredictRequest

from .conftest import JwtIssuer
from .test_suggest import small_catalogue

HOSTILE = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(HOSTILE, max_examples=150)  # through the app: a few ms each
JSON = {"content-type": "application/json"}
REST_FIELDS = {"features", "instances", "koi", "kois", "model", "version", "return_all_models",
               "return_probabilities"}
V2_FIELDS = {"inputs", "outputs", "parameters", "id", "features"}  # "features": the input tensor's own name
DEPTH = 10_000
WIDTHS = tuple(ROW_WIDTHS)  # 36 (the table features), 69 (with the diagnostics)


# ---- values --------------------------------------------------------------------------------
FLOAT32_ABOVE = float(np.nextafter(FLOAT32_MAX, math.inf))  # the first float64 beyond float32's range
EDGES = [FLOAT32_MAX, -FLOAT32_MAX, int(FLOAT32_MAX), FLOAT32_ABOVE, 3.4028235e38, 1e39, -1e39, 1e308,
         -1e308, 5e-324, -0.0, 2 ** 128, -(2 ** 128), 2 ** 1024, 10 ** 400, -(10 ** 400),
         math.nan, -math.nan, math.inf, -math.inf]
# Integers of 5,001 digits, built when drawn: repr() refuses them (over 4,300 digits), so they may not
# sit in a strategy's own repr.
huge = st.builds(lambda sign: sign * 10 ** 5000, st.sampled_from([1, -1]))
numbers = st.one_of(st.sampled_from(EDGES), huge, st.floats(), st.floats(-FLOAT32_MAX, FLOAT32_MAX),
                    st.integers(-2 ** 70, 2 ** 70), st.integers(-10 ** 400, 10 ** 400))
not_numbers = st.one_of(st.booleans(), st.text(max_size=20), st.just(""), st.just("1e5"), st.just("NaN"),
                        st.just([]), st.just({}), st.lists(st.floats(), max_size=2),
                        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
hostile_values = st.one_of(numbers, not_numbers, st.none())
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30),
                         st.sampled_from(["", "\x00", "\ud800", "\udfff\ud800", "é" * 300, "K00752.01"]),
                         st.builds(lambda: "x" * 70_000))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def finite_row(width: int):
    return st.lists(st.floats(-1e6, 1e6), min_size=width, max_size=width)


def spoiled(base, replacements):
    """A row whose positions (modulo its length) are replaced by generated values."""
    row = list(base)
    for position, value in replacements:
        if row:
            row[position % len(row)] = value
    return row


positional_rows = st.one_of(
    st.builds(spoiled, st.sampled_from(WIDTHS).flatmap(finite_row),
              st.lists(st.tuples(st.integers(0, 68), st.one_of(numbers, st.none())), max_size=3)),
    st.lists(st.one_of(numbers, st.none()), max_size=75))
named_rows = st.dictionaries(st.one_of(st.sampled_from(KNOWN_FEATURES), st.text(max_size=12)),
                             st.one_of(numbers, st.none(), st.floats(-1e6, 1e6)), max_size=8)
rows_as_sent = st.lists(st.one_of(positional_rows, named_rows), min_size=1, max_size=4)


def within_float32(value) -> bool:
    if value is None:
        return True
    try:
        return math.isfinite(float(value)) and abs(float(value)) <= FLOAT32_MAX
    except OverflowError:
        return False


def row_is_valid(row) -> bool:
    if isinstance(row, dict):
        return all(name in KNOWN_FEATURES for name in row) and all(map(within_float32, row.values()))
    return len(row) in WIDTHS and all(map(within_float32, row))


def names_a_field(message: str, allowed: set[str]) -> bool:
    """The message begins with the field(s) it is about ("instances[2]: ...", "koi or features: ...",
    "input 'features': ...") before its first ': '."""
    head = message.split(": ", 1)[0]
    if re.fullmatch(r"input ['\"].*", head, re.DOTALL):  # V2: the tensor, by its name
        return True
    parts = re.split(r",\s*|\s+or\s+", head)
    return all(re.match(r"[^.\[]*", part)[0] in allowed for part in parts)


def check_rows(parsed: FeatureRows, rows: list) -> None:
    """Finite float32 values within range; NaN exactly where a value is missing or was not sent."""
    values = parsed.values
    assert values.dtype == np.float32 and values.shape == (len(rows), len(KNOWN_FEATURES))
    present = values[~np.isnan(values)]
    assert np.isfinite(present).all() and (np.abs(present) <= FLOAT32_MAX).all()
    for i, row in enumerate(rows):
        sent = dict(row) if isinstance(row, dict) else dict(zip(KNOWN_FEATURES, row))
        missing = {name for name in KNOWN_FEATURES if sent.get(name) is None}
        assert {KNOWN_FEATURES[j] for j in np.flatnonzero(np.isnan(values[i]))} == missing


# ---- feature rows and the REST schemas ---------------------------------------------------------
@HOSTILE
@given(rows=rows_as_sent)
@example(rows=[[10 ** 5000] + [1.0] * 35])  # repr() of an integer of over 4,300 digits raises ValueError
@example(rows=[{"koi_period": -(10 ** 5000)}])
@example(rows=[[1.0] * 36, [1.0] * 35 + [FLOAT32_ABOVE]])
@example(rows=[[FLOAT32_MAX] * 69, {"koi_kepmag": int(FLOAT32_MAX)}])
def test_feature_rows_are_finite_float32_or_a_row_error_naming_the_row(rows):
    try:
        parsed = parse_rows(rows)
    except RowError as e:
        event("refused")
        assert 0 <= e.row < len(rows) and not row_is_valid(rows[e.row]), (e.row, str(e))
        assert isinstance(str(e), str) and len(str(e)) < 1000
        return
    event("accepted")
    assert all(row_is_valid(row) for row in rows)
    check_rows(parsed, rows)


def rest_bodies(fields: list[str]):
    """Request bodies mixing well-formed and hostile values for the schema's fields, with extras."""
    koi_names = st.one_of(st.sampled_from(["K00752.01", "Kepler-227 b", "10797460", 10797460]), json_scalars)
    candidates = {
        "features": st.one_of(positional_rows, named_rows, json_values),
        "instances": st.one_of(rows_as_sent, st.just([]), json_values),
        "koi": koi_names, "kois": st.one_of(st.lists(koi_names, max_size=3), json_values),
        "model": st.one_of(st.sampled_from(["auto", "ensemble", "xgboost", "keras_cnn", "random_forest"]),
                           json_scalars),
        "version": st.one_of(st.sampled_from(["1.0.0", "stable", "latest", "1.0", "01.0.0", "9" * 400 + ".0.0"]),
                             json_scalars),
        "return_all_models": json_scalars, "return_probabilities": json_scalars,
    }
    extras = st.dictionaries(st.text(alphabet=st.characters(blacklist_characters=":.[,"), max_size=10),
                             json_values, max_size=2)
    hostile = st.tuples(st.fixed_dictionaries({}, optional={f: candidates[f] for f in fields}), extras).map(
        lambda pair: {**pair[1], **pair[0]})
    # Nearly right: one way of giving rows, a known model and version, a value or two spoiled at most.
    given_rows = [f for f in ("features", "instances") if f in fields]
    nearly = st.sampled_from(given_rows).flatmap(lambda field: st.fixed_dictionaries(
        {field: positional_rows if field == "features" else st.lists(positional_rows, min_size=1, max_size=3)},
        optional={"model": st.sampled_from(["auto", "ensemble", "xgboost"]),
                  "version": st.sampled_from(["1.0.0", "stable", "latest"])}))
    return st.one_of(nearly, hostile)


SCHEMAS = {
    PredictRequest: ["features", "koi", "model", "version", "return_all_models", "return_probabilities"],
    BatchPredictRequest: ["instances", "kois", "model", "version", "return_all_models", "return_probabilities"],
    ExplainRequest: ["features", "instances", "koi", "kois", "model", "version"],
}


@pytest.mark.parametrize("schema", list(SCHEMAS), ids=lambda s: s.__name__)
def test_rest_schemas_validate_to_finite_rows_or_a_validation_error_naming_the_field(schema):
    @HOSTILE
    @given(body=rest_bodies(SCHEMAS[schema]))
    @example(body={"features": [10 ** 5000] * 36})
    @example(body={"instances": [[1.0] * 36, {"koi_period": 10 ** 5000}]})
    @example(body={"features": [True] * 36, "instances": [[False] * 69]})
    @example(body={"features": [None] * 35 + [1e39], "version": "x" * 100_000})
    def run(body):
        try:
            request = schema.model_validate(body)
        except ValidationError as e:
            event("refused")
            message = first_problem(e.errors())
            assert names_a_field(message, REST_FIELDS | set(body) | {"body"}), message
            return
        event("accepted")
        rows = request.rows()
        if rows is not None:
            sent = [body["features"]] if body.get("features") is not None else body["instances"]
            check_rows(rows, sent)

    run()


# ---- V2 tensors ----------------------------------------------------------------------------
def tensors():
    def well_shaped(n_width):
        n, width = n_width
        flat = st.builds(spoiled, finite_row(n * width),
                         st.lists(st.tuples(st.integers(0, n * width), hostile_values), max_size=2))
        nested = flat.map(lambda values: [values[i * width:(i + 1) * width] for i in range(n)])
        return st.fixed_dictionaries({"shape": st.just([n, width]), "data": st.one_of(flat, nested)})

    shaped = st.tuples(st.integers(1, 3), st.sampled_from(WIDTHS)).flatmap(well_shaped)
    hostile_ints = st.one_of(st.sampled_from([0, -1, 36, 69, 1001, 10 ** 400, 2 ** 63]), huge, st.integers())
    odd = st.fixed_dictionaries({"shape": st.one_of(st.lists(hostile_ints, max_size=4), json_values),
                                 "data": st.one_of(st.lists(hostile_values, max_size=80), json_values)})
    return st.tuples(st.one_of(shaped, odd), st.fixed_dictionaries(
        {"name": st.one_of(st.just("features"), json_scalars),
         "datatype": st.one_of(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "fp32", ""]), json_scalars)},
        optional={"parameters": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            codec.MISSING: st.one_of(hostile_values, st.sampled_from([-999.0, 0, 1e39, 10 ** 400]))}), json_values)}),
    ).map(lambda pair: {**pair[1], **pair[0]})


nearly_right_tensors = st.tuples(st.integers(1, 3), st.sampled_from(WIDTHS)).flatmap(
    lambda n_width: st.fixed_dictionaries({
        "name": st.just("features"), "datatype": st.sampled_from(["FP32", "FP64"]), "shape": st.just(list(n_width)),
        "data": st.builds(spoiled, finite_row(n_width[0] * n_width[1]),
                          st.lists(st.tuples(st.integers(0, 200), numbers), max_size=2))},
        optional={"parameters": st.fixed_dictionaries({codec.MISSING: st.sampled_from([-999.0, 0, 1e39])})}))
nearly_right_requests = st.fixed_dictionaries(
    {"inputs": st.lists(nearly_right_tensors, min_size=1, max_size=1)},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(codec.OUTPUTS)}), max_size=2)})
hostile_requests = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensors(), min_size=1, max_size=2), st.just([]), json_values)},
    optional={"parameters": st.one_of(st.fixed_dictionaries({}, optional={codec.MISSING: hostile_values}),
                                      json_values),
              "outputs": st.one_of(st.lists(st.fixed_dictionaries({"name": st.one_of(
                  st.sampled_from(codec.OUTPUTS + codec.EXPLANATION_OUTPUTS), json_scalars)}), max_size=3),
                  json_values),
              "id": json_scalars})
infer_requests = st.one_of(nearly_right_requests, hostile_requests)


def deep(depth: int, leaf=1.0) -> list:
    nested: list = [leaf]
    for _ in range(depth):
        nested = [nested]
    return nested


@HOSTILE
@given(body=infer_requests)
@example(body={"inputs": [{"name": "features", "shape": [1, 10 ** 5000], "datatype": "FP32", "data": [1.0]}]})
@example(body={"inputs": [{"name": "features", "shape": [10 ** 5000, 36], "datatype": "FP32", "data": [1.0]}]})
@example(body={"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": [1.0] * 36,
                           "parameters": {codec.MISSING: 10 ** 5000}}]})
@example(body={"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP64", "data": deep(DEPTH)}]})
@example(body={"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32",
                           "data": [FLOAT32_ABOVE] + [1.0] * 35}]})
@example(body={"inputs": [{"name": "\ud800" + "x" * 100_000, "shape": [1, 36], "datatype": "X", "data": []}]})
def test_v2_tensors_decode_to_a_finite_float32_matrix_or_a_v2_error(body):
    try:
        request = codec.InferRequest.model_validate(body)
    except ValidationError as e:
        assert names_a_field(first_problem(e.errors()), V2_FIELDS | set(body) | {"body"}), first_problem(e.errors())
        return
    for model in ("xgboost", "ensemble"):
        try:
            outputs = codec.requested_outputs(request, model)
        except codec.V2Error as e:
            assert str(e).startswith("outputs: "), str(e)
        else:
            assert outputs and set(outputs) <= set(codec.OUTPUTS + codec.EXPLANATION_OUTPUTS)
    try:
        matrix = codec.decode(request, 1000)
    except codec.V2Error as e:
        event("refused by decode")
        assert names_a_field(str(e), V2_FIELDS) and len(str(e)) < 1000, str(e)[:200]
        str(e).encode("utf-8")  # what the answer's JSON carries (no lone surrogate echoed back)
        return
    event("decoded")
    shape = request.inputs[0].shape
    assert matrix.dtype == np.float32 and matrix.shape == tuple(shape) and shape[1] in WIDTHS
    present = matrix[~np.isnan(matrix)]
    assert np.isfinite(present).all() and (np.abs(present) <= FLOAT32_MAX).all()
    if np.isnan(matrix).any():  # only a value equal to the missing_value parameter is missing
        assert codec._missing_value(request) is not None


# ---- KOI names -----------------------------------------------------------------------------
CATALOGUE = small_catalogue()
koi_forms = st.one_of(
    st.from_regex(r"(?:[kK]|[kK][oO][iI][-\s]?)?\d{1,5}\.\d{2}", fullmatch=True),
    st.from_regex(r"[kK]epler[-\s]?\d{1,5}\s*[a-zA-Z]?\s*[a-zA-Z]", fullmatch=True),
    st.from_regex(r"(?:KIC[-\s]?)?\d{1,10}", fullmatch=True),
    st.sampled_from(["K00752.01", " koi 752.01 ", "Kepler-410 A b", "10797460", "KIC 10797460", "٧٥٢.٠١",
                     "K00752.01\n", "k" * 65]), st.builds(lambda: "K" * 10 ** 5),
    st.integers(-10 ** 400, 10 ** 400), st.sampled_from([10797460, 0, -1, 10 ** 9, True]), huge,
    json_scalars, json_values)


@HOSTILE
@given(name=koi_forms)
@example(name=10 ** 5000)
@example(name=deep(DEPTH, "K00752.01"))
def test_koi_names_resolve_to_catalogue_kois_or_are_refused_briefly(name):
    try:
        kois = CATALOGUE.resolve(name)
    except (MalformedName, UnknownKOI) as e:
        assert len(str(e)) < 500, str(e)[:200]
    else:
        assert kois and set(kois) <= set(CATALOGUE.names)
    service = KOIService(registry=None)
    service._catalogue = CATALOGUE
    try:
        catalogue, kois = asyncio.run(service.resolve([name, "K00752.01"], "kois"))
    except (BadRequest, NotFoundError) as e:
        assert e.message.startswith("kois[0]: "), e.message
    else:
        assert set(kois) <= set(catalogue.names)


@HOSTILE
@given(prefix=st.one_of(koi_forms, st.text(max_size=70)), limit=st.one_of(st.integers(-5, 60), json_scalars))
@example(prefix="K", limit=10 ** 5000)
@example(prefix="kepler-" + "9" * 60, limit=True)
def test_suggestions_never_raise_and_stay_within_limit(prefix, limit):
    found = CATALOGUE.suggest(prefix, limit)
    assert isinstance(found, list) and all(match["koi"] in CATALOGUE.names for match in found)
    if found:
        assert isinstance(limit, int) and not isinstance(limit, bool) and len(found) <= limit


# ---- credentials ---------------------------------------------------------------------------
ISSUER = JwtIssuer()
OTHER_KEY = JwtIssuer().key  # an Ed25519 key the service does not trust
AUTH = Authenticator(parse_keys(f"app:{hash_key('k1')}:predict,ops:{hash_key('k2')}:admin"),
                     JwtVerifier(ISSUER.public_pem.encode(), audience=ISSUER.AUDIENCE, issuer=ISSUER.ISSUER))
segments = st.one_of(st.text(max_size=40), st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789-_=",
                                                   max_size=60))
presented = st.one_of(
    st.text(), st.sampled_from(["k1", "k2", "", " ", "Bearer", "bearer k1", "\ud800", "é" * 10_000, "x" * 9000]),
    st.builds(lambda prefix, secret: prefix + secret, st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Basic "]),
              st.one_of(st.text(), st.lists(segments, min_size=3, max_size=3).map(".".join))),
    st.binary(max_size=40), st.none(), st.integers(), st.lists(st.text(), max_size=2))


@HOSTILE
@given(authorization=presented, api_key=presented, scope=st.sampled_from(SCOPES))
@example(authorization="Bearer " + ".".join(["A" * 3000] * 3), api_key=None, scope="predict")
@example(authorization="Bearer \ud800.\udfff.x", api_key="\x00", scope="admin")
def test_any_presented_credential_is_a_principal_or_a_401_or_403(authorization, api_key, scope):
    headers = {k: v for k, v in (("authorization", authorization), ("x-api-key", api_key)) if v is not None}
    try:
        principal = AUTH.authorize(headers, scope)
    except AuthError as e:
        assert e.status in (401, 403) and isinstance(e.message, str)
    else:
        assert isinstance(principal, Principal) and scope in principal.scopes
        assert AUTH.presented(headers) in ("k1", "k2")  # no made-up string is a key, nor a token


ALGS = ["EdDSA", "RS256", "HS256", "none", "ES256", "", "eddsa"]
claim_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=3),
                         st.dictionaries(st.text(max_size=5), json_scalars, max_size=2))
times = st.one_of(st.floats(-1e10, 1e10), st.integers(-10 ** 400, 10 ** 400),
                  st.sampled_from([math.inf, -math.inf, math.nan, "tomorrow", None, [1], True]))


GENUINE = {"alg": "EdDSA", "own_key": True, "exp": "valid", "iss": JwtIssuer.ISSUER, "aud": JwtIssuer.AUDIENCE,
           "scope": "predict"}


@HOSTILE
@given(alg=st.one_of(st.sampled_from(ALGS), st.text(max_size=10)), own_key=st.booleans(),
       exp=st.one_of(times, st.sampled_from(["expired", "valid"])),
       iss=st.one_of(st.sampled_from([JwtIssuer.ISSUER, None, "https://other.test"]), claim_values),
       aud=st.one_of(st.sampled_from([JwtIssuer.AUDIENCE, [JwtIssuer.AUDIENCE], None, "other"]), claim_values),
       extra=st.dictionaries(st.sampled_from(["sub", "scope", "scopes", "nbf", "iat", "jti"]),
                             st.one_of(claim_values, times, st.just(deep(900))), max_size=3),
       genuine=st.sets(st.sampled_from(sorted(GENUINE))))
@example(alg="EdDSA", own_key=True, exp="expired", iss=JwtIssuer.ISSUER, aud=JwtIssuer.AUDIENCE, extra={},
         genuine=set())
@example(alg="EdDSA", own_key=True, exp="valid", iss=JwtIssuer.ISSUER, aud=JwtIssuer.AUDIENCE,
         extra={"sub": deep(900), "scope": "predict admin x"}, genuine=set())
@example(alg="HS256", own_key=True, exp="valid", iss=JwtIssuer.ISSUER, aud=JwtIssuer.AUDIENCE, extra={},
         genuine=set())
def test_signed_tokens_with_hostile_claims_are_principals_only_when_genuine(alg, own_key, exp, iss, aud, extra,
                                                                              genuine):
    """`genuine`: the parts given their right value (the issuer's key and alg, its name, the audience,
    an expiry to come), so that some tokens are entirely right and the rest wrong in few ways."""
    values = {"alg": alg, "own_key": own_key, "exp": exp, "iss": iss, "aud": aud} | {k: GENUINE[k] for k in genuine}
    alg, own_key, exp, iss, aud = (values[k] for k in ("alg", "own_key", "exp", "iss", "aud"))
    now = time.time()
    exp = {"expired": now - 3600, "valid": now + 3600}.get(exp, exp) if isinstance(exp, str) else exp
    claims = {"exp": exp, "iss": iss, "aud": aud, **extra} | ({"scope": "predict"} if "scope" in genuine else {})
    try:
        token = ISSUER.token(key=None if own_key else OTHER_KEY, alg=alg, **claims)
    except ValueError:  # json.dumps of the claims refuses them (an integer of over 4,300 digits)
        return
    try:
        principal = AUTH.authorize({"authorization": f"Bearer {token}"}, "predict")
    except AuthError as e:
        event(f"refused: {e.status}")
        assert e.status in (401, 403) and isinstance(e.message, str)
        return
    event("accepted")
    assert own_key and alg == "EdDSA" and iss == JwtIssuer.ISSUER  # only the issuer's own key, alg and name
    assert isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp > now - 60
    assert principal.name.startswith("jwt:") and principal.scopes <= set(SCOPES) and "predict" in principal.scopes
