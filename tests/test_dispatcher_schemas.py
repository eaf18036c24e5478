"""The dispatcher's schema and ensemble stages without Ray: rows projected onto the version they
resolve to, the experiment eligibility rule, and fitted ensemble records (fakes: test_dispatcher)."""
from __future__ import annotations

import numpy as np
import pytest

from runtimes.ensemble import EnsembleRecord, calibrate
from runtimes.schema import DIAGNOSTICS, FEATURES, WITH_DIAGNOSTICS
from serve_app.errors import BadRequest

from .test_dispatcher import ANSWER, CTX, MODELS, ROWS, _book, make, run


def test_rows_are_projected_onto_the_schema_of_the_version_they_resolve_to():
    dispatcher, _, models, _ = make()
    wide = np.arange(2 * 69, dtype=np.float32).reshape(2, 69)
    answer = run(dispatcher.predict("xgboost", "2.1.0", wide, CTX))
    assert answer.features == WITH_DIAGNOSTICS and models.calls[-1] == ("xgboost", "2.1.0", 2)
    narrow = run(dispatcher.predict("xgboost", "2.1.0", wide[:, :36], CTX))  # 36 values: every version
    assert narrow.features == WITH_DIAGNOSTICS
    assert run(dispatcher.predict("xgboost", "1.1.0", wide[:, :36], CTX)).features == FEATURES
    with pytest.raises(BadRequest, match="1.1.0 takes 36 values per row; 69 positional"):
        run(dispatcher.predict("xgboost", "1.1.0", wide, CTX))


def test_named_features_reach_every_version_and_the_missing_ones_are_listed():
    from serve_app.feature_rows import parse_rows

    row = {"koi_period": 3.5, "koi_max_mult_ev": 12.0, "koi_count": 2}
    rows = parse_rows([row, dict(zip(WITH_DIAGNOSTICS, range(69)))])
    dispatcher, _, _, _ = make()
    for version, features in (("1.1.0", FEATURES), ("2.1.0", WITH_DIAGNOSTICS)):
        answer = run(dispatcher.predict("xgboost", version, rows, CTX))
        missing = rows.missing(answer.features)
        assert missing[1] == [] and set(missing[0]) == set(features) - set(row)
        taken = rows.for_version(features, version)
        assert taken.shape == (2, len(features)) and taken[0, 0] == 3.5
    assert rows.for_version(WITH_DIAGNOSTICS, "2.1.0")[0, 36 + DIAGNOSTICS.index("koi_max_mult_ev")] == 12.0


def test_a_request_the_candidate_schema_cannot_take_goes_to_stable_and_is_not_compared():
    """stable 2.1.0 (69 features), candidate 1.1.0 (36): 69 positional values are the stable
    variant's alone, and neither variant's statistics count them, so both see the same population."""
    dispatcher, registry, models, _ = make(experiments={"xgboost": {"candidate": "1.1.0", "weight": 1.0}})
    registry.aliases[("xgboost", "stable")] = "2.1.0"
    book = _book(1.0)
    book["experiments"]["xgboost"].update(candidate="1.1.0", candidate_version="1.1.0")
    dispatcher.traffic.adopt(book)
    wide = np.zeros((1, 69), dtype=np.float32)
    for _ in range(3):
        answer = run(dispatcher.predict("xgboost", None, wide, CTX))
        assert answer.variant == "stable" and answer.version == "2.1.0"
    assert not dispatcher.traffic.recorder.drain()
    answer = run(dispatcher.predict("xgboost", None, wide[:, :36], CTX))  # both can take 36 values
    assert answer.variant == "candidate" and answer.version == "1.1.0"
    assert {variant for _, variant, *_ in dispatcher.traffic.recorder.drain()} == {"candidate"}


def test_a_version_with_a_fitted_record_votes_with_it_and_explicit_weights_win():
    record = EnsembleRecord(version="2.1.0", members=["random_forest", "xgboost"],
                            weights={"random_forest": 0.25, "xgboost": 0.75},
                            temperatures={"random_forest": 0.5, "xgboost": 2.0}, method="test",
                            excluded={"keras_cnn": "not fitted"})
    dispatcher, registry, models, _ = make()
    registry.records[("ensemble", "2.1.0")] = record.to_json()
    registry.aliases[("ensemble", "stable")] = "2.1.0"
    answer = run(dispatcher.predict("ensemble", None, ROWS, CTX))
    expected = 0.25 * calibrate(np.array([ANSWER["random_forest"]]), 0.5) + \
        0.75 * calibrate(np.array([ANSWER["xgboost"]]), 2.0)
    np.testing.assert_allclose(answer.probabilities[0], expected[0], atol=1e-6)
    assert answer.version == "2.1.0" and answer.ensemble.record == "2.1.0"
    assert sorted(c[:2] for c in models.calls) == [("random_forest", "2.1.0"), ("xgboost", "2.1.0")]
    plain = run(dispatcher.predict("ensemble", "1.1.0", ROWS, CTX))  # no record: the configured weights
    assert plain.ensemble.record is None and sorted(plain.ensemble.members) == sorted(MODELS)
    explicit, registry, models, _ = make(ensemble_weights={"keras_cnn": 1.0, "xgboost": 1.0, "random_forest": 0.0})
    registry.records[("ensemble", "2.1.0")] = record.to_json()
    registry.aliases[("ensemble", "stable")] = "2.1.0"
    answer = run(explicit.predict("ensemble", None, ROWS, CTX))
    assert answer.ensemble.temperatures is None and answer.version == "2.1.0"
    np.testing.assert_allclose(answer.probabilities[0], (np.array(ANSWER["keras_cnn"]) + ANSWER["xgboost"]) / 2)
