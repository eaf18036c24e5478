"""Request rows before and after a version is chosen. Ray-free.

A request is parsed once into every feature the service knows (the 36 table features, then the
33 diagnostics), NaN where a value is missing or was not sent; the dispatcher then projects it
onto the columns of the version the request resolves to. The rule:

- an object keyed by feature name may name any known feature; what the version needs and the
  row lacks is missing (null), and the answer lists it; names the version does not use are ignored;
- positional arrays of 36 values are the table features, accepted by every version (a version
  with diagnostics sees them as missing); 69 values are table + diagnostics, accepted only by
  versions whose schema has the diagnostics; any other length is refused.

Values are checked once, on the whole matrix: NaN, Infinity, 1e309, integers beyond float64 and
numbers beyond float32's range are errors naming the row and the feature."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtimes.schema import KNOWN_FEATURES, KNOWN_INDEX, N_FEATURES

from .errors import BadRequest

FLOAT32_MAX = float(np.finfo(np.float32).max)
WIDTHS = {N_FEATURES: "the table features", len(KNOWN_FEATURES): "the table features, then the diagnostics"}
ACCEPTED = " or ".join(f"{n} ({what})" for n, what in WIDTHS.items())


class RowError(ValueError):
    def __init__(self, row: int, message: str):
        super().__init__(message)
        self.row = row


@dataclass(frozen=True)
class FeatureRows:
    values: np.ndarray  # float32 [n, len(KNOWN_FEATURES)], NaN = missing
    positional: frozenset[int] = frozenset()  # the lengths of the positional rows, if any

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def of(cls, matrix: np.ndarray) -> "FeatureRows":
        """A positional matrix (36 or 69 columns), as the V2 protocol and the client send it."""
        matrix = np.asarray(matrix, dtype=np.float32)
        width = matrix.shape[1] if matrix.ndim == 2 else -1
        if width not in WIDTHS:
            raise BadRequest(f"features: expected rows of {ACCEPTED} values, got {width}")
        if width < len(KNOWN_FEATURES):
            padded = np.full((len(matrix), len(KNOWN_FEATURES)), np.nan, dtype=np.float32)
            padded[:, :width] = matrix
            matrix = padded
        return cls(matrix, frozenset({width}))

    def for_version(self, features: tuple[str, ...] | list[str], label: str) -> np.ndarray:
        """The columns `features` need, in their order; BadRequest when the version cannot take
        these rows (positional rows longer than its schema)."""
        too_long = [w for w in self.positional if w > len(features)]
        if too_long:
            raise BadRequest(f"features: {label} takes {len(features)} values per row; {max(too_long)} positional "
                             f"values are accepted only by versions whose schema has the diagnostics")
        if tuple(features) == KNOWN_FEATURES[:len(features)]:
            return np.ascontiguousarray(self.values[:, :len(features)])
        try:
            return np.ascontiguousarray(self.values[:, [KNOWN_INDEX[f] for f in features]])
        except KeyError as e:
            raise BadRequest(f"features: {label} needs feature {e} that this service does not know") from None

    def missing(self, features: tuple[str, ...] | list[str]) -> list[list[str]]:
        """Per row, the features the version needs that the row lacks."""
        taken = self.for_version(features, "")
        absent = np.isnan(taken)
        return [[features[j] for j in np.flatnonzero(row)] for row in absent]


def parse_rows(rows: list[list | dict]) -> FeatureRows:
    """Rows as sent (lists or objects, None = missing) -> FeatureRows; RowError names the row."""
    ordered, widths = [], set()
    for i, features in enumerate(rows):
        try:
            ordered.append(_row(features))
        except ValueError as e:
            raise RowError(i, str(e)) from None
        if isinstance(features, list):
            widths.add(len(features))
    try:
        matrix = np.array(ordered, dtype=np.float64)  # None -> NaN
    except OverflowError:  # an integer beyond float64
        matrix = None
    if matrix is not None and not np.isinf(matrix).any() and not (np.abs(matrix) > FLOAT32_MAX).any() \
            and int(np.isnan(matrix).sum()) == sum(row.count(None) for row in ordered):
        return FeatureRows(matrix.astype(np.float32), frozenset(widths))
    for i, row in enumerate(ordered):  # the slow path, for the message only
        for j, value in enumerate(row):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(float_or_inf(value))
                                          and abs(float(value)) <= FLOAT32_MAX):
                raise RowError(i, f"{KNOWN_FEATURES[j]} (position {j}): {shown(value)} is not a finite number "
                                  f"within float32's range (|x| <= {FLOAT32_MAX:.4g})")
    raise AssertionError("unreachable")


def _row(features: list | dict) -> list:
    """One row over every known feature, None for missing; ValueError names the offending field."""
    row: list = [None] * len(KNOWN_FEATURES)
    if isinstance(features, dict):
        unknown = [k for k in features if k not in KNOWN_INDEX]
        if unknown:
            raise ValueError(f"unknown feature name(s) {unknown[:5]}; expected names from GET /api/v1/schema")
        for name, value in features.items():
            row[KNOWN_INDEX[name]] = value
        return row
    if len(features) not in WIDTHS:
        raise ValueError(f"expected {ACCEPTED} values in schema order, got {len(features)}")
    row[:len(features)] = features
    return row


def shown(value: object) -> str:
    """A value as an error message shows it: its repr cut to 40 characters, or for an integer beyond
    float32 its size (repr refuses integers of over 4,300 digits with a ValueError of its own)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    return f"{value!r:.40}"


def float_or_inf(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf

