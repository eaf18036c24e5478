"""Out-of-fold predictions: every KOI scored by a model that never saw its star.

Non-test stars fall in five folds of whole stars (ensemble_fit.star_fold); each fold is predicted
by the version's recipe trained on the other four. Test stars are predicted by the version's own
model, which was trained without them. The file travels with the version, so the catalogue's
ranking and the ensemble's fit read exactly what was computed at training time.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np

from runtimes.out_of_fold import COLUMNS, FILE_NAME

from .data import Snapshot
from .ensemble_fit import N_FOLDS, fold_ids, out_of_fold

# The CNN's five extra fits per version would double the bootstrap: the catalogue ranking and the
# fitted ensembles use the tree families.
FOLD_MODELS = ("xgboost", "random_forest")


def write_out_of_fold(directory: Path, snapshot: Snapshot, test_probabilities: np.ndarray,
                      fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], what: str, progress) -> dict:
    folds = fold_ids(snapshot.kepid)
    progress(f"{what}: out-of-fold predictions, {N_FOLDS} star folds")
    probabilities = out_of_fold(fit_predict, len(folds), folds, progress)
    probabilities[folds < 0] = test_probabilities
    write_rows(directory, snapshot, np.where(folds < 0, "test", folds.astype(str)), probabilities)
    return {"file": FILE_NAME, "folds": N_FOLDS, "rows": len(folds),
            "rule": "non-test stars: fold (bucket - 20) // 16, each predicted by the recipe trained on the "
                    "other four folds; test stars: this version's model, trained without them"}


def write_rows(directory: Path, snapshot: Snapshot, folds: np.ndarray, probabilities: np.ndarray) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for name, kepid, fold, row in zip(snapshot.table["kepoi_name"], snapshot.kepid, folds, probabilities):
        writer.writerow([name, int(kepid), fold, *(f"{p:.9g}" for p in row)])
    path = Path(directory) / FILE_NAME
    path.write_text(buffer.getvalue())
    return path
