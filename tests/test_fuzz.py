"""schemathesis against the application's own OpenAPI schema: every /api/v1 and /v2 operation, a
bounded number of generated requests each, valid and invalid, on the shared application. No 5xx,
every status and body as the schema declares (V2's 400s included), every deployment healthy
afterwards."""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from serve_app.http import openapi_schema

from .ray_cluster import SERVE_URL

pytestmark = [pytest.mark.ray, pytest.mark.trained]  # every test here uses the single-node application

EXAMPLES = 25  # per operation and mode: about 750 requests in all
ROUTES = r"^/(api/v1|v2)"
SCHEMA = schemathesis.openapi.from_dict(openapi_schema()).include(path_regex=ROUTES)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def test_the_served_schema_is_the_one_fuzzed(serve_app):
    assert requests.get(f"{SERVE_URL}/openapi.json", timeout=30).json() == openapi_schema()


def _takes_input(operation) -> bool:
    return bool(list(operation.iter_parameters())) or bool(list(operation.body))


CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE) for label in sorted(OPERATIONS) if _takes_input(OPERATIONS[label])]


@pytest.mark.parametrize("label, mode", CASES, ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_generated_requests(serve_app, label, mode):
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=SERVE_URL, timeout=60)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:  # every string is a valid path segment: nothing invalid to generate
        assert mode is GenerationMode.NEGATIVE and not list(operation.body)
        pytest.skip("no invalid input exists for this operation's parameters")


def test_every_deployment_healthy_after_fuzzing(serve_app):
    health = requests.get(f"{SERVE_URL}/api/v1/health", timeout=30).json()
    assert health["status"] == "healthy", health
    deployments = serve_app.serve_status()["applications"]["kepler"]["deployments"]
    assert all(d["status"] == "HEALTHY" for d in deployments.values()), deployments


# Values the generator never makes, in every body the service parses: an integer of 400 digits,
# float32 overflow, JSON's non-standard NaN, 10,000-deep nesting, a megabyte string.
HOSTILE_VALUES = {"400-digit integer": "1" + "0" * 400, "1e39": "1e39", "-1e39": "-1e39", "NaN literal": "NaN",
                  "deep nesting": "[" * 10_000 + "]" * 10_000, "1 MB string": '"' + "x" * 1_000_000 + '"'}
ROW_TAIL = ", 1.0" * 35
HOSTILE_BODIES = {  # route -> (body template with {v} the hostile value in a feature's place, field named)
    "/api/v1/predict": ('{"features": [{v}' + ROW_TAIL + '], "model": "xgboost"}', "features"),
    "/api/v1/predict/batch": ('{"instances": [[{v}' + ROW_TAIL + ']], "model": "ensemble"}', "instances"),
    "/api/v1/explain": ('{"features": [{v}' + ROW_TAIL + '], "model": "xgboost"}', "features"),
    "/v2/models/xgboost/infer": ('{"inputs": [{"name": "features", "shape": [1, 36], "datatype": "FP64", '
                                 '"data": [{v}' + ROW_TAIL + ']}]}', "input"),
}


@pytest.mark.parametrize("route", sorted(HOSTILE_BODIES))
@pytest.mark.parametrize("value", sorted(HOSTILE_VALUES))
def test_values_the_generator_never_makes_get_a_4xx_naming_the_field(serve_app, route, value):
    template, field = HOSTILE_BODIES[route]
    body = template.replace("{v}", HOSTILE_VALUES[value]).encode()
    response = requests.post(f"{SERVE_URL}{route}", data=body, headers={"Content-Type": "application/json"},
                             timeout=60)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    error = response.json()["error"]  # the field, or the body itself when it is not JSON the parser accepts
    assert field in error or error.startswith("body"), error[:300]


@pytest.mark.parametrize("path", ["/api/v1/koi/" + "9" * 400, "/api/v1/koi/K" + "0" * 5000 + ".01",
                                  "/api/v1/kois?prefix=" + "%00" * 100, "/api/v1/candidates?top=" + "9" * 400,
                                  "/api/v1/koi/%ED%A0%80"])
def test_hostile_names_and_numbers_in_paths_and_queries_get_a_4xx(serve_app, path):
    response = requests.get(f"{SERVE_URL}{path}", timeout=60)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["error"]
