"""Hostile values through the HTTP app with fake models (no Ray): generated bodies, raw number
spellings and duplicate keys, nesting, KOI routes and header bytes never get a 5xx, and every 4xx
names the field. The values and the layer-by-layer properties are in tests/test_hostile_inputs.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from runtimes.explanation import Explanation
from serve_app.explaining import Explainer
from serve_app.http import build_http_app
from serve_app.koi import KOIService

from .test_hostile_inputs import (AUTH, CATALOGUE, DEPTH, FEW, JSON, REST_FIELDS, V2_FIELDS, infer_requests,
                                  json_values, koi_forms, names_a_field, rest_bodies)
from .test_http_layer import FakeIngress, call, gate_with
from .test_suggest import get


# ---- through the HTTP app ------------------------------------------------------------------
def _explain_call(model: str, version: str, rows: np.ndarray, request_id: str) -> Explanation:
    n, width = rows.shape
    probabilities = np.tile([0.5, 0.3, 0.2], (n, 1))
    values = np.zeros((n, 3, width))
    base = probabilities.copy()
    return Explanation("tree_shap", "probability", tuple(f"f{i}" for i in range(width)), values, base,
                       probabilities, probabilities, rows.astype(np.float64), {})


class HostileIngress(FakeIngress):
    """FakeIngress with what the explain, KOI and catalogue routes also ask for."""

    def __init__(self, **settings):
        super().__init__(**settings)

        async def explain_call(*args):
            return _explain_call(*args)

        self.explainer = Explainer(self.dispatcher, explain_call)
        self.kois = KOIService(self.registry)
        self.kois._catalogue = CATALOGUE
        self.gate = gate_with()
        self.configured_defaults = {m: "stable" for m in self.models}

    async def describe(self, name, version):
        return {"checksums": {}, "load_time_s": 0.0}


def _app(gate=None):
    ingress = HostileIngress()
    if gate is not None:
        ingress.gate = gate
    return build_http_app(ingress, ingress.gate)


APP = _app()
SECURED_GATE = gate_with(AUTH.keys, auth={"enabled": True})
SECURED_GATE.auth = AUTH  # the API keys and the JWT verifier
SECURED = _app(SECURED_GATE)
ROUTES = {"/api/v1/predict": REST_FIELDS, "/api/v1/predict/batch": REST_FIELDS,
          "/api/v1/explain": REST_FIELDS, "/v2/models/xgboost/infer": V2_FIELDS,
          "/v2/models/ensemble/infer": V2_FIELDS}
# Number spellings, JSON's and not: the parser takes some (NaN, Infinity), refuses the rest.
TOKENS = ["NaN", "-NaN", "+NaN", "nan", "Infinity", "-Infinity", "+Infinity", "inf", "-inf", "1e400", "-1e400",
          "1E39", "-1e39", "3.4028235e38", "3.4028234663852886e38", "9" * 400, "-" + "9" * 400, "9" * 5000,
          "0x10", "01", "1.", ".5", "1e", "true", "null", '"1"', "[]", "{}", "1_000"]


def assert_client_answer(status: int, body: dict, allowed: set[str]) -> None:
    assert status < 500, body
    if status >= 400:
        assert isinstance(body.get("error"), str) and body["error"], body
    if status in (400, 422):
        assert names_a_field(body["error"], allowed | {"body"}), body["error"][:300]


def body_text(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()  # NaN and Infinity as the tokens Python's parser takes


@FEW
@given(route=st.sampled_from(sorted(ROUTES)),
       body=st.one_of(rest_bodies(["features", "instances", "koi", "kois", "model", "version", "return_all_models"]),
                      infer_requests, json_values))
@example(route="/v2/models/xgboost/infer",  # a lone surrogate echoed in the message failed the answer's UTF-8
         body={"inputs": [{"name": "\ud800", "shape": [1, 36], "datatype": "INT8", "data": []}]})
@example(route="/api/v1/predict", body={"features": {"\udfff": "x"}, "\ud800": 1})
def test_generated_bodies_are_never_answered_with_a_5xx(route, body):
    try:
        raw = body_text(body)
    except ValueError:  # an integer of over 4,300 digits: no JSON text holds one that the parser takes
        return
    status, _, answer = call(APP, "POST", route, raw, JSON)
    allowed = ROUTES[route] | (set(body) if isinstance(body, dict) else set())
    assert_client_answer(status, answer, allowed)


@FEW
@given(route=st.sampled_from(sorted(ROUTES)), token=st.sampled_from(TOKENS), position=st.integers(0, 35),
       duplicate=st.booleans())
def test_raw_number_spellings_and_duplicate_keys_are_never_answered_with_a_5xx(route, token, position, duplicate):
    values = ["1"] * 36
    values[position] = token
    row = "[" + ", ".join(values) + "]"
    if route.startswith("/v2"):
        tensor = f'{{"name": "features", "shape": [1, 36], "datatype": "FP32", "data": {row}}}'
        text = f'{{"inputs": [{tensor}], "inputs": [{tensor}]}}' if duplicate else f'{{"inputs": [{tensor}]}}'
    elif route.endswith("batch"):
        text = f'{{"instances": [{row}], "instances": [{row}, {row}]}}' if duplicate else f'{{"instances": [{row}]}}'
    else:
        text = f'{{"features": [], "features": {row}}}' if duplicate else f'{{"features": {row}}}'
    status, _, answer = call(APP, "POST", route, text.encode(), JSON)
    assert_client_answer(status, answer, ROUTES[route])
    if token in ("NaN", "Infinity", "-Infinity", "1e400", "1E39", "-1e39", "3.4028235e38", "9" * 400):
        assert status in (400, 422)  # parsed, then refused: outside float32's range
        assert "float32" in answer["error"] or "finite" in answer["error"], answer


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a": ' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("route, template", [
    ("/api/v1/predict", b'{"features": %s}'), ("/api/v1/predict", b'{"features": {"koi_period": %s}}'),
    ("/api/v1/predict/batch", b'{"instances": [%s]}'), ("/api/v1/predict", b'{"koi": %s}'),
    ("/api/v1/explain", b'{"kois": %s}'), ("/api/v1/predict", b'{"model": "xgboost", "version": %s}'),
    ("/v2/models/xgboost/infer", b'{"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP32", '
                                 b'"data": %s}]}'),
    ("/v2/models/xgboost/infer", b'{"inputs": [], "parameters": %s}'), ("/api/v1/predict", b"%s"),
])
def test_nesting_ten_thousand_deep_is_invalid_json_and_shallower_nesting_a_named_field(route, template, kind):
    status, _, answer = call(APP, "POST", route, template % _nested(DEPTH, kind), JSON)
    assert status == (400 if route.startswith("/v2") else 422) and answer["error"].startswith("body: not valid JSON")
    status, _, answer = call(APP, "POST", route, template % _nested(600, kind), JSON)  # parsed: each layer refuses it
    assert_client_answer(status, answer, ROUTES[route] | {"a"})
    assert 400 <= status < 500


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no URL can carry it
        return False
    return True


@FEW
@given(name=st.one_of(koi_forms.filter(lambda n: isinstance(n, str)), st.text(max_size=80)),
       prefix=st.text(max_size=80), limit=st.one_of(st.integers(-3, 60), st.text(max_size=5)))
@example(name="%00", prefix="\ud7ff", limit="1e400")
def test_koi_routes_answer_or_refuse_with_a_4xx(name, prefix, limit):
    if name and not set(name) & set("/?#") and name.isprintable() and _utf8(name):  # one path segment
        status, _, answer = call(APP, "GET", "/api/v1/koi/" + name)
        assert status in (200, 404, 422) and (status == 200 or answer["error"].startswith("name: ")), answer
    try:
        status, answer = get(APP, "/api/v1/kois", {"prefix": prefix, "limit": limit})
    except UnicodeEncodeError:  # a lone surrogate cannot travel in a URL at all
        return
    assert status in (200, 422), answer
    if status == 200:
        assert len(answer["matches"]) <= int(limit)


@FEW
@given(authorization=st.binary(max_size=60), api_key=st.binary(max_size=60),
       route=st.sampled_from(["/api/v1/predict", "/api/v1/experiments", "/v2/models/xgboost/infer"]))
@example(authorization=b"Bearer \xff\xfe.\x00.\x80", api_key=b"k1\xff", route="/api/v1/predict")
def test_any_header_bytes_are_a_401_or_403_before_the_body_is_read(authorization, api_key, route):
    status, _, _ = call(SECURED, "POST", route, b"{}", {"authorization": authorization, "x-api-key": api_key})
    if {authorization.removeprefix(b"Bearer ").strip(), api_key} & {b"k1", b"k2"}:
        assert status < 500  # a real key: the request goes on
    else:
        assert status in (401, 403), (status, authorization, api_key)
