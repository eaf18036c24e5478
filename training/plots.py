"""Pictures of a model's test-set behaviour: confusion matrix and one-vs-rest ROC curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.schema import LABELS


def evaluation_plot(y: np.ndarray, probabilities: np.ndarray, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, confusion_matrix, roc_curve

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    matrix = confusion_matrix(y, probabilities.argmax(axis=1), labels=range(len(LABELS)))
    left.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        left.text(j, i, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    left.set_xticks(range(len(LABELS)), LABELS, rotation=15)
    left.set_yticks(range(len(LABELS)), LABELS)
    left.set_xlabel("predicted")
    left.set_ylabel("true")
    left.set_title("confusion matrix (test stars)")
    for k, label in enumerate(LABELS):
        fpr, tpr, _ = roc_curve(y == k, probabilities[:, k])
        right.plot(fpr, tpr, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    right.plot([0, 1], [0, 1], color="grey", linestyle=":")
    right.set_xlabel("false positive rate")
    right.set_ylabel("true positive rate")
    right.set_title("ROC, one-vs-rest")
    right.legend(loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    # Fixed metadata keeps the PNG's bytes a function of the model alone.
    figure.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(figure)
    return path
