"""The explanation stage without Ray: versions and schemas as for predictions, no experiment
statistics, the ensemble's members side by side, failures as domain errors, the JSON the route
answers, V2's contributions output and the rate-limit cost."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtimes.ensemble import EnsembleRecord
from runtimes.explanation import Explanation
from runtimes.feature_labels import display_name
from runtimes.schema import LABELS
from serve_app import v2 as codec
from serve_app.access import TokenBuckets
from serve_app.auth import Authenticator, Principal
from serve_app.config import RouterSettings
from serve_app.errors import BreakerOpen, ModelUnavailable, NotFoundError, ReplicaGone
from serve_app.explaining import Explainer, explain_cost
from serve_app.feature_rows import FeatureRows
from serve_app.http.explain import member_explanation, row_explanation
from serve_app.http.middleware import Gate

from .test_dispatcher import ANSWER, CTX, make

RECORD = EnsembleRecord(version="2.1.0", members=["random_forest", "xgboost"],
                        weights={"random_forest": 0.25, "xgboost": 0.75},
                        temperatures={"random_forest": 0.5, "xgboost": 2.0}, method="test",
                        excluded={"keras_cnn": "not fitted"})


class FakeExplanations:
    """The injected explain call: attributions that add up to each family's fixed answer."""

    def __init__(self):
        self.cue: list[str] = []
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(self, model: str, version: str, rows: np.ndarray, request_id: str) -> Explanation:
        self.calls.append((model, version, rows.shape[1]))
        behaviour = self.cue.pop(0) if self.cue else "ok"
        if behaviour == "fail":
            raise RuntimeError("boom")
        if behaviour == "die":
            raise ReplicaGone("ActorDiedError")
        if behaviour == "hang":
            await asyncio.Event().wait()
        if behaviour == "unknown":
            raise NotFoundError(f"{model} has no version {version}")
        n, width = rows.shape
        probabilities = np.tile(np.asarray(ANSWER[model], dtype=np.float64), (n, 1))
        base = np.full((n, 3), 1 / 3)
        values = np.zeros((n, 3, width))
        values[:, :, 0] = (probabilities - base) * 0.75  # the first feature matters most,
        values[:, :, 1] = (probabilities - base) * 0.25  # the second less, the rest not at all
        features = tuple(f"f{i}" for i in range(width))
        return Explanation("tree_shap", "probability", features, values, base, probabilities, probabilities,
                           rows.astype(np.float64), {"fake": True})


def explainer(**settings):
    dispatcher, registry, _, _ = make(explain_timeout_s=0.2, **settings)
    fake = FakeExplanations()
    return Explainer(dispatcher, fake), dispatcher, registry, fake


def run(coroutine):
    return asyncio.run(coroutine)


def rows(width=36, n=2):
    return FeatureRows.of(np.zeros((n, width), dtype=np.float32))


def test_a_model_explains_its_default_version_and_records_no_experiment_statistics():
    stage, dispatcher, _, fake = explainer(experiments={"xgboost": {"candidate": "1.1.0", "weight": 1.0}})
    dispatcher.traffic.configure(dispatcher.settings.experiments)
    explained = run(stage.explain("xgboost", None, rows(), CTX))
    assert (explained.model, explained.version) == ("xgboost", "1.0.0") and fake.calls == [("xgboost", "1.0.0", 36)]
    assert dispatcher.traffic.recorder.drain() == []
    np.testing.assert_allclose(explained.probabilities[0], ANSWER["xgboost"])


def test_rows_are_projected_onto_the_explained_versions_schema():
    stage, _, _, fake = explainer()
    run(stage.explain("random_forest", "2.0.0", rows(36), CTX))
    assert fake.calls == [("random_forest", "2.0.0", 69)]  # the diagnostics the row lacked: missing
    explained = run(stage.explain("random_forest", "2.0.0", rows(36), CTX))
    assert len(explained.features) == 69


def test_the_route_json_is_sorted_by_magnitude_and_adds_up():
    stage, *_ = explainer()
    explained = run(stage.explain("keras_cnn", None, rows(), CTX))
    body = row_explanation(explained, 1)
    assert body["explained_class"] == "FALSE_POSITIVE" and body["feature_names"][:2] == ["f0", "f1"]
    assert body["feature_labels"][0] == "f0" and len(body["feature_values"]) == 36
    for label in LABELS:
        total = body["base_value"][label] + sum(body["values"][label])
        assert total == pytest.approx(body["output"][label] - body["delta"][label], abs=1e-12)
        assert abs(body["delta"][label]) < 1e-12
    magnitudes = np.abs(body["values"]["FALSE_POSITIVE"])
    assert (np.diff(magnitudes) <= 0).all()


