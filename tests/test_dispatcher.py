"""The dispatcher without Ray: its stages, the breaker in front of each deployment, `auto`, the
degraded ensemble and the retry on a dying replica, against fake models that answer, fail, hang
or die on cue."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtimes.schema import FEATURES, WITH_DIAGNOSTICS
from serve_app.config import RouterSettings
from serve_app.dispatcher import Dispatcher, RequestContext
from serve_app.errors import (BadRequest, BreakerOpen, ModelUnavailable, NotFoundError, Overloaded,
                              ReplicaGone)
from serve_app.model_calls import ModelCalls
from serve_app.traffic import Traffic
from serve_app.versions import Versions

MODELS = ["keras_cnn", "xgboost", "random_forest"]
AUC = {"keras_cnn": 0.90, "xgboost": 0.93, "random_forest": 0.92}
ANSWER = {"keras_cnn": [0.2, 0.2, 0.6], "xgboost": [0.7, 0.2, 0.1], "random_forest": [0.4, 0.5, 0.1]}


class Metadata(dict):
    def model_dump(self) -> dict:
        return dict(self)


class FakeRegistry:
    """Aliases and metadata as the real registry serves them; `down` makes every read fail."""

    def __init__(self):
        self.aliases = {(m, "stable"): "1.0.0" for m in MODELS} | {(m, "latest"): "1.1.0" for m in MODELS}
        self.records: dict[tuple[str, str], bytes] = {}  # ("ensemble", version) -> ensemble.json
        self.down = False
        self.archived: set[tuple[str, str]] = set()
        self.archived_reads = 0
        self.reads = 0
        self.metadata_reads = 0

    def resolve(self, model: str, ref: str) -> str:
        from registry import NotFound, RegistryError

        self.reads += 1
        if self.down:
            raise RegistryError("registry unreachable")
        if (model, ref) not in self.aliases:
            raise NotFound(f"{model} has no alias {ref!r}")
        return self.aliases[(model, ref)]

    def is_archived(self, model: str, version: str) -> bool:
        from registry import RegistryError

        self.archived_reads += 1
        if self.down:
            raise RegistryError("registry unreachable")
        return (model, version) in self.archived

    def metadata(self, model: str, version: str) -> Metadata:
        from registry import RegistryError

        self.metadata_reads += 1
        if self.down:
            raise RegistryError("registry unreachable")
        names = WITH_DIAGNOSTICS if version.startswith("2.") else FEATURES  # 2.x: the diagnostics too
        return Metadata(performance={"roc_auc": AUC[model]},
                        input_schema={"features": len(names), "feature_names": list(names)})

    def read_file(self, model: str, version: str, name: str) -> bytes:
        from registry import NotFound

        if (model, version) not in self.records:
            raise NotFound(f"{model} {version} not found")
        return self.records[(model, version)]


class FakeModels:
    """The injected model call: each deployment answers its fixed row, or does what `cue` says."""

    def __init__(self):
        self.cue: dict[str, list[str]] = {}  # deployment -> behaviours for its next calls
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(self, deployment: str, version: str, rows: np.ndarray, request_ids: list[str]) -> np.ndarray:
        self.calls.append((deployment, version, len(rows)))
        behaviour = self.cue.get(deployment, []).pop(0) if self.cue.get(deployment) else "ok"
        if behaviour == "fail":
            raise RuntimeError("model crashed")
        if behaviour == "die":
            raise ReplicaGone("ActorDiedError")
        if behaviour == "hang":
            await asyncio.Event().wait()
        if behaviour == "overloaded":
            raise Overloaded(f"{deployment} is overloaded")
        if behaviour == "unknown":
            raise NotFoundError(f"{deployment} has no version {version}")
        return np.tile(np.asarray(ANSWER[deployment.split("_candidate")[0]], dtype=np.float32), (len(rows), 1))


class Observed:
    def __init__(self):
        self.events: list[tuple] = []

    def answered(self, model, version, predicted, variant):
        self.events.append(("answered", model, version, variant, len(predicted)))

    def failed(self, model, version, rows, variant):
        self.events.append(("failed", model, version, variant, rows))

    def breaker_state(self, model, state):
        self.events.append(("breaker", model, state))

    def dropped_shadow(self, model):
        self.events.append(("dropped", model))


def make(clock=None, **settings):
    registry, models, observed = FakeRegistry(), FakeModels(), Observed()
    config = RouterSettings(**{"breaker": {"failure_threshold": 2, "cooldown_s": 30}, "model_timeout_s": 0.2,
                               **settings})

    async def default_ref(model):
        return "stable"

    versions = Versions(registry, default_ref, {m: "stable" for m in MODELS}, config.alias_cache_s,
                        **({"clock": clock} if clock else {}))
    calls = ModelCalls(models, MODELS, config, clock)
    dispatcher = Dispatcher(MODELS, versions, calls, Traffic(), observed, config)
    return dispatcher, registry, models, observed


ROWS = np.zeros((2, 36), dtype=np.float32)
CTX = RequestContext("r1")


def run(coroutine):
    return asyncio.run(coroutine)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_model_through_every_stage():
    dispatcher, _, models, observed = make()
    answer = run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert answer.model == "xgboost" and answer.version == "1.0.0" and answer.variant is None
    assert answer.probabilities.shape == (2, 3) and np.allclose(answer.probabilities[0], ANSWER["xgboost"])
    assert models.calls == [("xgboost", "1.0.0", 2)]
    assert ("answered", "xgboost", "1.0.0", "primary", 2) in observed.events


def test_an_alias_resolves_to_its_version_and_a_row_of_the_wrong_width_is_refused():
    dispatcher, _, models, _ = make()
    assert run(dispatcher.predict("xgboost", "latest", ROWS, CTX)).version == "1.1.0"
    with pytest.raises(BadRequest, match=r"36 \(the table features\) or 69 .*got 35"):
        run(dispatcher.predict("xgboost", "1.0.0", np.zeros((1, 35), dtype=np.float32), CTX))
    with pytest.raises(BadRequest, match="xgboost 1.0.0 takes 36 values per row; 69 positional values are accepted "
                                         "only by versions whose schema has the diagnostics"):
        run(dispatcher.predict("xgboost", "1.0.0", np.zeros((1, 69), dtype=np.float32), CTX))
    with pytest.raises(NotFoundError):
        run(dispatcher.predict("xgboost", "nightly", ROWS, CTX))
    assert [c[1] for c in models.calls] == ["1.1.0"]  # refused requests never reach a model


def test_alias_resolution_keeps_the_last_answer_while_the_registry_is_down():
    clock = Clock()
    dispatcher, registry, _, _ = make(clock=clock)
    assert run(dispatcher.predict("xgboost", "latest", ROWS, CTX)).version == "1.1.0"
    registry.down = True
    clock.now += 60  # the cached alias is stale: the registry is asked, fails, the last answer stands
    assert run(dispatcher.predict("xgboost", "latest", ROWS, CTX)).version == "1.1.0"
    with pytest.raises(ModelUnavailable, match="cannot resolve"):
        run(dispatcher.predict("random_forest", "latest", ROWS, CTX))  # never resolved: nothing to fall back on


def test_a_version_whose_metadata_cannot_be_read_is_served_and_not_read_again_for_a_while():
    clock = Clock()
    dispatcher, registry, models, _ = make(clock=clock)
    registry.down = True
    for _ in range(3):  # the replica checks the rows instead; the registry is asked once
        assert run(dispatcher.predict("xgboost", "1.1.0", ROWS, CTX)).version == "1.1.0"
    assert registry.metadata_reads == 1 and len(models.calls) == 3
    for patch in range(100):  # versions a client made up: the failures remembered stay bounded
        run(dispatcher.predict("xgboost", f"1.1.{patch + 1}", ROWS, CTX))
    assert len(dispatcher.versions._unreadable) == 64
    registry.down = False
    clock.now += 60  # past alias_cache_s: read again, and kept for good
    for _ in range(2):
        assert run(dispatcher.predict("xgboost", "1.1.0", ROWS, CTX)).version == "1.1.0"
    assert registry.metadata_reads == 102  # 1 + the 100 made-up versions + this one, once
    with pytest.raises(BadRequest, match="takes 36 values per row"):  # the schema is known again: checked here
        run(dispatcher.predict("xgboost", "1.1.0", np.zeros((1, 69), dtype=np.float32), CTX))


def test_the_replicas_default_is_used_and_the_configuration_when_they_cannot_say():
    dispatcher, _, _, _ = make()

    async def unreachable(model):
        raise TimeoutError

    dispatcher.versions.ask_default = unreachable
    dispatcher.versions.configured["xgboost"] = "latest"
    assert run(dispatcher.predict("xgboost", None, ROWS, CTX)).version == "1.1.0"


def test_the_breaker_opens_turns_away_with_its_own_retry_after_then_probes_and_closes():
    clock = Clock()
    dispatcher, _, models, observed = make(clock=clock)
    models.cue["xgboost"] = ["fail", "fail"]
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="failed: RuntimeError"):
            run(dispatcher.predict("xgboost", None, ROWS, CTX))
    clock.now += 12
    with pytest.raises(BreakerOpen) as refused:
        run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert refused.value.retry_after_s == 18  # this breaker's remaining cooldown, not a default
    assert len(models.calls) == 2  # turned away without a call
    clock.now += 18  # half-open: one probe goes through and closes it
    assert run(dispatcher.predict("xgboost", None, ROWS, CTX)).model == "xgboost"
    assert dispatcher.calls.state("xgboost") == "closed"
    assert ("breaker", "xgboost", "open") in observed.events


def test_a_failed_probe_opens_the_breaker_again_and_a_bad_request_releases_it():
    clock = Clock()
    dispatcher, _, models, _ = make(clock=clock)
    models.cue["xgboost"] = ["fail", "fail", "fail", "unknown"]
    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            run(dispatcher.predict("xgboost", None, ROWS, CTX))
    clock.now += 30
    with pytest.raises(ModelUnavailable):  # the probe fails
        run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert dispatcher.calls.state("xgboost") == "open"
    clock.now += 30
    with pytest.raises(NotFoundError):  # the probe's own request was bad: it says nothing of the model
        run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert run(dispatcher.predict("xgboost", None, ROWS, CTX)).model == "xgboost"  # the next call probes
    assert dispatcher.calls.state("xgboost") == "closed"


def test_a_hanging_model_times_out_and_feeds_the_breaker():
    dispatcher, _, models, _ = make()
    models.cue["xgboost"] = ["hang", "hang"]
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="TimeoutError"):
            run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert dispatcher.calls.state("xgboost") == "open"


def test_a_dying_replica_is_retried_once_and_only_once():
    dispatcher, _, models, _ = make()
    models.cue["xgboost"] = ["die"]
    assert run(dispatcher.predict("xgboost", None, ROWS, CTX)).model == "xgboost"
    assert len(models.calls) == 2 and dispatcher.calls.breakers["xgboost"].failures == 0
    models.calls.clear()
    models.cue["xgboost"] = ["die", "die", "die"]
    with pytest.raises(ModelUnavailable, match="replicas are unavailable"):
        run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert len(models.calls) == 2 and dispatcher.calls.breakers["xgboost"].failures == 1


def test_load_shedding_is_a_503_that_does_not_feed_the_breaker():
    dispatcher, _, models, _ = make()
    models.cue["xgboost"] = ["overloaded"] * 5
    for _ in range(5):
        with pytest.raises(Overloaded):
            run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert dispatcher.calls.state("xgboost") == "closed"


def test_auto_picks_the_best_roc_auc_and_skips_open_breakers():
    dispatcher, _, models, _ = make()
    assert run(dispatcher.predict("auto", None, ROWS, CTX)).model == "xgboost"
    models.cue["xgboost"] = ["fail", "fail"]
    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert run(dispatcher.predict("auto", None, ROWS, CTX)).model == "random_forest"


def test_the_ensemble_votes_and_degrades_while_a_member_answers():
    dispatcher, _, models, _ = make()
    answer = run(dispatcher.predict("ensemble", None, ROWS, CTX))
    assert answer.model == "ensemble" and answer.version == "1.0.0" and not answer.ensemble.degraded
    assert np.allclose(answer.probabilities[0], np.mean([ANSWER[m] for m in MODELS], axis=0), atol=1e-6)
    models.cue["keras_cnn"] = ["fail"]
    degraded = run(dispatcher.predict("ensemble", None, ROWS, CTX))
    assert degraded.ensemble.degraded and degraded.ensemble.members == ["random_forest", "xgboost"]
    assert "RuntimeError" in degraded.ensemble.skipped["keras_cnn"]
    assert np.allclose(degraded.probabilities[0], np.mean([ANSWER["xgboost"], ANSWER["random_forest"]], axis=0))


def test_an_ensemble_whose_members_all_fail_says_why():
    dispatcher, _, models, _ = make()
    for model in MODELS:
        models.cue[model] = ["fail"]
    with pytest.raises(ModelUnavailable, match="every ensemble member failed"):
        run(dispatcher.predict("ensemble", None, ROWS, CTX))
    with pytest.raises(NotFoundError):  # a version no member has is the request's fault, not the models'
        run(dispatcher.predict("ensemble", "nightly", ROWS, CTX))


def test_all_models_side_by_side_with_the_chosen_one_first():
    dispatcher, _, _, _ = make()
    answer = run(dispatcher.predict("random_forest", None, ROWS, CTX, all_models=True))
    assert answer.model == "random_forest" and set(answer.members) == set(MODELS)
    assert np.allclose(answer.probabilities, answer.members["random_forest"].probabilities)


def test_concurrent_requests_share_model_calls():
    dispatcher, _, models, _ = make()

    async def many():
        return await asyncio.gather(*(dispatcher.predict("xgboost", None, ROWS, RequestContext(f"r{i}"))
                                      for i in range(20)))

    answers = run(many())
    assert all(a.probabilities.shape == (2, 3) for a in answers)
    assert len(models.calls) < 10 and sum(n for _, _, n in models.calls) == 40


def _book(weight: float, shadow: bool = False) -> dict:
    record = {"experiment_id": "xgboost-1", "state": "running", "candidate": "latest", "candidate_version": "1.1.0",
              "weight": weight, "shadow": None, "shadow_version": None, "shadow_ready": False}
    return {"generation": 1, "experiments": {"xgboost": record}}


def test_a_failing_candidate_is_answered_by_the_stable_variant_and_counted():
    dispatcher, _, models, _ = make(experiments={"xgboost": {"candidate": "latest", "weight": 1.0}})
    dispatcher.traffic.adopt(_book(1.0))
    assert run(dispatcher.predict("xgboost", None, ROWS, CTX)).variant == "candidate"
    models.cue["xgboost_candidate"] = ["fail"]
    answer = run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert answer.variant == "stable" and answer.version == "1.0.0"
    buckets = {variant: bucket for _, variant, _, _, bucket in dispatcher.traffic.recorder.drain()}
    assert buckets["candidate"]["errors"] == 1 and buckets["candidate"]["requests"] == 2
    assert run(dispatcher.predict("xgboost", "1.0.0", ROWS, CTX)).variant is None  # a named version opts out


def test_a_new_candidate_version_does_not_inherit_the_breaker_an_earlier_one_opened():
    dispatcher, _, models, _ = make(experiments={"xgboost": {"candidate": "latest", "weight": 1.0}})
    dispatcher.traffic.adopt(_book(1.0))
    models.cue["xgboost_candidate"] = ["fail", "fail"]
    for _ in range(2):  # the failing candidate's requests fall back to the stable variant
        assert run(dispatcher.predict("xgboost", None, ROWS, CTX)).variant == "stable"
    assert dispatcher.calls.breaker("xgboost_candidate", "1.1.0").state.value == "open"
    book = _book(1.0)
    book["experiments"]["xgboost"].update(experiment_id="xgboost-2", candidate_version="1.2.0")
    book["generation"] = 2
    dispatcher.traffic.adopt(book)
    answer = run(dispatcher.predict("xgboost", None, ROWS, CTX))
    assert answer.variant == "candidate" and answer.version == "1.2.0"
    assert dispatcher.calls.state("xgboost") == "closed"



def test_an_archived_version_a_client_names_is_refused_before_any_model_call_unless_configured():
    dispatcher, registry, models, observed = make()
    registry.archived.add(("xgboost", "1.1.0"))
    with pytest.raises(NotFoundError, match="archived"):
        run(dispatcher.predict("xgboost", "1.1.0", ROWS, CTX))
    with pytest.raises(NotFoundError, match="archived"):
        run(dispatcher.predict("xgboost", "latest", ROWS, CTX))  # an alias to it too
    assert models.calls == [] and observed.events == []  # no call, no metric series
    dispatcher.versions.pinned = {("xgboost", "1.1.0")}  # the configuration names it: it serves
    assert run(dispatcher.predict("xgboost", "1.1.0", ROWS, CTX)).version == "1.1.0"
    registry.down = True  # asked again only after alias_cache_s: the answer stands
    dispatcher.versions.pinned = set()
    with pytest.raises(NotFoundError, match="archived"):
        run(dispatcher.predict("xgboost", "1.1.0", ROWS, CTX))


def test_the_configuration_names_its_versions():
    from serve_app.config import AppArgs

    args = AppArgs(models={"xgboost": {"default_version": "2.1.0", "preload": ["latest", "1.0.0"]}})
    router = RouterSettings(experiments={"xgboost": {"candidate": "2.0.0", "shadow": "latest"}})
    assert args.named_versions(router) == {("xgboost", "2.1.0"), ("xgboost", "1.0.0"), ("xgboost", "2.0.0")}


def test_while_the_registry_is_down_the_archived_check_waits_on_it_once_per_ttl_not_per_request():
    clock = Clock()
    dispatcher, registry, _, _ = make(clock=clock)
    registry.down = True
    for _ in range(5):  # never checked: let through (the replica decides), asked once
        assert run(dispatcher.predict("xgboost", "1.1.0", ROWS, CTX)).version == "1.1.0"
    assert registry.archived_reads == 1
    clock.now += 60
    run(dispatcher.predict("xgboost", "1.1.0", ROWS, CTX))
    assert registry.archived_reads == 2
