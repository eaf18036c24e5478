"""Delayed ground truth without Ray: the router's side (serve_app/feedback.py: items checked one by
one, KOI names canonicalised and scored, answered rows buffered) and the controller's
(serve_app/feedback_desk.py: labels joined by request id or KOI, persisted before they are
acknowledged, counted once per (row, version), restored after a restart), the decisions the labels
feed (serve_app/experiments.py) and the accuracy trigger wired as the controller wires it.
Clocks are injected; stores are real (a local directory, and moto_server for S3)."""
from __future__ import annotations

import asyncio
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from registry.feedback import FeedbackLog, GradedPrediction
from registry.stores import LocalStore
from runtimes.catalogue import Catalogue
from runtimes.schema import LABELS, WITH_DIAGNOSTICS
from serve_app.config import ExperimentSettings, FeedbackSettings, RolloutSettings
from serve_app.errors import ModelUnavailable
from serve_app.experiments import Book, Decisions
from serve_app.feature_rows import FeatureRows
from serve_app.feedback import (OUTCOMES, AnsweredRows, FeedbackRequest, Grading, Parsed, canonical_kois,
                                parse_items, score_kois)
from serve_app.feedback_desk import FeedbackDesk
from serve_app.prediction_log import from_bytes
from serve_app.quality import QualityBook, row_digest
from serve_app.sequential import AccuracyMonitor
from serve_app.variant_stats import Window

T0 = 1_741_944_413.0  # 2025-03-14 09:26:53 UTC
RETENTION_S = 3600.0
PREDICTION_KEY = re.compile(r"^predictions/2025/03/14/\d{19}-[0-9a-f]{8}\.npz$")
HYPOTHESIS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FailingPuts:
    """A store whose create-only writes fail (the bucket unreachable) while `failing` is set."""

    def __init__(self, store):
        self.store, self.failing = store, True

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put_if_absent(self, key: str, data: bytes) -> None:
        if self.failing:
            raise OSError("connection reset by peer")
        self.store.put_if_absent(key, data)


def desk_over(store, clock: Clock) -> FeedbackDesk:
    return FeedbackDesk(store, FeedbackSettings(retention_s=RETENTION_S, max_predictions=10_000), clock)


def outcomes_by_index(outcomes: list[dict]) -> dict[int, dict]:
    by_index = {o["index"]: o for o in outcomes}
    assert len(by_index) == len(outcomes), "one outcome per item"
    return by_index


def by_id(i: int, request_id: str, label: str = "CONFIRMED") -> Parsed:
    return Parsed(i, "request_id", request_id, label)


def by_koi(i: int, koi: str, label: str = "CONFIRMED") -> Parsed:
    return Parsed(i, "koi", koi, label)


# ---- a tiny catalogue and deterministic "models" --------------------------------------------------------

def tiny_catalogue() -> Catalogue:
    """Four KOIs, two of them on one star, with reproducible features."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "kepoi_name": ["K00001.01", "K00752.01", "K00752.02", "K00753.01"],
        "kepid": [11446443, 10797460, 10797460, 10811496],
        "kepler_name": ["Kepler-1 b", "Kepler-227 b", None, None],
        **{name: rng.normal(size=4) for name in WITH_DIAGNOSTICS},
        "disposition_2025_09_18": ["CONFIRMED", "CONFIRMED", "FALSE_POSITIVE", "CANDIDATE"],
    })
    table.loc[3, WITH_DIAGNOSTICS[5]] = np.nan  # a missing value: its digest must still match
    return Catalogue(table, "1.0.0")


WEIGHTS = {"1.0.0": np.random.default_rng(1).normal(size=(36, 3)),
           "1.1.0": np.random.default_rng(2).normal(size=(36, 3))}


def project_now(model: str, version: str, rows: FeatureRows) -> np.ndarray:
    return rows.values[:, :36].astype(np.float32)  # the table features, as a 1.x version takes them


def answer(version: str, matrix: np.ndarray) -> np.ndarray:
    """A deterministic model: softmax of a linear map, missing values as 0."""
    logits = np.nan_to_num(np.asarray(matrix, np.float64)) @ WEIGHTS[version]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


async def project(model: str, version: str, rows: FeatureRows):
    if version == "broken":
        raise ModelUnavailable("cannot load")
    return project_now(model, version, rows), ()


async def call(deployment: str, version: str, matrix: np.ndarray) -> np.ndarray:
    return answer(version, matrix)


GRADINGS = [Grading("xgboost", "1.0.0", "stable", "xgboost"), Grading("xgboost", "1.1.0", "candidate",
                                                                      "xgboost_candidate")]


def scored_for(catalogue: Catalogue, kois: list[str], gradings=GRADINGS) -> dict[str, list[GradedPrediction]]:
    return asyncio.run(score_kois(catalogue, kois, gradings, project, call))


def answered_request(rows: AnsweredRows, request_id: str, catalogue: Catalogue, koi: str, version: str = "1.0.0",
                     variant: str | None = "stable", model: str = "xgboost") -> np.ndarray:
    """What the dispatcher remembers when `version` answered a request for `koi`'s row."""
    matrix = project_now(model, version, FeatureRows(catalogue.features([koi]), frozenset()))
    probabilities = answer(version, matrix)
    rows.add(request_id, model, version, variant, probabilities, matrix)
    return probabilities


