"""The fitted ensemble record: star folds, out-of-fold assembly, temperature and weight fits, the
shared combination rule and the record's validation. Ray-free and fast."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from runtimes.ensemble import EnsembleRecord, calibrate, combine
from training.data import load_snapshot, star_bucket
from training.ensemble_fit import (N_FOLDS, fit_record, fit_temperature, fit_weights, fold_ids, log_loss,
                                   out_of_fold, star_fold)


@pytest.fixture(scope="module")
def kepids() -> np.ndarray:
    return load_snapshot().kepid


def _record(**changes) -> EnsembleRecord:
    fields = dict(version="e1", members=["a", "b", "c"], weights={"a": 0.5, "b": 0.3, "c": 0.2},
                  temperatures={"a": 1.0, "b": 2.0, "c": 0.5}, method="test", fitted_on={"rows": 3},
                  excluded={})
    return EnsembleRecord(**{**fields, **changes})


def _dirichlet(rng: np.random.Generator, n: int, concentration: float = 1.0) -> np.ndarray:
    return rng.dirichlet(np.full(3, concentration), size=n)


def _sample_labels(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    cumulative = probabilities.cumsum(axis=1)
    return (rng.random((len(probabilities), 1)) > cumulative).sum(axis=1).clip(0, 2)


# ---- star folds

def test_star_fold_follows_the_documented_rule(kepids):
    folds = fold_ids(kepids)
    for kepid, fold in zip(kepids, folds):
        bucket = star_bucket(kepid)
        expected = None if bucket < 20 else (bucket - 20) // 16
        assert star_fold(kepid) == expected
        assert fold == (-1 if expected is None else expected)
    assert set(np.unique(folds)) == {-1, 0, 1, 2, 3, 4}


def test_folds_never_split_a_star_and_are_balanced(kepids):
    folds = fold_ids(kepids)
    star_folds: dict[int, set[int]] = {}
    for kepid, fold in zip(kepids, folds):
        star_folds.setdefault(int(kepid), set()).add(int(fold))
    assert all(len(f) == 1 for f in star_folds.values())
    sizes = np.bincount(folds[folds >= 0], minlength=N_FOLDS)
    share = sizes / sizes.sum()
    assert np.all(np.abs(share - 1 / N_FOLDS) < 0.03), sizes
    assert abs((folds == -1).mean() - 0.20) < 0.03


def test_out_of_fold_never_predicts_a_seen_star(kepids):
    folds = fold_ids(kepids)
    calls: list[int] = []

    def fit_predict(train_rows: np.ndarray, predict_rows: np.ndarray) -> np.ndarray:
        train_stars, predict_stars = set(kepids[train_rows]), set(kepids[predict_rows])
        assert not train_stars & predict_stars
        assert np.all(folds[train_rows] >= 0) and np.all(folds[predict_rows] >= 0)
        calls.append(len(predict_rows))
        # Each row's answer encodes the call that made it, to check the assembly below.
        return np.tile([len(calls), 0.0, 0.0], (len(predict_rows), 1))

    messages: list[str] = []
    out = out_of_fold(fit_predict, len(kepids), folds, messages.append)
    assert len(calls) == N_FOLDS and len(messages) == N_FOLDS
    test = folds == -1
    assert np.isnan(out[test]).all() and np.isfinite(out[~test]).all()
    # Fold k's rows were answered by call k + 1.
    assert np.array_equal(out[~test, 0], folds[~test] + 1)


def test_out_of_fold_refuses_bad_shapes():
    folds = np.array([0, 1, 2, 3, 4, -1])
    with pytest.raises(ValueError):
        out_of_fold(lambda train_rows, predict_rows: np.zeros((len(predict_rows), 2)), 6, folds)
    with pytest.raises(ValueError):
        out_of_fold(lambda train_rows, predict_rows: np.zeros((len(predict_rows), 3)), 6, np.array([0, 7, 1, 2, 3, 4]))


# ---- fits

def test_fit_temperature_recovers_a_known_sharpening():
    rng = np.random.default_rng(1)
    true = _dirichlet(rng, 20_000)
    y = _sample_labels(rng, true)
    overconfident = calibrate(true, 0.5)  # sharpened: T = 2 undoes it
    fitted = fit_temperature(overconfident, y)
    assert abs(fitted - 2.0) / 2.0 < 0.10, fitted
    assert log_loss(calibrate(overconfident, fitted), y) < log_loss(overconfident, y)
    # Already calibrated probabilities need no scaling.
    assert abs(fit_temperature(true, y) - 1.0) < 0.10


def test_fit_weights_prefers_the_informative_member():
    rng = np.random.default_rng(2)
    true = _dirichlet(rng, 5_000, 0.5)
    y = _sample_labels(rng, true)
    members = {"informative": 0.9 * true + 0.1 / 3, "noise": _dirichlet(rng, 5_000)}
    weights = fit_weights(members, y)
    assert weights["informative"] > weights["noise"]
    assert abs(sum(weights.values()) - 1) < 1e-9 and all(w >= 0 for w in weights.values())
    assert weights == fit_weights(dict(reversed(members.items())), y)  # deterministic, order-free
    mix = sum(weights[m] * p for m, p in members.items())
    assert log_loss(mix, y) <= min(log_loss(p, y) for p in members.values()) + 1e-9


def test_fit_weights_mixes_complementary_members():
    rng = np.random.default_rng(4)
    true = _dirichlet(rng, 5_000, 0.5)
    y = _sample_labels(rng, true)
    # Equally good members with independent errors: the mix beats each, so neither is dropped.
    members = {"x": 0.5 * true + 0.5 * _dirichlet(rng, 5_000), "y": 0.5 * true + 0.5 * _dirichlet(rng, 5_000)}
    weights = fit_weights(members, y)
    assert 0.3 < weights["x"] < 0.7 and abs(weights["x"] + weights["y"] - 1) < 1e-9
    mix = sum(weights[m] * p for m, p in members.items())
    assert log_loss(mix, y) < min(log_loss(p, y) for p in members.values()) - 0.01


def test_fit_record_on_out_of_fold_probabilities():
    rng = np.random.default_rng(3)
    n = 4_000
    true = _dirichlet(rng, n, 0.5)
    y = _sample_labels(rng, true)
    good = calibrate(0.9 * true + 0.1 / 3, 0.5)  # informative but over-confident
    noise = _dirichlet(rng, n)
    good[:500] = np.nan  # test-star rows
    record = fit_record("e1", {"good": good, "noise": noise}, y, excluded={"cnn": "no out-of-fold run"})
    assert record.members == ["good", "noise"]
    assert 1.5 < record.temperatures["good"] < 2.5
    assert record.weights["good"] > record.weights["noise"]
    facts = record.fitted_on
    assert facts["rows"] == n - 500 and facts["rows_left_out"] == 500 and facts["folds"] == N_FOLDS
    assert facts["log_loss"]["fitted"] < facts["log_loss"]["plain_average"]
    assert record.excluded["cnn"] == "no out-of-fold run"
    if record.weights["noise"] == 0:
        assert "noise" in record.excluded
    assert EnsembleRecord.from_json(record.to_json()) == record
    with pytest.raises(ValueError):
        fit_record("e1", {"good": good}, y, excluded={"good": "contradiction"})


# ---- the combination rule

def test_calibrate_rows_sum_to_one_and_survive_zeros():
    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    for t in (0.05, 1.0, 7.0):
        out = calibrate(p, t)
        assert np.isfinite(out).all() and np.allclose(out.sum(axis=1), 1)
    assert np.allclose(calibrate(p[1:], 1.0), p[1:])
    sharpened = calibrate(p[1:2], 0.5)
    assert np.allclose(sharpened, p[1:2] ** 2 / (p[1:2] ** 2).sum())


def test_combine_matches_a_hand_computation():
    record = _record()
    a = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    b = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    c = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    b_soft = np.sqrt(b) / np.sqrt(b).sum(axis=1, keepdims=True)  # T = 2
    c_sharp = c ** 2 / (c ** 2).sum(axis=1, keepdims=True)  # T = 0.5
    expected = 0.5 * a + 0.3 * b_soft + 0.2 * c_sharp
    out = combine(record, {"a": a, "b": b, "c": c})
    assert np.allclose(out, expected) and np.allclose(out.sum(axis=1), 1)


def test_combine_renormalizes_over_the_members_that_answered():
    record = _record()
    a = np.array([[0.2, 0.3, 0.5]])
    c = np.array([[0.7, 0.2, 0.1]])
    c_sharp = c ** 2 / (c ** 2).sum()
    out = combine(record, {"a": a, "c": c, "stranger": np.array([[1.0, 0.0, 0.0]])})
    assert np.allclose(out, (0.5 * a + 0.2 * c_sharp) / 0.7) and np.allclose(out.sum(), 1)
    zero = _record(weights={"a": 0.0, "b": 0.6, "c": 0.4}, excluded={"a": "only hurt"})
    with pytest.raises(ValueError):
        combine(zero, {"a": a})  # present but weightless
    with pytest.raises(ValueError):
        combine(record, {})
    with pytest.raises(ValueError):
        combine(record, {"a": a, "c": np.ones((2, 3)) / 3})  # mismatched rows


# ---- the record

@pytest.mark.parametrize("changes", [
    {"weights": {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.0}},  # unknown member
    {"weights": {"a": 0.5, "b": 0.5}},  # a member without a weight
    {"weights": {"a": 0.7, "b": 0.5, "c": -0.2}},  # negative
    {"weights": {"a": 0.5, "b": 0.3, "c": 0.3}},  # sums to 1.1
    {"weights": {"a": 0.5, "b": 0.3, "c": 0.19999}},  # off by 1e-5
    {"temperatures": {"a": 0.0, "b": 1.0, "c": 1.0}},
    {"temperatures": {"a": -1.0, "b": 1.0, "c": 1.0}},
    {"temperatures": {"a": 100.5, "b": 1.0, "c": 1.0}},
    {"temperatures": {"a": 1.0, "b": 1.0}},
    {"members": [], "weights": {}, "temperatures": {}},
    {"members": ["a", "a", "b", "c"]},
    {"excluded": {"a": "weighted yet excluded"}},
])
def test_record_refuses_bad_fields(changes):
    with pytest.raises(ValidationError):
        _record(**changes)


def test_record_accepts_edges():
    _record(weights={"a": 0.5, "b": 0.3, "c": 0.2 + 5e-7}, temperatures={"a": 100.0, "b": 0.01, "c": 1.0})


def test_json_round_trip_is_byte_identical():
    record = _record(fitted_on={"rows": 3, "log_loss": {"plain_average": 0.5, "fitted": 0.4}, "star_rule": "x"})
    data = record.to_json()
    again = EnsembleRecord.from_json(data)
    assert again == record and again.to_json() == data
    assert _record(weights={"c": 0.2, "b": 0.3, "a": 0.5}).to_json() == _record().to_json()  # key order free
