"""Classification metrics of a model on a labelled set, with scikit-learn doing the arithmetic.

Rows of a confusion matrix are the actual class, columns the predicted one. Recall is the
sensitivity; specificity is computed from the matrix. ROC-AUC is one-vs-rest per class and
needs the predicted probabilities; it is None for a class with no positive or no negative
example, and the macro average is over the classes where it is defined.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

# The scalar metrics every evaluation reports (all: higher is better).
SCALARS = (
    "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1",
    "weighted_f1", "macro_roc_auc",
)


def specificity(matrix: np.ndarray, index: int) -> float:
    """True negatives / actual negatives of class `index` (0.0 when there are no negatives)."""
    total = matrix.sum()
    negatives = total - matrix[index, :].sum()
    true_negatives = negatives - (matrix[:, index].sum() - matrix[index, index])
    return float(true_negatives / negatives) if negatives else 0.0


def roc_auc_one_vs_rest(y_true, probabilities, n_classes: int) -> list[float | None]:
    """Per-class one-vs-rest ROC-AUC; None where the class or its complement is absent."""
    y_true = np.asarray(y_true)
    scores = []
    for i in range(n_classes):
        positives = y_true == i
        if positives.all() or not positives.any():
            scores.append(None)
        else:
            scores.append(float(roc_auc_score(positives, np.asarray(probabilities)[:, i])))
    return scores


def classification_metrics(
    y_true, y_pred, class_names: list[str] | tuple[str, ...], probabilities=None
) -> dict:
    """Every metric of the run summary for labels `y_true` and predictions `y_pred`.

    Args:
      y_true, y_pred: class indices into `class_names`.
      probabilities: optional [N, C] predicted probabilities, for ROC-AUC.
    Returns accuracy, balanced accuracy, macro precision / recall / F1, weighted F1, macro
    ROC-AUC (None without probabilities), class names, the confusion matrix and per class
    precision / recall / F1 / specificity / support / roc_auc.
    """
    labels = list(range(len(class_names)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    auc = (
        roc_auc_one_vs_rest(y_true, probabilities, len(labels))
        if probabilities is not None and len(y_true)
        else [None] * len(labels)
    )
    defined_auc = [a for a in auc if a is not None]
    weights = support / support.sum() if support.sum() else np.zeros(len(labels))
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "specificity": specificity(matrix, i),
            "support": int(support[i]),
            "roc_auc": auc[i],
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * weights).sum()),
        "macro_roc_auc": float(np.mean(defined_auc)) if defined_auc else None,
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
    }


def metrics_from_confusion_matrix(matrix, class_names) -> dict:
    """The same metrics from a published confusion matrix (expanded to label pairs)."""
    matrix = np.asarray(matrix)
    pairs = [(i, j) for i, row in enumerate(matrix) for j, n in enumerate(row) for _ in range(int(n))]
    y_true, y_pred = (np.array(v, dtype=np.int64) for v in zip(*pairs)) if pairs else ([], [])
    return classification_metrics(y_true, y_pred, class_names)


def ui_scalars(metrics: dict) -> dict[str, float]:
    """Flat scalars for the KFP UI's Metrics view: the SCALARS, then recall and specificity
    per class (`recall_<class>`); undefined values are left out."""
    scalars = {name: metrics[name] for name in SCALARS if metrics.get(name) is not None}
    for name, m in metrics["per_class"].items():
        key = name.replace(" ", "_")
        scalars[f"recall_{key}"] = m["recall"]
        scalars[f"specificity_{key}"] = m["specificity"]
    return scalars
