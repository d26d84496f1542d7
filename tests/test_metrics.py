"""Metrics: the COVID-19 study's tables, the run summary's metrics, bootstrap intervals and calibration.

The study's published tables follow from its confusion matrices; every metric of the run summary
(specificity, weighted F1, one-vs-rest ROC-AUC) is checked on hand-checked cases; then stratified
bootstrap intervals, expected calibration error and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from medkfp import vocab
from medkfp.metrics import (
    SCALARS,
    bootstrap_indices,
    calibration_metrics,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    matrix_scores,
    metrics_from_confusion_matrix,
    negative_log_likelihood,
    softmax,
    ui_scalars,
    uncalibrate,
)

# DESIGN.md, study 1: test-set confusion matrices (rows actual, columns predicted) and the
# per-class tables the study printed, in %, rounded: (recall, precision, F1) per class.
STUDY = {
    "A": {
        "matrix": [[689, 0, 3, 2], [5, 1152, 68, 0], [1, 92, 1941, 7], [0, 0, 9, 264]],
        "recall": [99, 94, 95, 97],
        "precision": [99, 93, 96, 97],
        "f1": [99, 93, 96, 97],
        "accuracy": 95.58,
    },
    "B": {
        "matrix": [[680, 3, 9, 2], [8, 1050, 129, 1], [13, 92, 1961, 9], [0, 0, 5, 271]],
        "recall": [98, 88, 95, 98],
        "precision": [97, 92, 93, 96],
        "f1": [97, 90, 94, 97],
        "accuracy": 93.60,
    },
    "C": {
        "matrix": [[673, 3, 15, 3], [1, 1090, 97, 0], [6, 69, 1987, 13], [0, 0, 1, 275]],
        "recall": [97, 92, 96, 100],
        "precision": [98, 94, 95, 95],
        "f1": [98, 93, 95, 97],
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
    accuracies = {
        m: metrics_from_confusion_matrix(s["matrix"], vocab.COVID_CLASSES)["accuracy"]
        for m, s in STUDY.items()
    }
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
    assert scalars["macro_f1_ci_low"] <= scalars["macro_f1"] <= scalars["macro_f1_ci_high"]
    assert all(isinstance(v, float) for v in scalars.values())


# --- bootstrap intervals ---------------------------------------------------------------------


def assert_inside_intervals(metrics: dict) -> None:
    """Every interval holds its point estimate and lies in [0, 1]."""
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = metrics["ci"][key]
        assert 0.0 <= lo <= metrics[key] <= hi <= 1.0, (key, lo, metrics[key], hi)
    for name, m in metrics["per_class"].items():
        for key in ("recall", "specificity"):
            lo, hi = m["ci"][key]
            assert 0.0 <= lo <= m[key] <= hi <= 1.0, (name, key, lo, m[key], hi)


@pytest.mark.parametrize("model", sorted(STUDY))
def test_study_intervals_hold_their_scores_and_are_narrow_on_4233_images(model):
    metrics = metrics_from_confusion_matrix(STUDY[model]["matrix"], vocab.COVID_CLASSES)
    assert set(metrics["ci"]) == {"accuracy", "balanced_accuracy", "macro_f1"}  # DESIGN.md
    assert_inside_intervals(metrics)
    lo, hi = metrics["ci"]["accuracy"]
    # normal approximation of a proportion's 95% interval: 1.96 * sqrt(p (1 - p) / n) each side
    p, n = metrics["accuracy"], 4233
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.15)


def test_study_a_and_b_accuracy_intervals_do_not_overlap():
    """The study's headline (A beats B) is larger than the sampling noise of its test set."""
    a = metrics_from_confusion_matrix(STUDY["A"]["matrix"], vocab.COVID_CLASSES)["ci"]["accuracy"]
    b = metrics_from_confusion_matrix(STUDY["B"]["matrix"], vocab.COVID_CLASSES)["ci"]["accuracy"]
    assert b[1] < a[0]


def test_bootstrap_is_seeded_stratified_and_fast():
    import time

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 4000)
    y_pred = np.where(rng.random(4000) < 0.85, y_true, rng.integers(0, 4, 4000))
    names = list("abcd")
    classification_metrics(y_true[:10], y_pred[:10], names)  # warm up imports
    started = time.process_time()  # CPU time: the machine's cores are shared
    first = classification_metrics(y_true, y_pred, names, seed=7)
    assert time.process_time() - started < 1.0
    assert classification_metrics(y_true, y_pred, names, seed=7) == first
    assert classification_metrics(y_true, y_pred, names, seed=8)["ci"] != first["ci"]
    assert_inside_intervals(first)
    index = bootstrap_indices(y_true, 1000, seed=0)
    assert index.shape == (1000, 4000)
    # stratified: every resample keeps each class's count
    assert (np.sort(y_true[index], axis=1) == np.sort(y_true)).all()


