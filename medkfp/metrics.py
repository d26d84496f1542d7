"""Classification metrics from a confusion matrix, with scikit-learn doing the arithmetic."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(
    y_true, y_pred, class_names: list[str] | tuple[str, ...]
) -> dict:
    """Accuracy, balanced accuracy, macro/weighted F1, confusion matrix and per-class
    precision / recall / F1 / specificity / support (rows actual, columns predicted)."""
    labels = list(range(len(class_names)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    total = matrix.sum()
    per_class = {}
    for i, name in enumerate(class_names):
        true_negative = total - matrix[i, :].sum() - matrix[:, i].sum() + matrix[i, i]
        negatives = total - matrix[i, :].sum()
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "specificity": float(true_negative / negatives) if negatives else 0.0,
            "support": int(support[i]),
        }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
    }


def metrics_from_confusion_matrix(matrix, class_names) -> dict:
    """The same metrics from a published confusion matrix (expands it to label pairs)."""
    matrix = np.asarray(matrix)
    y_true, y_pred = [], []
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            y_true.extend([i] * int(n))
            y_pred.extend([j] * int(n))
    return classification_metrics(np.array(y_true), np.array(y_pred), class_names)