def plain_answer(rows: AnsweredRows, request_id: str, probabilities, model: str = "xgboost", version: str = "1.0.0",
                 variant: str | None = "stable", seed: int = 0) -> None:
    p = np.atleast_2d(np.asarray(probabilities, np.float32))
    rows.add(request_id, model, version, variant, p, np.random.default_rng(seed).normal(size=(len(p), 36)))


# ---- parse_items: every item on its own ------------------------------------------------------------------

HOSTILE_ITEMS = [
    (None, "invalid", "items[{i}]:"),
    (7, "invalid", "items[{i}]:"),
    ("K00752.01", "invalid", "items[{i}]:"),
    ([{"koi": "K00752.01", "label": "CONFIRMED"}], "invalid", "items[{i}]:"),
    (True, "invalid", "items[{i}]:"),
    ({}, "invalid", "items[{i}].label"),
    ({"koi": "K00752.01"}, "invalid", "items[{i}].label"),
    ({"request_id": "abc", "label": None}, "invalid", "items[{i}].label"),
    ({"request_id": "abc", "label": ["CONFIRMED"]}, "invalid", "items[{i}].label"),
    ({"request_id": "abc", "label": {"value": "CONFIRMED"}}, "invalid", "items[{i}].label"),
    ({"request_id": "abc", "label": True}, "invalid", "items[{i}].label"),
    ({"label": "CONFIRMED"}, "invalid", "items[{i}]: give exactly one"),
    ({"request_id": None, "koi": None, "label": "CONFIRMED"}, "invalid", "items[{i}]: give exactly one"),
    ({"request_id": "abc", "koi": "K00752.01", "label": "CONFIRMED"}, "invalid", "items[{i}]: give exactly one"),
    ({"request_id": "abc", "label": "CANDIDATE"}, "bad_label", "items[{i}].label: CANDIDATE is not ground truth"),
    ({"koi": "K00752.01", "label": "CANDIDATE"}, "bad_label", "items[{i}].label: CANDIDATE"),
    ({"request_id": "abc", "label": "MAYBE"}, "bad_label", "items[{i}].label"),
    ({"request_id": "abc", "label": "confirmed"}, "bad_label", "items[{i}].label"),
    ({"request_id": "abc", "label": "FALSE POSITIVE"}, "bad_label", "items[{i}].label"),
    ({"request_id": "a" * 65, "label": "CONFIRMED"}, "invalid", "items[{i}].request_id: request_id is 65 characters"),
    ({"request_id": "", "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": "abc\x00", "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": "a\nb", "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": " abc", "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": "caf\u00e9", "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": "\ud800", "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": 12345, "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": True, "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"request_id": ["abc"], "label": "CONFIRMED"}, "invalid", "items[{i}].request_id"),
    ({"koi": True, "label": "CONFIRMED"}, "invalid", "items[{i}].koi"),
    ({"koi": 752.01, "label": "CONFIRMED"}, "invalid", "items[{i}].koi"),
    ({"koi": ["K00752.01"], "label": "CONFIRMED"}, "invalid", "items[{i}].koi"),
    ({"koi": {"name": "K00752.01"}, "label": "CONFIRMED"}, "invalid", "items[{i}].koi"),
    ({"koi": [[["K00752.01"]]], "label": "CONFIRMED"}, "invalid", "items[{i}].koi"),
    ({"request_id": "abc", "label": "CONFIRMED", "note": "x"}, "invalid", "items[{i}].note"),
]


def test_every_hostile_item_gets_its_own_outcome_naming_the_field():
    good = [{"request_id": "3f2a9c1e-0d4b-4c57-9a51-7b3e2f8c6d10", "label": "CONFIRMED"},
            {"koi": "Kepler-227 b", "label": "FALSE_POSITIVE"}, {"koi": 10797460, "label": "CONFIRMED"},
            {"request_id": "r" * 64, "label": "FALSE_POSITIVE"}]
    # Good items between the hostile ones: one bad item never fails the others.
    items = [raw for raw, _, _ in HOSTILE_ITEMS] + good
    parsed, outcomes = parse_items(FeedbackRequest(items=items, source="archive-2025"))
    assert set(outcomes) == set(range(len(HOSTILE_ITEMS)))
    for i, (raw, outcome, reason) in enumerate(HOSTILE_ITEMS):
        assert outcomes[i]["index"] == i and outcomes[i]["outcome"] == outcome, (raw, outcomes[i])
        assert outcomes[i]["outcome"] in OUTCOMES
        assert outcomes[i]["reason"].startswith(reason.format(i=i)), (raw, outcomes[i])
    first = len(HOSTILE_ITEMS)
    assert parsed == [Parsed(first, "request_id", good[0]["request_id"], "CONFIRMED"),
                      Parsed(first + 1, "koi", "Kepler-227 b", "FALSE_POSITIVE"),
                      Parsed(first + 2, "koi", 10797460, "CONFIRMED"),
                      Parsed(first + 3, "request_id", "r" * 64, "FALSE_POSITIVE")]


def test_candidate_is_refused_with_a_reason_that_says_why():
    _, outcomes = parse_items(FeedbackRequest(items=[{"koi": "K00752.01", "label": "CANDIDATE"}]))
    assert outcomes[0]["outcome"] == "bad_label"
    assert "CANDIDATE" in outcomes[0]["reason"] and "resolved" in outcomes[0]["reason"]


def test_a_huge_integer_koi_passes_parsing_and_is_refused_by_the_catalogue():
    huge = 10 ** 5000  # more digits than repr() prints
    items = [{"koi": huge, "label": "CONFIRMED"}, {"koi": -1, "label": "CONFIRMED"},
             {"koi": 2 ** 64, "label": "FALSE_POSITIVE"}]
    parsed, outcomes = parse_items(FeedbackRequest(items=items))
    assert outcomes == {} and [p.ref_kind for p in parsed] == ["koi"] * 3
    kept, refused = canonical_kois(tiny_catalogue(), parsed)
    assert kept == []
    assert {i: o["outcome"] for i, o in refused.items()} == {0: "invalid", 1: "invalid", 2: "invalid"}
    assert refused[0]["reason"].startswith("items[0].koi: malformed KOI name <an integer of")
    assert len(refused[0]["reason"]) < 500


def test_canonical_kois_names_each_koi_once_and_refuses_what_is_not_one_koi():
    items = [by_koi(0, "K00752.01"), by_koi(1, "Kepler-227 b"), by_koi(2, "koi 1.01"), by_koi(3, "K09999.01"),
             by_koi(4, 10797460), by_koi(5, "not a koi"), by_id(6, "abc"), by_koi(7, 10811496)]
    kept, outcomes = canonical_kois(tiny_catalogue(), items)
    assert kept == [by_koi(0, "K00752.01"), by_koi(1, "K00752.01"), by_koi(2, "K00001.01"), by_id(6, "abc"),
                    by_koi(7, "K00753.01")]
    assert {i: o["outcome"] for i, o in outcomes.items()} == {3: "unknown_koi", 4: "invalid", 5: "invalid"}
    assert outcomes[4]["reason"].startswith("items[4].koi:") and "2 KOIs" in outcomes[4]["reason"]
    assert outcomes[3]["reason"].startswith("items[3].koi:")


def test_a_bad_source_is_blamed_on_source_not_on_every_item():
    body = {"items": [{"koi": "K00752.01", "label": "CONFIRMED"}, {"request_id": "abc", "label": "CONFIRMED"}],
            "source": "DR25 \u2013 2025"}
    with pytest.raises(ValidationError) as caught:
        FeedbackRequest(**body)
    assert [error["loc"] for error in caught.value.errors()] == [("source",)]
    _, outcomes = parse_items(FeedbackRequest(**{**body, "source": "DR25 - 2025"}))
    assert outcomes == {}


@pytest.mark.parametrize("count", [0, 1001])
def test_a_batch_of_no_items_or_too_many_is_refused_naming_items(count):
    with pytest.raises(ValidationError) as caught:
        FeedbackRequest(items=[{"koi": "K00752.01", "label": "CONFIRMED"}] * count)
    assert [e["loc"] for e in caught.value.errors()] == [("items",)]


def test_a_batch_at_the_limit_is_accepted():
    parsed, outcomes = parse_items(FeedbackRequest(items=[{"koi": "K00752.01", "label": "CONFIRMED"}] * 1000))
    assert len(parsed) == 1000 and outcomes == {}


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
                         st.text(max_size=70), st.sampled_from(["CONFIRMED", "FALSE_POSITIVE", "CANDIDATE", "",
                                                                "\x00", "\ud800", "K00752.01", "x" * 65]),
                         st.builds(lambda sign: sign * 10 ** 5000, st.sampled_from([1, -1])))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
labels = st.one_of(st.sampled_from(["CONFIRMED", "FALSE_POSITIVE", "CANDIDATE", "MAYBE"]), json_values)
refs = st.one_of(st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), min_size=0, max_size=70),
                 st.sampled_from(["3f2a9c1e-0d4b-4c57-9a51-7b3e2f8c6d10", "K00752.01", "Kepler-227 b"]),
                 st.integers(-2 ** 70, 2 ** 70), json_values)
