"""The session-wide check on every answer the serving tests read, without Ray: it finds the
probabilities wherever an answer carries them and refuses rows that are not distributions."""
from __future__ import annotations

import math

import pytest

from .answer_checks import BadProbabilities, check_answer

GOOD = {"CONFIRMED": 0.2, "CANDIDATE": 0.3, "FALSE_POSITIVE": 0.5}


def test_it_finds_rest_batch_ensemble_and_v2_probabilities():
    rest = {"prediction": "CANDIDATE", "probabilities": GOOD}
    batch = {"predictions": [rest, rest], "members": {"xgboost": {"probabilities": GOOD}}}
    v2 = {"outputs": [{"name": "probabilities", "shape": [2, 3], "datatype": "FP32", "data": [0.2, 0.3, 0.5] * 2},
                      {"name": "labels", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    assert check_answer(rest) == 1 and check_answer(batch) == 3 and check_answer(v2) == 2


@pytest.mark.parametrize("row", [
    {**GOOD, "CONFIRMED": 0.2 + 2e-6},  # sums to 1 + 2e-6
    {**GOOD, "CONFIRMED": math.nan},
    {**GOOD, "CONFIRMED": math.inf},
    {"CONFIRMED": -0.5, "CANDIDATE": 1.0, "FALSE_POSITIVE": 0.5},
    {**GOOD, "CONFIRMED": "0.2"},
    {},
])
def test_it_refuses_rows_that_are_not_distributions(row):
    with pytest.raises(BadProbabilities):
        check_answer({"predictions": [{"probabilities": GOOD}, {"probabilities": row}]})
    with pytest.raises(BadProbabilities):
        check_answer({"outputs": [{"name": "probabilities", "shape": [1, 3], "data": list(row.values()) or [0.1]}]})


def test_only_the_routes_that_answer_with_probabilities_are_checked():
    from .answer_checks import ANSWERING

    answering = ["/api/v1/predict", "/api/v1/predict/batch", "/api/v1/explain", "/api/v1/koi/K00752.01",
                 "/api/v1/candidates?top=3", "/v2/models/xgboost/infer", "/v2/models/xgboost/versions/1.0.0/infer",
                 "/kepler/api/v1/predict"]
    others = ["/openapi.json", "/api/v1/schema", "/api/v1/models", "/api/v1/health", "/v2/models/xgboost",
              "/api/v1/experiments", "/docs"]
    assert all(ANSWERING.match(p) for p in answering) and not any(ANSWERING.match(p) for p in others)
