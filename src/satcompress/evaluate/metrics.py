"""Classification metrics from predictions: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Top-1 accuracy, per-class accuracy and the confusion matrix.

    Args:
        predictions: Predicted class indices, shape (N,).
        labels: True class indices, shape (N,).
        classes: Class names in index order.

    Returns:
        ``accuracy`` (0..1), ``per_class_accuracy`` (name -> 0..1, ``None`` for a class with
        no samples), ``confusion_matrix`` (rows: true class, columns: predicted) and
        ``num_samples``.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {labels.shape[0]} labels")
    k = len(classes)
    confusion = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    support = confusion.sum(axis=1)
    per_class = {
        name: (round(float(confusion[i, i] / support[i]), 6) if support[i] else None)
        for i, name in enumerate(classes)
    }
    accuracy = float(np.trace(confusion) / max(1, labels.size))
    return {
        "accuracy": round(accuracy, 6),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "num_samples": int(labels.size),
    }