# Nearly right (one reference and a label, each perhaps spoiled) and anything at all with these keys.
nearly_items = st.builds(lambda kind, ref, label: {kind: ref, "label": label},
                         st.sampled_from(["request_id", "koi"]), refs, labels)
field_values = {"request_id": refs, "koi": refs, "label": labels}
hostile_items = st.tuples(st.fixed_dictionaries({}, optional=field_values),
                          st.dictionaries(st.text(max_size=6), json_values, max_size=2)).map(
    lambda parts: {**parts[1], **parts[0]})
items_strategy = st.lists(st.one_of(nearly_items, nearly_items, hostile_items, json_values), min_size=1, max_size=6)


@HYPOTHESIS
@given(items=items_strategy, source=st.one_of(st.none(), st.sampled_from(["archive-2025", "curator"])))
def test_any_json_item_gets_exactly_one_outcome_or_is_parsed(items, source):
    parsed, outcomes = parse_items(FeedbackRequest(items=items, source=source))
    parsed_indices = [p.index for p in parsed]
    assert sorted(parsed_indices + list(outcomes)) == list(range(len(items)))
    for i, outcome in outcomes.items():
        assert outcome["index"] == i and outcome["outcome"] in ("invalid", "bad_label")
        assert outcome["reason"].startswith(f"items[{i}]")
    for p in parsed:
        raw = items[p.index]
        assert isinstance(raw, dict) and p.label in ("CONFIRMED", "FALSE_POSITIVE")
        assert raw[p.ref_kind] == p.ref and raw.get("request_id" if p.ref_kind == "koi" else "koi") is None


