"""The out-of-fold predictions file a 2.x version carries (written by training/folds.py): per
KOI, its fold ("test" or 0..4) and probabilities from a model that never saw its star. Read by
the ensemble's fit and by serving's candidates ranking. Ray-free."""
from __future__ import annotations

import csv
import io

import numpy as np

from .schema import LABELS

FILE_NAME = "out_of_fold.csv"
COLUMNS = ("kepoi_name", "kepid", "fold", *(f"p_{label}" for label in LABELS))


def read_out_of_fold(data: bytes) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(KOI names, fold labels, probabilities [n, 3]) from a stored file."""
    rows = list(csv.reader(io.StringIO(data.decode())))
    if tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{FILE_NAME}: unexpected columns {rows[0]}")
    body = rows[1:]
    return ([r[0] for r in body], np.array([r[2] for r in body]),
            np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64))
