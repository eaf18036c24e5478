"""The one feature schema: names, order, labels. Training, the registry's metadata and serving
validation all import it from here, so the column order cannot drift between them."""
from __future__ import annotations

import numpy as np

# (parameter, has uncertainty columns) in the KOI cumulative table's own order. Leaky vetting
# columns (koi_pdisposition, koi_score, koi_fpflag_*, kepler_name), ids, koi_tce_delivname and the
# all-empty koi_teq_err1/err2 are not features.
PARAMETERS: tuple[tuple[str, bool], ...] = (
    ("koi_period", True),
    ("koi_time0bk", True),
    ("koi_impact", True),
    ("koi_duration", True),
    ("koi_depth", True),
    ("koi_prad", True),
    ("koi_teq", False),
    ("koi_insol", True),
    ("koi_model_snr", False),
    ("koi_tce_plnt_num", False),
    ("koi_steff", True),
    ("koi_slogg", True),
    ("koi_srad", True),
    ("ra", False),
    ("dec", False),
    ("koi_kepmag", False),
)


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for parameter, has_errors in PARAMETERS:
        names.append(parameter)
        if has_errors:
            names += [f"{parameter}_err1", f"{parameter}_err2"]
    return tuple(names)


FEATURES: tuple[str, ...] = _feature_names()
N_FEATURES = len(FEATURES)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}
DTYPE = "float32"

LABELS: tuple[str, ...] = ("CONFIRMED", "CANDIDATE", "FALSE_POSITIVE")
N_CLASSES = len(LABELS)
# The archive writes "FALSE POSITIVE" with a space.
ARCHIVE_DISPOSITIONS = {"CONFIRMED": 0, "CANDIDATE": 1, "FALSE POSITIVE": 2}

assert N_FEATURES == 36, N_FEATURES


def input_schema() -> dict:
    return {"features": N_FEATURES, "dtype": DTYPE, "feature_names": list(FEATURES)}


def output_schema() -> dict:
    return {"classes": N_CLASSES, "labels": list(LABELS)}


def as_matrix(rows) -> np.ndarray:
    """Rows in schema order (None = missing) as a float32 matrix with NaN for missing."""
    matrix = np.asarray(rows, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != N_FEATURES:
        raise ValueError(f"expected shape [n, {N_FEATURES}], got {list(matrix.shape)}")
    return matrix.astype(np.float32)