# ---- the desk: joining by request id -----------------------------------------------------------------

def test_request_ids_join_once_and_a_relabel_moves_the_version_figures(tmp_path):
    clock = Clock()
    rows, desk = AnsweredRows(clock=clock), desk_over(LocalStore(tmp_path), clock)
    plain_answer(rows, "req-ensemble", [0.7, 0.2, 0.1], "xgboost", "1.0.0", "stable", seed=1)
    plain_answer(rows, "req-ensemble", [0.2, 0.1, 0.7], "random_forest", "2.0.0", None, seed=1)
    plain_answer(rows, "req-other", [0.6, 0.3, 0.1], "xgboost", "1.0.0", "stable", seed=2)
    desk.record(rows.drain())

    outcomes, key = desk.accept([by_id(0, "req-ensemble"), by_id(1, "never-answered")], {}, "archive", "curator")
    got = outcomes_by_index(outcomes)
    assert got[1]["outcome"] == "unknown_request_id" and "no answered request" in got[1]["reason"]
    assert got[0]["outcome"] == "joined" and key is not None
    graded = sorted(got[0]["graded"], key=lambda g: g["model"])
    assert graded == [
        {"model": "random_forest", "version": "2.0.0", "variant": None, "predicted": "FALSE_POSITIVE",
         "correct": False},
        {"model": "xgboost", "version": "1.0.0", "variant": "stable", "predicted": "CONFIRMED", "correct": True}]
    [(_, batch)] = list(FeedbackLog(desk.store).read_all())
    [stored] = batch.items
    assert stored.ref == "req-ensemble" and stored.source == "archive" and stored.principal == "curator"
    assert {(g.model, g.version, g.variant): g.probabilities for g in stored.graded} == {
        ("xgboost", "1.0.0", "stable"): tuple(np.float32([0.7, 0.2, 0.1]).tolist()),
        ("random_forest", "2.0.0", None): tuple(np.float32([0.2, 0.1, 0.7]).tolist())}
    assert all(g.row_key != 0 for g in stored.graded)
    xgboost = desk.quality.of("xgboost", "1.0.0")
    assert (xgboost.labelled, xgboost.correct) == (1, 1)

    # The same label again: unchanged, counted once; it is still stored (an audit trail).
    outcomes, _ = desk.accept([by_id(0, "req-ensemble")], {}, None, None)
    assert outcomes[0]["outcome"] == "unchanged"
    assert (xgboost.labelled, xgboost.correct, xgboost.relabels) == (1, 1, 0)

    outcomes, _ = desk.accept([by_id(0, "req-other")], {}, None, None)
    assert outcomes[0]["outcome"] == "joined" and desk.quality.summary("xgboost", "1.0.0")["accuracy"] == 1.0

    # A different label: relabelled, and the version's accuracy follows it.
    outcomes, _ = desk.accept([by_id(3, "req-ensemble", "FALSE_POSITIVE")], {}, None, None)
    assert outcomes == [{"index": 3, "outcome": "relabelled", "graded": outcomes[0]["graded"]}]
    assert {g["model"]: g["correct"] for g in outcomes[0]["graded"]} == {"xgboost": False, "random_forest": True}
    assert desk.quality.summary("xgboost", "1.0.0") | {"log_loss": None, "brier": None, "ece": None} == {
        "labelled": 2, "correct": 1, "accuracy": 0.5, "relabels": 1, "log_loss": None, "brier": None, "ece": None}
    assert desk.quality.summary("random_forest", "2.0.0")["accuracy"] == 1.0
    assert desk.labels[("request_id", "req-ensemble")] == "FALSE_POSITIVE"
    assert len(desk.store.list("feedback")) == 4


def test_an_id_evicted_for_retention_is_expired_not_unknown(tmp_path):
    clock = Clock()
    rows, desk = AnsweredRows(clock=clock), desk_over(LocalStore(tmp_path), clock)
    plain_answer(rows, "old", [0.7, 0.2, 0.1])
    desk.record(rows.drain())
    clock.now += RETENTION_S - 1
    plain_answer(rows, "recent", [0.7, 0.2, 0.1], seed=3)
    desk.record(rows.drain())
    clock.now += 2  # "old" is now past the window, "recent" is not
    outcomes, _ = desk.accept([by_id(0, "old"), by_id(1, "recent"), by_id(2, "typo")], {}, None, None)
    got = outcomes_by_index(outcomes)
    assert got[0]["outcome"] == "expired" and "KOI name" in got[0]["reason"]
    assert got[1]["outcome"] == "joined"
    assert got[2]["outcome"] == "unknown_request_id"
    assert desk.labels == {("request_id", "recent"): "CONFIRMED"}
    assert desk.quality.of("xgboost", "1.0.0").labelled == 1


