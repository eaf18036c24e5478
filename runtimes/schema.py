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


FEATURES: tuple[str, ...] = _feature_names()  # the 36 table features: every 1.x version's schema
N_FEATURES = len(FEATURES)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}

# The 33 vetting diagnostics (data/koi_diagnostics_2022-12-28.csv.gz), in that file's column
# order: measurements vetting uses, never its decisions (koi_score, koi_fpflag_*, koi_pdisposition
# and koi_comment are not in the file). Versions 2.x take the table features, then these.
DIAGNOSTICS: tuple[str, ...] = (
    "koi_count", "koi_gmag", "koi_rmag", "koi_imag", "koi_zmag", "koi_jmag", "koi_hmag", "koi_kmag",
    "koi_num_transits", "koi_max_sngle_ev", "koi_max_mult_ev", "koi_bin_oedp_sig",
    "koi_ldm_coeff4", "koi_ldm_coeff3", "koi_ldm_coeff2", "koi_ldm_coeff1",
    "koi_sma", "koi_ror", "koi_dor", "koi_incl", "koi_smet", "koi_smass",
    "koi_fwm_stat_sig", "koi_fwm_sra", "koi_fwm_sdec", "koi_fwm_srao", "koi_fwm_sdeco", "koi_fwm_prao",
    "koi_fwm_pdeco", "koi_dicco_mra", "koi_dicco_mdec", "koi_dicco_msky", "koi_srho",
)
WITH_DIAGNOSTICS: tuple[str, ...] = FEATURES + DIAGNOSTICS
# Every feature set a version may declare, by name; a version's metadata lists its features.
FEATURE_SETS: dict[str, tuple[str, ...]] = {"table": FEATURES, "table+diagnostics": WITH_DIAGNOSTICS}
KNOWN_FEATURES: tuple[str, ...] = WITH_DIAGNOSTICS  # every name a request may use
KNOWN_INDEX = {name: i for i, name in enumerate(KNOWN_FEATURES)}
DTYPE = "float32"

LABELS: tuple[str, ...] = ("CONFIRMED", "CANDIDATE", "FALSE_POSITIVE")
N_CLASSES = len(LABELS)
# The archive writes "FALSE POSITIVE" with a space.
ARCHIVE_DISPOSITIONS = {"CONFIRMED": 0, "CANDIDATE": 1, "FALSE POSITIVE": 2}

assert N_FEATURES == 36 and len(DIAGNOSTICS) == 33 and len(set(WITH_DIAGNOSTICS)) == 69


def input_schema(features: tuple[str, ...] = FEATURES) -> dict:
    return {"features": len(features), "dtype": DTYPE, "feature_names": list(features)}


def output_schema() -> dict:
    return {"classes": N_CLASSES, "labels": list(LABELS)}


def as_matrix(rows) -> np.ndarray:
    """Rows in schema order (None = missing) as a float32 matrix with NaN for missing."""
    matrix = np.asarray(rows, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != N_FEATURES:
        raise ValueError(f"expected shape [n, {N_FEATURES}], got {list(matrix.shape)}")
    return matrix.astype(np.float32)
