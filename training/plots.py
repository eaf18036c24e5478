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


def metrics_chart(rows: list[tuple[str, str, str, dict]], path: Path) -> Path:
    """Grouped bars: accuracy, macro-F1 and ROC-AUC of each (model, version, labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("accuracy", "f1_score", "roc_auc")
    names = [f"{m} {v}\n{a.removeprefix('koi_cumulative_')} labels" for m, v, a, _ in rows]
    figure, axis = plt.subplots(figsize=(max(8, 1.3 * len(rows)), 4.5))
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        values = [e[metric] for *_, e in rows]
        bars = axis.bar(np.arange(len(rows)) + (k - 1) * width, values, width, label=metric)
        axis.bar_label(bars, fmt="%.2f", fontsize=7)
    axis.set_xticks(range(len(rows)), names, fontsize=7)
    axis.set_ylim(0.6, 1.0)
    axis.set_ylabel("test stars (1,803 KOIs)")
    axis.set_title("kepler-serve models: test-set metrics (macro averages)")
    axis.legend(loc="upper left", ncols=3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(figure)
    return path
