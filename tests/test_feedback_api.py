"""Delayed ground truth on the shared application: labels sent to POST /api/v1/feedback join the
predictions they grade (by request id and by KOI name), every item's outcome is reported, a
clearly worse candidate loses traffic to the Thompson policy and is then rolled back by the
accuracy trigger, and an acknowledged batch survives SIGKILL of the router and the controller.
Labels are the real 2025 dispositions of test-star KOIs."""
from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from registry.feedback import FeedbackLog

from .bad_models import _publish, skewed_xgboost
from .helpers import until, with_router
from .ray_cluster import ADMIN_KEY, FEEDBACK_KEY, PREDICT_KEY, SERVE_URL
from .test_serving import as_json_row, held_out

pytestmark = [pytest.mark.ray, pytest.mark.trained]

FEEDBACK, PREDICT = f"{SERVE_URL}/api/v1/feedback", f"{SERVE_URL}/api/v1/predict"
EXPERIMENTS = f"{SERVE_URL}/api/v1/experiments"
LABELLER, ADMIN = {"Authorization": f"Bearer {FEEDBACK_KEY}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
WORSE = "8.7.0"  # a real xgboost trained on labels skewed toward CANDIDATE: it rarely decides
QUIET = {"window_s": 20, "min_samples": 1_000_000, "health_period_s": 1, "health_timeout_s": 2}


def resolved_test_kois(n: int) -> list[tuple[str, str]]:
    """(KOI, its 2025 disposition) for test-star KOIs that are resolved, in name order."""
    from training.data import load_snapshot

    data = load_snapshot("2025-09-18")
    test = data.table[data.masks()[2]]
    resolved = test[test["koi_disposition"].isin(["CONFIRMED", "FALSE_POSITIVE"])]
    return list(zip(resolved["kepoi_name"], resolved["koi_disposition"]))[:n]


def send(items: list[dict], headers=LABELLER) -> requests.Response:
    return requests.post(FEEDBACK, json={"items": items, "source": "test"}, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def desk(serve_app, trained_registry):
    if not trained_registry.exists("xgboost", WORSE):
        _publish(trained_registry, "xgboost", "1.0.0", WORSE, skewed_xgboost())
    yield serve_app
    serve_app.deploy(with_router(serve_app, experiments={}))
    serve_app.wait_running()
    trained_registry.archive("xgboost", WORSE)  # the other tests see the trained versions only


def view() -> dict:
    response = requests.get(EXPERIMENTS, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_labels_join_by_request_id_and_by_koi_and_every_item_gets_its_outcome(desk, trained_registry):
    answer = requests.post(PREDICT, json={"features": as_json_row(held_out(1)[0]), "model": "xgboost"},
                           headers={"Authorization": f"Bearer {PREDICT_KEY}"}, timeout=30).json()
    request_id, predicted = answer["request_id"], answer["prediction"]
    (koi, label), = resolved_test_kois(403)[-1:]  # a KOI no other test here labels
    items = [{"request_id": request_id, "label": "CONFIRMED"}, {"request_id": "no-such-request", "label": "CONFIRMED"},
             {"koi": koi, "label": label}, {"koi": "K09999.99", "label": "CONFIRMED"},
             {"koi": koi, "label": "CANDIDATE"}, {"koi": 10 ** 400, "label": "CONFIRMED"},
             {"request_id": request_id, "label": "CONFIRMED", "extra": [[[]]]}, "not an object"]
    response = send(items)
    assert response.status_code == 200, response.text
    body = response.json()
    outcomes = [item["outcome"] for item in body["items"]]
    assert outcomes == ["joined", "unknown_request_id", "joined", "unknown_koi", "bad_label", "invalid", "invalid",
                        "invalid"], body
    assert "CANDIDATE is not ground truth" in body["items"][4]["reason"] and "items[4].label" in body["items"][4]["reason"]
    assert body["items"][7]["reason"].startswith("items[7]")
    graded = body["items"][0]["graded"]
    assert [(g["model"], g["version"], g["predicted"]) for g in graded] == [("xgboost", answer["version"], predicted)]
    assert graded[0]["correct"] == (predicted == "CONFIRMED") and "variant" not in graded[0]  # not an admin
    assert {g["model"] for g in body["items"][2]["graded"]} == {"keras_cnn", "xgboost", "random_forest"}
    assert body["stored"] == 2 and body["outcomes"]["invalid"] == 3
    # Stored before the answer, with the predictions each label graded.
    stored = dict(FeedbackLog(trained_registry.store).read_all())[body["batch"]]
    assert {(i.ref_kind, i.ref, i.label) for i in stored.items} == {("request_id", request_id, "CONFIRMED"),
                                                                    ("koi", koi, label)}
    # A later label replaces the earlier one; the same label again changes nothing.
    flipped = "FALSE_POSITIVE" if label == "CONFIRMED" else "CONFIRMED"
    again = send([{"koi": koi, "label": flipped}, {"koi": "KOI-" + koi[1:].lstrip("0"), "label": flipped},
                  {"request_id": request_id, "label": "CONFIRMED"}]).json()
    assert [item["outcome"] for item in again["items"]] == ["relabelled", "unchanged", "unchanged"], again
    # Its own scope, always: a predict key or no key is refused, even for a well-formed batch.
    assert send(items[:1], headers={"Authorization": f"Bearer {PREDICT_KEY}"}).status_code == 403
    assert send(items[:1], headers={}).status_code == 401
    assert send([]).status_code == 422 and "items" in send([]).json()["error"]
    assert send([items[0]] * 1001).status_code == 422


def test_a_worse_candidate_loses_weight_to_the_bandit_then_the_accuracy_trigger_rolls_it_back(desk):
    rules = {**QUIET, "accuracy_margin": 0.02, "accuracy_alpha": 0.05, "min_labels": 150}
    experiment = {"candidate": WORSE, "weight": 0.5, "policy": "thompson", "rollback": rules,
                  "bandit": {"min_weight": 0.05, "max_weight": 0.95, "update_s": 1, "min_step": 0.05}}
    desk.deploy(with_router(desk, experiments={"xgboost": experiment}))
    desk.wait_running()
    until(lambda: (v := view())["experiments"].get("xgboost", {}).get("experiment_id") == f"xgboost:{WORSE}"
          and v["experiments"]["xgboost"]["state"] == "running" and v["router"]["generation"] >= v["generation"], 60)
    labels = resolved_test_kois(400)
    first = send([{"koi": k, "label": d} for k, d in labels[:100]]).json()  # below min_labels: no verdict yet
    assert first["outcomes"].get("joined", 0) + first["outcomes"].get("unchanged", 0) + \
        first["outcomes"].get("relabelled", 0) == 100, first["outcomes"]

    def bandit_moved() -> bool:
        return any(e["action"] == "bandit_weight" for e in view()["events"])
    until(bandit_moved, 30)
    experiment_view = view()["experiments"]["xgboost"]
    assert experiment_view["state"] == "running" and experiment_view["weight_source"] == "bandit"
    assert 0.05 <= experiment_view["variants"]["candidate"]["weight"] < 0.5
    for start in range(100, 400, 100):
        send([{"koi": k, "label": d} for k, d in labels[start:start + 100]])
    until(lambda: view()["experiments"]["xgboost"]["state"] == "rolled_back", 30)
    rolled = view()["experiments"]["xgboost"]
    quality = {name: variant["quality"] for name, variant in rolled["variants"].items()}
    print(f"\naccuracy trigger: {rolled['reason']}; quality {quality}")
    assert "accuracy" in rolled["reason"] and "e-value" in rolled["reason"]
    assert quality["candidate"]["labelled"] >= 150 and quality["stable"]["labelled"] >= 150
    assert quality["candidate"]["accuracy"] < quality["stable"]["accuracy"] - 0.02
    for figure in ("log_loss", "brier", "ece"):
        assert quality["candidate"][figure] is not None and quality["stable"][figure] is not None
    events = [e for e in view()["events"] if e["experiment"] == f"xgboost:{WORSE}"]
    assert [e["action"] for e in events][-1] == "rolled_back"
    assert any(e["action"] == "bandit_weight" for e in events)

    def exported() -> bool:  # the figures and the outcomes reach Prometheus (this node's export)
        text = requests.get(f"{SERVE_URL}/metrics", timeout=30).text
        return ('ray_variant_accuracy{' in text and 'variant="candidate"' in text
                and 'ray_rollbacks_total{' in text and 'reason="accuracy"' in text
                and any(line.startswith("ray_feedback_total{") and 'outcome="joined"' in line
                        and float(line.rsplit(" ", 1)[1]) > 0 for line in text.splitlines()))
    until(exported, 30)


def acknowledged_then_killed(node, store, koi: str, label: str) -> None:
    """One label sent, the router and the controller SIGKILLed within 100 ms of its 200, and the
    batch found in the store. Every node runs on this machine: a replica's pid is a local process."""
    victims = [r["pid"] for name in ("Router", "ExperimentController") for r in node.replicas(name) if r.get("pid")]
    assert len(victims) >= 2, victims
    response = send([{"koi": koi, "label": label}])
    acknowledged = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - acknowledged < 0.1
    assert response.status_code == 200, response.text
    stored = dict(FeedbackLog(store).read_all())
    assert [(i.ref, i.label) for i in stored[response.json()["batch"]].items] == [(koi, label)]
    node.wait_running(timeout=180)


def test_an_acknowledged_batch_survives_sigkill_of_the_router_and_the_controller(desk, trained_registry):
    (koi, label), = resolved_test_kois(401)[-1:]
    acknowledged_then_killed(desk, trained_registry.store, koi, label)
    # The restarted controller replayed the log: the same label again is no news to it.
    until(lambda: send([{"koi": koi, "label": label}]).json().get("outcomes") == {"unchanged": 1}, 60)


TEMPLATES = {  # where a hostile value goes in a feedback body -> the field its refusal names
    "koi": ('{"items": [{"koi": {v}, "label": "CONFIRMED"}]}', "items"),
    "request_id": ('{"items": [{"request_id": {v}, "label": "CONFIRMED"}]}', "items"),
    "label": ('{"items": [{"koi": "K00752.01", "label": {v}}]}', "items"),
    "items": ('{"items": {v}}', "items"),
    "source": ('{"items": [{"koi": "K00752.01", "label": "CONFIRMED"}], "source": {v}}', "source"),
}


@pytest.mark.parametrize("where", sorted(TEMPLATES))
def test_hostile_values_get_a_4xx_naming_the_field_or_an_item_outcome_naming_the_item(desk, where):
    from .test_fuzz import HOSTILE_VALUES

    template, field = TEMPLATES[where]
    for name, value in HOSTILE_VALUES.items():
        body = template.replace("{v}", value).encode()
        response = requests.post(FEEDBACK, data=body, headers={**LABELLER, "Content-Type": "application/json"},
                                 timeout=60)
        if response.status_code == 200:  # the body parsed: the item carries its own refusal
            item, = response.json()["items"]
            assert item["outcome"] in ("invalid", "bad_label") and item["reason"].startswith("items[0]"), (name, item)
        else:
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
            error = response.json()["error"]
            assert field in error or error.startswith("body"), (name, error[:300])


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_feedback_bodies_never_get_a_500(desk, mode):
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    from .test_fuzz import CHECKS, EXAMPLES, OPERATIONS

    operation = OPERATIONS["POST /api/v1/feedback"]

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=SERVE_URL, headers=LABELLER, timeout=60)
        case.validate_response(response, checks=CHECKS)
    run()