def test_vectorised_scores_of_a_resample_match_scikit_learn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 60)
    y_pred = np.where(rng.random(60) < 0.7, y_true, rng.integers(0, 3, 60))
    index = bootstrap_indices(y_true, 1000, seed=3)
    from medkfp.metrics import batched_confusion

    scores = matrix_scores(batched_confusion(y_true[index], y_pred[index], 3))
    for b in (0, 500, 999):
        t, p = y_true[index[b]], y_pred[index[b]]
        expected = classification_metrics(t, p, ["x", "y", "z"])
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert scores[key][b] == pytest.approx(expected[key])
        for i, name in enumerate("xyz"):
            assert scores["recall"][b, i] == pytest.approx(expected["per_class"][name]["recall"])
            assert scores["specificity"][b, i] == pytest.approx(expected["per_class"][name]["specificity"])


def test_small_test_splits_get_wide_intervals_and_few_resamples_are_refused():
    small = metrics_from_confusion_matrix([[7, 1], [2, 6]], ["benign", "malignant"])
    assert_inside_intervals(small)
    lo, hi = small["ci"]["macro_f1"]
    assert hi - lo > 0.2  # 16 images say little
    perfect = metrics_from_confusion_matrix([[5, 0], [0, 5]], ["benign", "malignant"])
    assert perfect["ci"]["accuracy"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="at least 1000 resamples"):
        classification_metrics([0, 1], [0, 1], ["a", "b"], resamples=100)


# --- calibration ---------------------------------------------------------------------------


def test_expected_calibration_error_on_a_hand_checked_case():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y_true = np.array([0, 1, 0, 1])
    # bins: confidence 0.9 (2 images, accuracy 0.5), 0.6 (2 images, accuracy 1.0)
    assert expected_calibration_error(probabilities, y_true) == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, int)) == 0.0


def over_confident_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 4-class model that is right ~75% of the time but ~99% sure: a stand-in
    for an over-fitted network, with a known answer (it needs T > 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), y] += 1.5
    return logits * 4.0, y


def test_temperature_fitted_on_validation_lowers_ece_on_a_held_out_split():
    val_logits, val_y = over_confident_logits(600, seed=0)
    test_logits, test_y = over_confident_logits(600, seed=1)  # held out: not used to fit
    temperature = fit_temperature(val_logits, val_y)
    assert 2.0 < temperature < 8.0  # undoes most of the x4 over-confidence
    # the NLL minimum: a little either side is worse
    nll = negative_log_likelihood(val_logits, val_y, temperature)
    assert nll < negative_log_likelihood(val_logits, val_y, temperature * 1.05)
    assert nll < negative_log_likelihood(val_logits, val_y, temperature / 1.05)
    before = expected_calibration_error(softmax(test_logits), test_y)
    after_probabilities = softmax(test_logits, temperature)
    after = expected_calibration_error(after_probabilities, test_y)
    assert before > 0.15 and after < before / 3
    # the top class never changes
    assert (after_probabilities.argmax(1) == test_logits.argmax(1)).all()
    calibration, reliability = calibration_metrics(after_probabilities, test_y, temperature)
    assert calibration == {
        "ece": pytest.approx(after),
        "ece_uncalibrated": pytest.approx(before),
        "temperature": temperature,
    }
    assert sum(b["count"] for b in reliability["uncalibrated"]) == 600
    np.testing.assert_allclose(uncalibrate(after_probabilities, temperature), softmax(test_logits), atol=1e-9)


def test_a_validation_split_without_errors_gets_laplaces_confidence_not_certainty():
    from medkfp.metrics import mean_confidence

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 40)
    logits = rng.normal(0, 0.3, (40, 3))
    logits[np.arange(40), y] += 1.0  # always right, but under-confident
    temperature = fit_temperature(logits, y)  # the NLL alone would fall all the way to T -> 0
    assert 0.05 < temperature < 1.0  # sharpened, not to certainty
    assert mean_confidence(logits, temperature) == pytest.approx(41 / 42, abs=1e-3)
    confident = logits * 20  # always right and already that sure: no evidence to rescale
    assert fit_temperature(confident, y) == 1.0
    assert fit_temperature(np.zeros((0, 2)), []) == 1.0