def test_nothing_joined_stores_nothing(tmp_path):
    desk = desk_over(LocalStore(tmp_path), Clock())
    outcomes, key = desk.accept([by_id(0, "unknown"), by_koi(1, "K00752.01")], {}, None, None)
    assert key is None and desk.store.list("feedback") == []
    assert sorted(o["outcome"] for o in outcomes) == ["unknown_koi", "unknown_request_id"]
    assert desk.labels == {} and desk.quality.versions == {}


# ---- the desk: joining by KOI, and one unit per (row, version) ----------------------------------------

def test_koi_items_grade_every_scored_version_and_unscored_kois_are_unknown(tmp_path):
    catalogue = tiny_catalogue()
    scored = scored_for(catalogue, ["K00752.01", "K00753.01"],
                        [*GRADINGS, Grading("random_forest", "broken", None, "random_forest")])
    assert {k: [(g.model, g.version, g.variant) for g in v] for k, v in scored.items()} == {
        koi: [("xgboost", "1.0.0", "stable"), ("xgboost", "1.1.0", "candidate")]
        for koi in ("K00752.01", "K00753.01")}  # the broken version grades nothing
    expected = answer("1.1.0", project_now("xgboost", "1.1.0", FeatureRows(catalogue.features(["K00753.01"]))))
    assert scored["K00753.01"][1].probabilities == tuple(expected[0].tolist())
    scored["K00001.01"] = []  # asked, but no version could score it

    desk = desk_over(LocalStore(tmp_path), Clock())
    outcomes, key = desk.accept([by_koi(0, "K00752.01"), by_koi(1, "K00753.01", "FALSE_POSITIVE"),
                                 by_koi(2, "K00001.01"), by_koi(3, "K00752.02")], scored, "archive", None)
    got = outcomes_by_index(outcomes)
    assert [got[i]["outcome"] for i in range(4)] == ["joined", "joined", "unknown_koi", "unknown_koi"]
    assert "score" in got[2]["reason"]
    for i, koi, label in ((0, "K00752.01", "CONFIRMED"), (1, "K00753.01", "FALSE_POSITIVE")):
        assert [(g["model"], g["version"], g["variant"]) for g in got[i]["graded"]] == [
            ("xgboost", "1.0.0", "stable"), ("xgboost", "1.1.0", "candidate")]
        for view, graded in zip(got[i]["graded"], scored[koi]):
            assert view["predicted"] == LABELS[int(np.argmax(graded.probabilities))]
            assert view["correct"] == (view["predicted"] == label)
    [(_, batch)] = list(FeedbackLog(desk.store).read_all())
    assert [(item.ref_kind, item.ref, item.graded) for item in batch.items] == [
        ("koi", "K00752.01", tuple(scored["K00752.01"])), ("koi", "K00753.01", tuple(scored["K00753.01"]))]
    for version in ("1.0.0", "1.1.0"):
        assert desk.quality.of("xgboost", version).labelled == 2


def test_a_row_asked_by_request_id_and_by_koi_counts_once(tmp_path):
    catalogue, clock = tiny_catalogue(), Clock()
    rows, desk = AnsweredRows(clock=clock), desk_over(LocalStore(tmp_path), clock)
    answered_request(rows, "req-1", catalogue, "K00753.01")  # the row with a missing value
    answered_request(rows, "req-2", catalogue, "K00753.01")  # the same question again
    answered_request(rows, "req-3", catalogue, "K00752.01", "1.1.0", "candidate")
    desk.record(rows.drain())
    scored = scored_for(catalogue, ["K00753.01", "K00752.01"])
    assert scored["K00753.01"][0].row_key == desk.predictions.lookup("req-1")[0].row_key != 0

    outcomes, _ = desk.accept([by_id(0, "req-1"), by_koi(1, "K00753.01"), by_id(2, "req-2"), by_id(3, "req-3"),
                               by_koi(4, "K00752.01")], scored, None, None)
    assert {o["outcome"] for o in outcomes} == {"joined"}
    stable, candidate = desk.quality.of("xgboost", "1.0.0"), desk.quality.of("xgboost", "1.1.0")
    # Stable: one row (K00753.01) answered twice and named once, plus K00752.01 from its KOI item.
    assert (stable.labelled, candidate.labelled) == (2, 2)
    # A different label by KOI relabels the unit the request ids counted: still one unit.
    outcomes, _ = desk.accept([by_koi(0, "K00753.01", "FALSE_POSITIVE")], scored, None, None)
    assert outcomes[0]["outcome"] == "relabelled"
    assert stable.labelled == 2 and stable.relabels == 1


# ---- persistence and restore ----------------------------------------------------------------------------