def test_the_ensemble_explains_each_weighted_member_at_its_record_version_and_says_it_is_not_additive():
    stage, _, registry, fake = explainer()
    registry.records[("ensemble", "2.1.0")] = RECORD.to_json()
    registry.aliases[("ensemble", "stable")] = "2.1.0"
    explained = run(stage.explain("ensemble", None, rows(), CTX))
    assert sorted(fake.calls) == [("random_forest", "2.1.0", 69), ("xgboost", "2.1.0", 69)]
    body = row_explanation(explained, 0)
    assert body["additive"] is False and body["method"] == "weighted_members"
    assert body["weights"] == {"random_forest": 0.25, "xgboost": 0.75} and "not additive" in body["note"]
    assert set(body["members"]) == {"random_forest", "xgboost"}
    assert all(m["explained_class"] == body["explained_class"] for m in body["members"].values())
    assert sum(body["output"].values()) == pytest.approx(1.0)


def test_a_failing_member_degrades_the_ensemble_and_every_failure_is_a_domain_error():
    stage, _, registry, fake = explainer()
    fake.cue = ["fail"]
    explained = run(stage.explain("ensemble", None, rows(), CTX))
    assert explained.ensemble.degraded and len(explained.members) == 2
    for cue, error in (("fail", ModelUnavailable), ("hang", ModelUnavailable), ("unknown", NotFoundError)):
        fake.cue = [cue]
        with pytest.raises(error):
            run(stage.explain("xgboost", None, rows(), CTX))
    fake.cue = ["die"]  # a replica dying under the call: asked once more
    assert run(stage.explain("xgboost", None, rows(), CTX)).model == "xgboost"
    fake.cue = ["die", "die"]
    with pytest.raises(ModelUnavailable, match="unavailable"):
        run(stage.explain("xgboost", None, rows(), CTX))


def test_a_model_whose_breaker_is_open_is_not_asked():
    stage, dispatcher, _, fake = explainer()
    breaker = dispatcher.calls.breakers["xgboost"]
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    with pytest.raises(BreakerOpen):
        run(stage.explain("xgboost", None, rows(), CTX))
    assert fake.calls == []


def test_feature_labels_name_the_real_features():
    explanation = run(FakeExplanations()("xgboost", "1.0.0", np.zeros((1, 36)), "r"))
    named = Explanation(**{**explanation.__dict__, "features": ("koi_period",) + explanation.features[1:]})
    body = member_explanation("xgboost", "1.0.0", named, 0)
    assert body["feature_labels"][body["feature_names"].index("koi_period")] == display_name("koi_period")


def test_v2_contributions_have_the_declared_shape_and_the_ensemble_has_none():
    explanation = run(FakeExplanations()("xgboost", "1.0.0", np.ones((2, 36)), "r"))
    request = codec.InferRequest(inputs=[{"name": "features", "shape": [2, 36], "datatype": "FP32",
                                          "data": [1.0] * 72}], outputs=[{"name": "contributions"},
                                                                         {"name": "base_values"}])
    outputs = codec.requested_outputs(request, "xgboost")
    assert codec.wants_explanation(outputs)
    response = codec.encode("xgboost", "1.0.0", "r", explanation.probabilities, outputs, explanation)
    contributions, base = response.outputs
    assert contributions.shape == [2, 3, 36] and len(contributions.data) == 2 * 3 * 36
    assert contributions.parameters["feature_names"][0] == "f0" and base.shape == [2, 3]
    with pytest.raises(codec.V2Error, match="ensemble"):
        codec.requested_outputs(request, "ensemble")
    assert not codec.wants_explanation(codec.requested_outputs(codec.InferRequest(inputs=request.inputs), "xgboost"))


def test_an_explanation_costs_its_families_per_row_and_at_most_a_full_bucket():
    asyncio.run(_costs_and_full_bucket())


async def _costs_and_full_bucket():
    costs = RouterSettings().explain_cost
    assert explain_cost("xgboost", 2, costs) == 2 * costs["xgboost"]
    assert explain_cost("ensemble", 1, costs) == sum(costs.values())
    assert explain_cost("auto", 1, costs) == max(costs.values())
    now = [0.0]
    gate = Gate(Authenticator({}), True, 60, 10_000, buckets=TokenBuckets(clock=lambda: now[0]))
    who = Principal("astronomer", frozenset({"predict"}))
    assert await gate.admit(who) == 0  # the request's own token
    assert await gate.charge(who, 9) == 0  # 50 left
    assert await gate.charge(who, 1000) > 0  # more than is left: wait
    now[0] += 60  # refilled: a call dearer than the bucket still runs, taking all of it
    assert await gate.admit(who) == 0 and await gate.charge(who, 1000) == 0
    assert await gate.charge(who, 1) > 0
    assert await gate.charge(None, 1000) == 0  # authentication off: nothing to limit
