"""Test-set metrics: macro averages over the three labels, per-class figures, the confusion
matrix and the expected calibration error."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from runtimes.schema import LABELS

ECE_BINS = 15


def expected_calibration_error(y: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the confidence-weighted gap between confidence and accuracy, equal-width bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def evaluate(y: np.ndarray, probabilities: np.ndarray, evaluated_against: str) -> dict:
    predicted = probabilities.argmax(axis=1)
    labels = list(range(len(LABELS)))
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, labels=labels, average="macro",
                                                               zero_division=0)
    per_p, per_r, per_f, support = precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y, predicted)), 6),
        "precision": round(float(precision), 6),
        "recall": round(float(recall), 6),
        "f1_score": round(float(f1), 6),
        "roc_auc": round(float(roc_auc_score(y, probabilities, multi_class="ovr", average="macro", labels=labels)), 6),
        "averaging": "macro",
        "roc_auc_averaging": "one-vs-rest, macro",
        "evaluated_against": evaluated_against,
        "labels": list(LABELS),
        "test_samples": int(len(y)),
        "per_class": {label: {"precision": round(float(per_p[i]), 6), "recall": round(float(per_r[i]), 6),
                              "f1_score": round(float(per_f[i]), 6), "support": int(support[i])}
                      for i, label in enumerate(LABELS)},
        "confusion_matrix": {"rows": "true label", "columns": "predicted label",
                             "matrix": confusion_matrix(y, predicted, labels=labels).tolist()},
        "expected_calibration_error": round(expected_calibration_error(y, probabilities), 6),
        "ece_bins": ECE_BINS,
    }