def test_accept_stores_its_batch_before_answering_and_failed_writes_count_nothing(tmp_path):
    clock = Clock()
    store = FailingPuts(LocalStore(tmp_path))
    store.failing = False
    rows, desk = AnsweredRows(clock=clock), desk_over(store, clock)
    plain_answer(rows, "req-a", [0.8, 0.1, 0.1])
    plain_answer(rows, "req-b", [0.1, 0.1, 0.8], seed=5)
    desk.record(rows.drain())
    desk.accept([by_id(0, "req-a")], {}, None, None)
    labels, summary = dict(desk.labels), desk.quality.summary("xgboost", "1.0.0")

    store.failing = True
    for batch in ([by_id(0, "req-a", "FALSE_POSITIVE")], [by_id(0, "req-b")]):
        with pytest.raises(OSError):
            desk.accept(batch, {}, None, None)
        assert desk.labels == labels and desk.quality.summary("xgboost", "1.0.0") == summary
    assert len(store.list("feedback")) == 1

    store.failing = False  # the client's retry, once the store is back
    outcomes, key = desk.accept([by_id(0, "req-a", "FALSE_POSITIVE"), by_id(1, "req-b")], {}, None, None)
    assert [o["outcome"] for o in outcomes] == ["relabelled", "joined"]
    assert key in store.list("feedback") and len(store.list("feedback")) == 2
    assert desk.quality.summary("xgboost", "1.0.0")["labelled"] == 2


@pytest.mark.parametrize("principal", ["jwt:jos\u00e9@example.org", "jwt:" + "s" * 130, "jwt:trailing "])
def test_any_authenticated_principal_can_store_labels(tmp_path, principal):
    clock = Clock()
    rows, desk = AnsweredRows(clock=clock), desk_over(LocalStore(tmp_path), clock)
    plain_answer(rows, "req-a", [0.8, 0.1, 0.1])
    desk.record(rows.drain())
    outcomes, key = desk.accept([by_id(0, "req-a")], {}, None, principal)
    assert outcomes[0]["outcome"] == "joined" and key in desk.store.list("feedback")


def test_a_store_that_never_takes_a_batch_acknowledges_and_counts_nothing(tmp_path):
    clock = Clock()
    rows, desk = AnsweredRows(clock=clock), desk_over(FailingPuts(LocalStore(tmp_path)), clock)
    plain_answer(rows, "req-a", [0.8, 0.1, 0.1])
    desk.record(rows.drain())
    with pytest.raises(OSError):
        desk.accept([by_id(0, "req-a")], {}, None, None)
    assert desk.labels == {} and desk.quality.summary("xgboost", "1.0.0")["labelled"] == 0
    assert desk.store.list("feedback") == []


def test_persist_predictions_writes_only_what_is_new(tmp_path):
    clock = Clock()
    store = LocalStore(tmp_path)
    rows, desk = AnsweredRows(clock=clock), desk_over(store, clock)
    plain_answer(rows, "req-1", [[0.8, 0.1, 0.1], [0.2, 0.3, 0.5]], seed=1)  # two rows
    plain_answer(rows, "req-2", [0.1, 0.1, 0.8], "random_forest", "2.0.0", None, seed=2)
    desk.record(rows.drain())
    assert desk.persist_predictions() == 3
    [key] = store.list("predictions")
    assert PREDICTION_KEY.match(key)
    entries = from_bytes(store.get(key))
    assert [(e.request_id, e.row, e.model, e.version, e.variant) for e in entries] == [
        ("req-1", 0, "xgboost", "1.0.0", "stable"), ("req-1", 1, "xgboost", "1.0.0", "stable"),
        ("req-2", 0, "random_forest", "2.0.0", None)]
    assert entries[1].probabilities == tuple(np.float32([0.2, 0.3, 0.5]).tolist())
    assert [e.row_key for e in entries] == [e.row_key for r in ("req-1", "req-2") for e in desk.predictions.lookup(r)]
    assert all(e.time == T0 for e in entries)

    assert desk.persist_predictions() == 0 and len(store.list("predictions")) == 1
    clock.now += 1
    plain_answer(rows, "req-3", [0.5, 0.4, 0.1], seed=3)
    desk.record(rows.drain())
    assert desk.persist_predictions() == 1
    newest = sorted(store.list("predictions"))[-1]
    assert [e.request_id for e in from_bytes(store.get(newest))] == ["req-3"]


