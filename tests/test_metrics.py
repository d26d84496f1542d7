"""Metrics: the COVID-19 study's published tables follow from its confusion matrices, and every
metric of the run summary (specificity, weighted F1, one-vs-rest ROC-AUC) on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from medkfp import vocab
from medkfp.metrics import (
    SCALARS,
    classification_metrics,
    metrics_from_confusion_matrix,
    ui_scalars,
)

# DESIGN.md, study 1: test-set confusion matrices (rows actual, columns predicted) and the
# per-class tables the study printed, in %, rounded: (recall, precision, F1) per class.
STUDY = {
    "A": {
        "matrix": [[689, 0, 3, 2], [5, 1152, 68, 0], [1, 92, 1941, 7], [0, 0, 9, 264]],
        "recall": [99, 94, 95, 97], "precision": [99, 93, 96, 97], "f1": [99, 93, 96, 97],
        "accuracy": 95.58,
    },
    "B": {
        "matrix": [[680, 3, 9, 2], [8, 1050, 129, 1], [13, 92, 1961, 9], [0, 0, 5, 271]],
        "recall": [98, 88, 95, 98], "precision": [97, 92, 93, 96], "f1": [97, 90, 94, 97],
        "accuracy": 93.60,
    },
    "C": {
        "matrix": [[673, 3, 15, 3], [1, 1090, 97, 0], [6, 69, 1987, 13], [0, 0, 1, 275]],
        "recall": [97, 92, 96, 100], "precision": [98, 94, 95, 95], "f1": [98, 93, 95, 97],
        "accuracy": 95.09,
    },
}


@pytest.mark.parametrize("model", sorted(STUDY))
def test_study_tables_follow_from_its_confusion_matrices(model):
    study = STUDY[model]
    metrics = metrics_from_confusion_matrix(study["matrix"], vocab.COVID_CLASSES)
    assert metrics["confusion_matrix"] == study["matrix"]
    assert round(100 * metrics["accuracy"], 2) == study["accuracy"]
    for i, name in enumerate(vocab.COVID_CLASSES):
        ours = metrics["per_class"][name]
        for key in ("recall", "precision", "f1"):
            # within 1 point of the printed, rounded value (C's COVID precision, 98.97%, is printed 98)
            assert abs(100 * ours[key] - study[key][i]) <= 1.0, (model, name, key, ours[key])
        assert ours["support"] == sum(study["matrix"][i])


def test_headline_result_is_model_a():
    accuracies = {m: metrics_from_confusion_matrix(s["matrix"], vocab.COVID_CLASSES)["accuracy"]
                  for m, s in STUDY.items()}
    assert max(accuracies, key=accuracies.get) == "A"
    assert sum(sum(row) for row in STUDY["A"]["matrix"]) == 4233  # the study's test split


def test_specificity_and_averages_on_a_small_matrix():
    # class a: TP 3, FN 1, FP 1, TN 4; class b: TP 2, FN 1, FP 1, TN 5; class c: no errors.
    matrix = [[3, 1, 0], [1, 2, 0], [0, 0, 2]]
    metrics = metrics_from_confusion_matrix(matrix, ["a", "b", "c"])
    assert metrics["per_class"]["a"]["specificity"] == pytest.approx(4 / 5)
    assert metrics["per_class"]["b"]["specificity"] == pytest.approx(5 / 6)
    assert metrics["per_class"]["c"]["specificity"] == pytest.approx(7 / 7)
    assert metrics["accuracy"] == pytest.approx(7 / 9)
    assert metrics["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 1) / 3)
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 0, 1, 1, 2, 2]
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert metrics["macro_roc_auc"] is None  # no probabilities, no ROC-AUC


def test_roc_auc_one_vs_rest_per_class_and_macro():
    rng = np.random.default_rng(0)
    y_true = np.array([0] * 20 + [1] * 15 + [2] * 10)
    logits = rng.normal(size=(45, 3)) + 2.0 * np.eye(3)[y_true]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = classification_metrics(y_true, probabilities.argmax(1), ["a", "b", "c"], probabilities)
    for i, name in enumerate("abc"):
        expected = roc_auc_score(y_true == i, probabilities[:, i])
        assert metrics["per_class"][name]["roc_auc"] == pytest.approx(expected)
    assert metrics["macro_roc_auc"] == pytest.approx(
        roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro")
    )


def test_roc_auc_is_none_for_a_class_absent_from_the_labels():
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    metrics = classification_metrics(y_true, probabilities.argmax(1), ["a", "b", "c"], probabilities)
    assert metrics["per_class"]["c"]["roc_auc"] is None
    assert metrics["per_class"]["c"]["support"] == 0
    assert metrics["macro_roc_auc"] == pytest.approx(1.0)  # over a and b, both perfectly ranked


def test_ui_scalars_are_flat_floats_with_per_class_recall():
    metrics = metrics_from_confusion_matrix(STUDY["A"]["matrix"], vocab.COVID_CLASSES)
    scalars = ui_scalars(metrics)
    assert set(SCALARS) - {"macro_roc_auc"} <= set(scalars)
    assert "macro_roc_auc" not in scalars  # undefined values are left out, not logged as 0
    assert scalars["recall_Viral_Pneumonia"] == metrics["per_class"]["Viral Pneumonia"]["recall"]
    assert all(isinstance(v, float) for v in scalars.values())
