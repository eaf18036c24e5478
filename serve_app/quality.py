"""Live quality from delayed ground truth: how often each model version was right once the true
labels came in. Ray-free.

A labelled unit is one (row, version): the same KOI asked a hundred times, or asked once by
request and once by name, is one unit, so a client repeating a question cannot weigh the figures
(units are identified by a digest of the row as the version computed it, `row_digest`). A later
label for a unit replaces the earlier one: the sums are corrected, never double-counted.

Figures, over the resolved labels (CONFIRMED and FALSE_POSITIVE):
  * accuracy: the predicted class (argmax of all three) is the label. A CANDIDATE prediction for
    a KOI later resolved is wrong: the model did not decide;
  * log-loss: mean -ln p(label), with p clipped at 1e-15;
  * Brier score: mean sum over the three classes of (p - one-hot)^2;
  * ECE (calibration): expected calibration error of the predicted class's probability over ten
    equal-width bins, sum over bins of |bin| / n * |accuracy in bin - mean confidence in bin|.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Hashable, Literal

import numpy as np

from runtimes.schema import LABELS

RESOLVED = ("CONFIRMED", "FALSE_POSITIVE")
_EPS = 1e-15
_BINS = 10
MAX_UNITS = 1_000_000  # per version; a unit costs ~200 bytes (its key, label and probabilities)


def canonical_rows(matrix) -> np.ndarray:
    """Rows [n, k] as contiguous float64 whose bytes are equal exactly when the rows are: one NaN
    (whatever payload or sign the input's had) and one zero. Keys the prediction cache too."""
    rows = np.array(matrix, dtype=np.float64, order="C", copy=True).reshape(len(matrix), -1)
    rows[np.isnan(rows)] = np.nan
    rows += 0.0  # -0.0 becomes 0.0
    return rows


def row_digest(matrix: np.ndarray) -> np.ndarray:
    """uint64 identities of rows [n, k], so that equal rows are one unit."""
    rows = canonical_rows(matrix)
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
                     for row in rows], dtype=np.uint64)


@dataclass
class _Sums:
    n: int = 0
    correct: int = 0
    log_loss: float = 0.0
    brier: float = 0.0
    bin_n: np.ndarray = field(default_factory=lambda: np.zeros(_BINS))
    bin_confidence: np.ndarray = field(default_factory=lambda: np.zeros(_BINS))
    bin_correct: np.ndarray = field(default_factory=lambda: np.zeros(_BINS))

    def add(self, label: int, p: np.ndarray, sign: int) -> None:
        predicted = int(p.argmax())
        right = int(predicted == label)
        one_hot = np.zeros(len(p))
        one_hot[label] = 1
        self.n += sign
        self.correct += sign * right
        self.log_loss += sign * -float(np.log(max(float(p[label]), _EPS)))
        self.brier += sign * float(((p - one_hot) ** 2).sum())
        b = min(int(p[predicted] * _BINS), _BINS - 1)
        self.bin_n[b] += sign
        self.bin_confidence[b] += sign * float(p[predicted])
        self.bin_correct[b] += sign * right


class VersionQuality:
    """One version's labelled units."""

    def __init__(self, max_units: int = MAX_UNITS):
        self.max_units = max_units
        self._units: dict[Hashable, tuple[int, np.ndarray]] = {}
        self._sums = _Sums()
        self.relabels = 0
        self.unstored = 0  # units past max_units: not counted, reported

    def add(self, unit: Hashable, label: str, probabilities) -> Literal["new", "relabelled", "same", "unstored"]:
        if label not in RESOLVED:
            raise ValueError(f"label must be one of {RESOLVED}, not {label!r}")
        index = LABELS.index(label)
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        held = self._units.get(unit)
        if held is not None:
            if held[0] == index:
                return "same"
            self._sums.add(held[0], held[1], -1)
            self._sums.add(index, held[1], +1)  # the probabilities a version gives a row never change
            self._units[unit] = (index, held[1])
            self.relabels += 1
            return "relabelled"
        if len(self._units) >= self.max_units:
            self.unstored += 1
            return "unstored"
        self._units[unit] = (index, p)
        self._sums.add(index, p, +1)
        return "new"

    @property
    def labelled(self) -> int:
        return self._sums.n

    @property
    def correct(self) -> int:
        return self._sums.correct

    def summary(self) -> dict:
        s = self._sums
        if s.n == 0:
            return {"labelled": 0, "correct": 0, "accuracy": None, "log_loss": None, "brier": None, "ece": None,
                    "relabels": self.relabels}
        filled = s.bin_n > 0
        ece = float(np.sum(np.abs(s.bin_correct[filled] - s.bin_confidence[filled])) / s.n)
        return {"labelled": s.n, "correct": s.correct, "accuracy": round(s.correct / s.n, 6),
                "log_loss": round(s.log_loss / s.n, 6), "brier": round(s.brier / s.n, 6), "ece": round(ece, 6),
                "relabels": self.relabels}


class QualityBook:
    """(model, version) -> its quality. Versions are immutable, so a version's figures hold in
    every experiment it takes part in, stable or candidate."""

    def __init__(self, max_units: int = MAX_UNITS):
        self.max_units = max_units
        self.versions: dict[tuple[str, str], VersionQuality] = {}

    def of(self, model: str, version: str) -> VersionQuality:
        key = (model, version)
        if key not in self.versions:
            self.versions[key] = VersionQuality(self.max_units)
        return self.versions[key]

    def add(self, model: str, version: str, unit: Hashable, label: str, probabilities) -> str:
        return self.of(model, version).add(unit, label, probabilities)

    def get(self, model: str, version: str | None) -> VersionQuality:
        """The version's quality, or an empty one (not kept) when it has no labels yet."""
        return self.versions.get((model, version)) or VersionQuality(self.max_units)

    def summary(self, model: str, version: str | None) -> dict:
        return self.get(model, version).summary()