def _restart_scenario(store) -> tuple[FeedbackDesk, Clock]:
    """A desk that answered, persisted, took labels (one relabelled in a later batch) and then died."""
    catalogue, clock = tiny_catalogue(), Clock()
    rows, desk = AnsweredRows(clock=clock), desk_over(store, clock)
    answered_request(rows, "req-1", catalogue, "K00752.01")
    answered_request(rows, "req-2", catalogue, "K00753.01", "1.1.0", "candidate")
    answered_request(rows, "req-unlabelled", catalogue, "K00001.01")
    desk.record(rows.drain())
    assert desk.persist_predictions() == 3
    scored = scored_for(catalogue, ["K00001.01", "K00753.01"])
    desk.accept([by_id(0, "req-1"), by_id(1, "req-2", "FALSE_POSITIVE"), by_koi(2, "K00001.01")], scored, "a", None)
    clock.now += 60
    outcomes, _ = desk.accept([by_id(0, "req-1", "FALSE_POSITIVE"), by_koi(1, "K00753.01")], scored, "b", None)
    assert [o["outcome"] for o in outcomes] == ["relabelled", "joined"]
    return desk, clock


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_new_desk_restores_labels_figures_and_joinable_ids(kind, tmp_path, request):
    store = LocalStore(tmp_path) if kind == "local" else request.getfixturevalue("moto_server").store()
    before, clock = _restart_scenario(store)

    clock.now += 120
    after = desk_over(store, clock)
    found = after.restore()
    assert found == {"prediction_rows": 3, "expired_objects_deleted": 0, "feedback_batches": 2, "labels": 5}
    assert after.labels == before.labels
    assert after.labels[("request_id", "req-1")] == "FALSE_POSITIVE"  # the later batch wins
    assert set(after.quality.versions) == set(before.quality.versions)
    for model, version in before.quality.versions:
        assert after.quality.summary(model, version) == before.quality.summary(model, version)
    assert after.persist_predictions() == 0  # what it read back is already stored

    outcomes, _ = after.accept([by_id(0, "req-unlabelled"), by_id(1, "req-1", "FALSE_POSITIVE"),
                                by_id(2, "req-2", "CONFIRMED")], {}, None, None)
    got = outcomes_by_index(outcomes)
    assert [got[i]["outcome"] for i in range(3)] == ["joined", "unchanged", "relabelled"]
    assert got[0]["graded"][0] | {"predicted": None, "correct": None} == {
        "model": "xgboost", "version": "1.0.0", "variant": "stable", "predicted": None, "correct": None}
    # req-unlabelled is K00001.01's row, already counted by its KOI item: one unit, no new label.
    assert after.quality.of("xgboost", "1.0.0").labelled == before.quality.of("xgboost", "1.0.0").labelled


def test_restore_deletes_prediction_objects_past_retention_and_their_ids_no_longer_join(tmp_path):
    clock = Clock()
    store = LocalStore(tmp_path)
    rows, desk = AnsweredRows(clock=clock), desk_over(store, clock)
    plain_answer(rows, "old", [0.8, 0.1, 0.1], seed=1)
    desk.record(rows.drain())
    desk.persist_predictions()
    desk.accept([by_id(0, "old")], {}, None, None)  # labelled while it could join
    clock.now += RETENTION_S - 10
    plain_answer(rows, "recent", [0.8, 0.1, 0.1], seed=2)
    desk.record(rows.drain())
    desk.persist_predictions()
    [old_key, recent_key] = sorted(store.list("predictions"))
    store.put("predictions/README.txt", b"not a prediction object")  # left alone

    clock.now += 20  # the first object is now past the window, the second is not
    after = desk_over(store, clock)
    found = after.restore()
    assert found["expired_objects_deleted"] == 1 and found["prediction_rows"] == 1
    assert sorted(store.list("predictions")) == sorted(["predictions/README.txt", recent_key])
    assert old_key != recent_key
    outcomes, _ = after.accept([by_id(0, "old", "FALSE_POSITIVE"), by_id(1, "recent")], {}, None, None)
    got = outcomes_by_index(outcomes)
    assert got[0]["outcome"] in ("unknown_request_id", "expired") and "graded" not in got[0]
    assert got[1]["outcome"] == "joined"
    # The old label still counts from the feedback log: its graded prediction travelled with it.
    assert after.labels[("request_id", "old")] == "CONFIRMED"
    assert after.quality.of("xgboost", "1.0.0").labelled == 2


# ---- the router's buffer of answered rows ----------------------------------------------------------------

def test_answered_rows_are_bounded_drop_the_oldest_and_restore_ahead_of_newer():
    clock = Clock()
    rows = AnsweredRows(max_rows=5, clock=clock)
    for i in range(4):
        clock.now = T0 + i
        plain_answer(rows, f"r{i}", [0.5, 0.3, 0.2], seed=i)
    first = rows.drain()
    assert [a[0] for a in first] == ["r0", "r1", "r2", "r3"] and [a[6] for a in first] == [T0, T0 + 1, T0 + 2, T0 + 3]
    request_id, model, version, variant, probabilities, keys, _ = first[0]
    assert (model, version, variant) == ("xgboost", "1.0.0", "stable")
    assert probabilities.dtype == np.float32 and probabilities.shape == (1, 3) and keys.dtype == np.uint64
    assert rows.drain() == [] and rows.rows == 0 and len(rows.pending) == 0

    plain_answer(rows, "n0", [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], seed=10)  # two rows, arrived meanwhile
    rows.restore(first)  # the failed sync's rows go back ahead of the newer ones
    assert [a[0] for a in rows.pending] == ["r1", "r2", "r3", "n0"]  # six rows: the oldest one dropped
    assert rows.rows == 5 and rows.dropped == 1

    for i in range(5):
        plain_answer(rows, f"m{i}", [0.5, 0.3, 0.2], seed=20 + i)
    assert [a[0] for a in rows.pending] == [f"m{i}" for i in range(5)]
    assert rows.rows == 5 and rows.dropped == 5
    # One request larger than the bound is still kept whole (the newest is never dropped).
    plain_answer(rows, "big", np.full((7, 3), 1 / 3), seed=30)
    assert [a[0] for a in rows.pending] == ["big"] and rows.rows == 7 and rows.dropped == 10


