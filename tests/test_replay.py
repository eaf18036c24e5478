"""The replay of the real history (training/replay.py), fast mode, on the trained registry: the worse
candidate is measured worse, caught by the accuracy trigger and starved by the bandit; every weight
change respects the policy's bounds and minimum step; the paired analysis counts what the runtimes
themselves say, recomputed here. No Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from runtimes import load
from runtimes.schema import LABELS
from runtimes.split import is_test_star
from training.replay import FAST, open_catalogue, replay

pytestmark = pytest.mark.trained


@pytest.fixture(scope="module")
def replayed(trained_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    return replay(trained_registry, fast=True, seed=0, out=out), out


def scenario(results: dict, name: str) -> dict:
    return next(s for s in results["scenarios"] if s["scenario"] == name)


def test_the_worse_candidate_is_measured_below_the_stable(replayed):
    worse = scenario(replayed[0], "a")
    assert worse["paired"]["candidate_accuracy"] < worse["paired"]["stable_accuracy"]
    live = worse["live"]
    assert live["candidate"]["labelled"] > 0 and live["candidate"]["accuracy"] < live["stable"]["accuracy"]


def test_the_trigger_fires_on_the_worse_candidate_for_its_accuracy(replayed):
    trigger = scenario(replayed[0], "a")["trigger"]
    assert trigger is not None and "accuracy" in trigger["reason"]
    assert min(trigger["stable_labels"], trigger["candidate_labels"]) >= FAST.min_labels
    assert 0 < trigger["labels"] <= scenario(replayed[0], "a")["labels_received"]


def test_weights_stay_in_bounds_move_by_at_least_min_step_and_fall_for_the_worse(replayed):
    for s in replayed[0]["scenarios"]:
        weight = s["start_weight"]
        for change in s["weight_changes"]:
            assert change["from"] == weight
            assert FAST.min_weight <= change["to"] <= FAST.max_weight
            was_in_bounds = FAST.min_weight <= weight <= FAST.max_weight
            assert abs(change["to"] - weight) >= FAST.min_step or not was_in_bounds
            weight = change["to"]
        assert s["final_weight"] == weight
    worse = scenario(replayed[0], "a")
    assert worse["weight_changes"] and worse["final_weight"] < worse["start_weight"]


def test_the_paired_analysis_counts_the_kois_the_runtimes_disagree_on(replayed, trained_registry):
    paired = scenario(replayed[0], "b")["paired"]
    catalogue = open_catalogue(trained_registry)
    kois = [k for k in catalogue.names if is_test_star(int(catalogue.kepids([k])[0]))]
    labelled = [k for k in kois if catalogue.disposition(k) in ("CONFIRMED", "FALSE_POSITIVE")]
    truth = np.array([LABELS.index(catalogue.disposition(k)) for k in labelled])
    right = {}
    for version in ("2.0.0", "2.1.0"):
        runtime = load("xgboost", trained_registry.pull("xgboost", version))
        right[version] = runtime.predict_proba(catalogue.features(labelled, runtime.features)).argmax(axis=1) == truth
    only_old, only_new = int((right["2.0.0"] & ~right["2.1.0"]).sum()), int((~right["2.0.0"] & right["2.1.0"]).sum())
    assert paired["labelled_kois"] == len(labelled) == replayed[0]["labelled_test_kois"]
    assert (paired["only_stable_right"], paired["only_candidate_right"]) == (only_old, only_new)
    assert paired["only_stable_right"] + paired["only_candidate_right"] == int((right["2.0.0"] != right["2.1.0"]).sum())
    assert paired["mcnemar_exact_p"] == pytest.approx(binomtest(only_old, only_old + only_new).pvalue, rel=1e-2)
    low, high = paired["interval_95"]
    assert low < paired["difference"] < high
    assert paired["difference"] == pytest.approx(right["2.1.0"].mean() - right["2.0.0"].mean(), abs=1e-4)


def test_the_json_and_the_png_are_written(replayed):
    results, out = replayed
    written = json.loads((out / "replay.json").read_text())
    assert [s["scenario"] for s in written["scenarios"]] == ["a", "b"]
    assert written["scenarios"][0]["trigger"] == results["scenarios"][0]["trigger"]
    assert all("series" not in s and s["paired"]["reading"] for s in written["scenarios"])
    png = (out / "replay.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
