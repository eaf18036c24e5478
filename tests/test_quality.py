"""Live quality from delayed ground truth (serve_app/quality.py): each (row, version) unit counts
once, a relabel moves its counts, and the figures (accuracy, log-loss, Brier score, ECE) equal an
independent numpy computation over the current labels. Row digests identify equal rows. No Ray."""
from __future__ import annotations

import numpy as np
import pytest

from runtimes.schema import LABELS
from serve_app.quality import QualityBook, VersionQuality, row_digest

CONFIRMED, FALSE_POSITIVE = LABELS.index("CONFIRMED"), LABELS.index("FALSE_POSITIVE")
FIGURES = ("accuracy", "log_loss", "brier", "ece")


def expected_figures(probabilities: np.ndarray, labels: list[str]) -> dict:
    """The figures from scratch, by their textbook definitions, over every unit at once."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.array([LABELS.index(label) for label in labels])
    n = len(y)
    predicted = p.argmax(axis=1)
    right = predicted == y
    one_hot = np.eye(len(LABELS))[y]
    confidence = p[np.arange(n), predicted]
    bins = np.minimum(np.floor(confidence * 10).astype(int), 9)  # ten equal-width bins, 1.0 in the last
    ece = sum(abs(right[bins == b].sum() - confidence[bins == b].sum()) for b in range(10)) / n
    return {"labelled": n, "correct": int(right.sum()), "accuracy": right.mean(),
            "log_loss": float(np.mean(-np.log(np.clip(p[np.arange(n), y], 1e-15, None)))),
            "brier": float(np.mean(((p - one_hot) ** 2).sum(axis=1))), "ece": float(ece)}


def assert_figures(summary: dict, expected: dict) -> None:
    assert summary["labelled"] == expected["labelled"] and summary["correct"] == expected["correct"]
    for name in FIGURES:  # the summary rounds to 6 decimals
        assert summary[name] == pytest.approx(expected[name], abs=1e-6), name


def random_units(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    probabilities = rng.dirichlet([0.7, 0.5, 0.7], size=n)
    labels = rng.choice(["CONFIRMED", "FALSE_POSITIVE"], size=n).tolist()
    return probabilities, labels


# ---- one unit per (row, version) --------------------------------------------------------------------

def test_a_unit_added_again_with_the_same_label_counts_once():
    quality = VersionQuality()
    p = [0.7, 0.2, 0.1]
    assert quality.add("row-1", "CONFIRMED", p) == "new"
    before = quality.summary()
    for _ in range(5):
        assert quality.add("row-1", "CONFIRMED", p) == "same"
    assert quality.summary() == before
    assert before["labelled"] == 1 and before["correct"] == 1 and before["relabels"] == 0
    assert quality.add("row-2", "CONFIRMED", p) == "new"
    assert quality.labelled == 2


def test_a_relabel_moves_the_counts_and_every_figure_matches_a_fresh_computation():
    rng = np.random.default_rng(7)
    probabilities, labels = random_units(rng, 300)
    quality = VersionQuality()
    for i, (p, label) in enumerate(zip(probabilities, labels)):
        assert quality.add(i, label, p) == "new"
    assert_figures(quality.summary(), expected_figures(probabilities, labels))

    flipped = rng.choice(300, size=80, replace=False)
    current = list(labels)
    for i in flipped:
        current[i] = "FALSE_POSITIVE" if labels[i] == "CONFIRMED" else "CONFIRMED"
        assert quality.add(int(i), current[i], probabilities[i]) == "relabelled"
    for i in rng.choice(300, size=40, replace=False):  # the current label again: nothing moves
        assert quality.add(int(i), current[i], probabilities[i]) == "same"
    summary = quality.summary()
    assert summary["relabels"] == 80 and summary["labelled"] == 300
    assert_figures(summary, expected_figures(probabilities, current))

    # Flipped back: the sums return to the original labels' figures (nothing double-counted).
    for i in flipped:
        assert quality.add(int(i), labels[i], probabilities[i]) == "relabelled"
    assert quality.summary()["relabels"] == 160
    assert_figures(quality.summary(), expected_figures(probabilities, labels))


def test_a_relabel_keeps_the_probabilities_the_version_first_gave():
    quality = VersionQuality()
    quality.add("row", "CONFIRMED", [0.9, 0.05, 0.05])
    assert quality.add("row", "FALSE_POSITIVE", [0.0, 0.0, 1.0]) == "relabelled"
    assert_figures(quality.summary(), expected_figures(np.array([[0.9, 0.05, 0.05]]), ["FALSE_POSITIVE"]))


def test_the_figures_equal_an_independent_numpy_computation_on_random_data():
    rng = np.random.default_rng(2024)
    probabilities, labels = random_units(rng, 2000)
    # Edges: a certain and right answer (confidence 1.0, the last bin), a label given probability 0
    # (log-loss clipped at 1e-15), an undecided CANDIDATE prediction (always wrong), bin edges.
    edges = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25],
                      [0.3, 0.3, 0.4], [0.2, 0.1, 0.7]])
    edge_labels = ["CONFIRMED", "FALSE_POSITIVE", "CONFIRMED", "CONFIRMED", "FALSE_POSITIVE", "FALSE_POSITIVE",
                   "FALSE_POSITIVE"]
    probabilities, labels = np.vstack([probabilities, edges]), labels + edge_labels
    quality = VersionQuality()
    for i, (p, label) in enumerate(zip(probabilities, labels)):
        quality.add(("request", i), label, p)
    expected = expected_figures(probabilities, labels)
    assert_figures(quality.summary(), expected)
    assert quality.correct == expected["correct"] and quality.labelled == len(labels)


def test_a_certain_wrong_answer_is_clipped_not_infinite():
    quality = VersionQuality()
    quality.add("row", "FALSE_POSITIVE", [1.0, 0.0, 0.0])
    summary = quality.summary()
    assert summary["accuracy"] == 0.0 and summary["brier"] == 2.0 and summary["ece"] == 1.0
    assert summary["log_loss"] == pytest.approx(-np.log(1e-15), abs=1e-6)  # 34.54, not inf


def test_an_empty_version_has_no_figures():
    summary = VersionQuality().summary()
    assert summary == {"labelled": 0, "correct": 0, "accuracy": None, "log_loss": None, "brier": None, "ece": None,
                       "relabels": 0}


@pytest.mark.parametrize("label", ["CANDIDATE", "MAYBE", "confirmed", ""])
def test_an_unresolved_or_unknown_label_is_refused_and_counts_nothing(label):
    quality = VersionQuality()
    quality.add("row", "CONFIRMED", [0.6, 0.2, 0.2])
    before = quality.summary()
    with pytest.raises(ValueError, match="label must be one of"):
        quality.add("other", label, [0.6, 0.2, 0.2])
    with pytest.raises(ValueError):
        quality.add("row", label, [0.6, 0.2, 0.2])  # not as a relabel either
    assert quality.summary() == before


def test_units_past_max_units_are_reported_not_counted():
    quality = VersionQuality(max_units=3)
    for i in range(3):
        assert quality.add(i, "CONFIRMED", [0.8, 0.1, 0.1]) == "new"
    assert quality.add(3, "CONFIRMED", [0.8, 0.1, 0.1]) == "unstored"
    assert quality.add(3, "CONFIRMED", [0.8, 0.1, 0.1]) == "unstored"  # still not held
    assert quality.unstored == 2 and quality.labelled == 3
    # A unit already held can still be relabelled at the bound.
    assert quality.add(0, "FALSE_POSITIVE", [0.8, 0.1, 0.1]) == "relabelled"
    assert quality.summary()["correct"] == 2 and quality.labelled == 3


def test_the_book_keeps_each_model_version_apart():
    book = QualityBook(max_units=2)
    assert book.add("xgboost", "1.0.0", "row", "CONFIRMED", [0.9, 0.05, 0.05]) == "new"
    assert book.add("xgboost", "1.1.0", "row", "CONFIRMED", [0.1, 0.1, 0.8]) == "new"  # same row, other version
    assert book.add("random_forest", "1.0.0", "row", "FALSE_POSITIVE", [0.9, 0.05, 0.05]) == "new"
    assert book.summary("xgboost", "1.0.0")["accuracy"] == 1.0
    assert book.summary("xgboost", "1.1.0")["accuracy"] == 0.0
    assert book.summary("random_forest", "1.0.0")["accuracy"] == 0.0
    assert book.of("xgboost", "1.0.0").max_units == 2
    # Unknown and missing versions read as empty, and reading creates nothing.
    assert book.summary("xgboost", None)["labelled"] == 0
    assert book.summary("xgboost", "9.9.9")["labelled"] == 0
    assert set(book.versions) == {("xgboost", "1.0.0"), ("xgboost", "1.1.0"), ("random_forest", "1.0.0")}


# ---- row digests -------------------------------------------------------------------------------------

def _with_payload(value: np.ndarray, index: tuple, bits: int) -> np.ndarray:
    out = value.copy()
    out.view(np.uint64)[index] = bits
    return out


def test_equal_rows_have_equal_digests_whatever_their_nan_payloads():
    rows = np.array([[1.5, np.nan, -3.0, 0.25], [2.0, 4.0, np.nan, np.nan]])
    negative = rows.copy()
    negative[np.isnan(negative)] = -np.nan
    payloads = _with_payload(rows, (0, 1), 0x7FF0_0000_0000_0ABC)  # a signalling-style NaN with a payload
    payloads = _with_payload(payloads, (1, 2), 0xFFF8_0000_0000_0001)  # negative quiet NaN, payload 1
    assert np.isnan(payloads[0, 1]) and np.isnan(payloads[1, 2])
    assert np.signbit(negative[0, 1])
    expected = row_digest(rows)
    assert expected.dtype == np.uint64 and expected.shape == (2,)
    for variant in (negative, payloads, rows.tolist()):
        assert row_digest(variant).tolist() == expected.tolist()
    assert row_digest(rows).tolist() == expected.tolist()  # deterministic
    assert rows.view(np.uint64)[0, 1] != payloads.view(np.uint64)[0, 1]  # the input is left as it was


def test_float32_and_float64_of_the_same_values_have_equal_digests():
    rng = np.random.default_rng(3)
    single = rng.normal(size=(50, 36)).astype(np.float32)
    single[::7, 3] = np.nan
    assert row_digest(single).tolist() == row_digest(single.astype(np.float64)).tolist()


def test_different_rows_have_different_digests():
    rng = np.random.default_rng(11)
    rows = rng.normal(size=(500, 36))
    digests = row_digest(rows)
    assert len(set(digests.tolist())) == 500
    assert row_digest([[1.0, 2.0]])[0] != row_digest([[2.0, 1.0]])[0]  # order matters
    assert row_digest([[np.nan, 0.0]])[0] != row_digest([[0.0, 0.0]])[0]  # missing is not zero
    nudged = rows[:1].copy()
    nudged[0, 5] = np.nextafter(nudged[0, 5], np.inf)  # one ulp apart
    assert row_digest(nudged)[0] != digests[0]
    # A row's digest does not depend on its neighbours.
    assert row_digest(rows[10:11])[0] == digests[10]


def test_signed_zeros_are_equal_rows():
    assert np.array_equal(np.array([[-0.0, 1.0]]), np.array([[0.0, 1.0]]))
    assert row_digest([[-0.0, 1.0]])[0] == row_digest([[0.0, 1.0]])[0]