# ---- decisions fed by labels ---------------------------------------------------------------------------

def running_experiment(spec: ExperimentSettings):
    book, clock = Book(), Clock()
    decisions = Decisions(book, Window(clock=clock), clock)
    record = decisions.adopt("xgboost", spec, spec.candidate, None)
    decisions.started(record, spec, False)
    return book, decisions, record, clock


def test_the_accuracy_trigger_rolls_back_a_running_candidate():
    spec = ExperimentSettings(candidate="1.1.0", weight=0.2)
    _, decisions, record, _ = running_experiment(spec)
    assert decisions.check(record, spec) is None  # nothing else would fire
    reason = "candidate accuracy is below the stable's minus the margin"
    assert decisions.check(record, spec, accuracy=reason) == ("rollback", reason)
    decisions.end(record, "rolled_back", reason, "controller")
    assert decisions.check(record, spec, accuracy=reason) is None  # no longer running

    shadow_only = ExperimentSettings(shadow="1.1.0")
    _, decisions, record, _ = running_experiment(shadow_only)
    assert record.state == "running" and decisions.check(record, shadow_only, accuracy=reason) is None


def test_thompson_needs_a_candidate_and_no_rollout():
    ExperimentSettings(candidate="1.1.0", policy="thompson")
    with pytest.raises(ValidationError, match="policy thompson needs a candidate"):
        ExperimentSettings(shadow="1.1.0", policy="thompson")
    with pytest.raises(ValidationError, match="policy thompson needs a candidate"):
        ExperimentSettings(candidate="1.1.0", policy="thompson", rollout=RolloutSettings())
    with pytest.raises(ValidationError):
        ExperimentSettings(candidate="1.1.0", policy="greedy")


def test_bandit_weight_moves_the_weight_and_records_it():
    spec = ExperimentSettings(candidate="1.1.0", weight=0.1, policy="thompson")
    book, decisions, record, clock = running_experiment(spec)
    generation, events = book.generation, len(book.events)
    clock.now += 300
    event = decisions.bandit_weight(record, 0.35, "P(candidate more accurate) = 0.35")
    assert record.weight == 0.35 and record.weight_source == "bandit" and record.weight_changed_at == clock.now
    assert record.reason == "P(candidate more accurate) = 0.35" and record.state == "running"
    assert book.generation == generation + 1 and len(book.events) == events + 1
    assert book.events[-1] == event
    assert event["action"] == "bandit_weight" and event["by"] == "bandit" and event["generation"] == book.generation
    assert event["model"] == "xgboost" and event["experiment"] == record.experiment_id


# ---- the accuracy trigger, wired as ExperimentController._accuracy wires it ----------------------------

def quality_with(stable_correct: int, candidate_correct: int, units: int = 300) -> QualityBook:
    """Each version graded on `units` KOIs, right on the first `*_correct` of them."""
    book = QualityBook()
    for version, correct in (("1.0.0", stable_correct), ("1.1.0", candidate_correct)):
        for i in range(units):
            label = "CONFIRMED" if i < correct else "FALSE_POSITIVE"
            book.add("xgboost", version, int(row_digest([[float(i)]])[0]), label, [0.8, 0.1, 0.1])
    return book


def accuracy_reason(monitor: AccuracyMonitor, book: QualityBook) -> str | None:
    """ExperimentController._accuracy's calls, the counts read as _quality reads them."""
    stable, candidate = book.of("xgboost", "1.0.0"), book.of("xgboost", "1.1.0")
    try:
        verdict = monitor.update(stable.correct, stable.labelled, candidate.correct, candidate.labelled)
    except ValueError:
        monitor.reset()
        verdict = monitor.update(stable.correct, stable.labelled, candidate.correct, candidate.labelled)
    return verdict.reason if verdict.rollback else None


def test_a_clearly_worse_candidate_trips_the_accuracy_trigger_and_an_equal_one_does_not():
    worse = quality_with(stable_correct=255, candidate_correct=180)  # 85% against 60%
    assert worse.summary("xgboost", "1.0.0")["accuracy"] == 0.85
    assert worse.summary("xgboost", "1.1.0")["accuracy"] == 0.6
    reason = accuracy_reason(AccuracyMonitor(0.05, 0.02, 100), worse)
    assert reason is not None and "accuracy" in reason and "60.0%" in reason and "85.0%" in reason
    spec = ExperimentSettings(candidate="1.1.0")
    _, decisions, record, _ = running_experiment(spec)
    assert decisions.check(record, spec, accuracy=reason) == ("rollback", reason)

    assert accuracy_reason(AccuracyMonitor(0.05, 0.02, 100), quality_with(255, 255)) is None
    # Fewer labels than min_labels: no verdict, however bad.
    assert accuracy_reason(AccuracyMonitor(0.05, 0.02, 100), quality_with(90, 10, units=99)) is None
