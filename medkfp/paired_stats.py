"""Paired comparison of two classifiers: bootstrap interval of the metric difference, McNemar's exact test.

Both models are scored on one test split, image by image, so their scores differ only by
the models, not by the images. The bootstrap resamples images (with replacement, the same
resample for both models) and recomputes challenger minus champion on each resample; the
2.5th and 97.5th percentiles of those differences are the 95% interval. McNemar's exact
test looks only at the images where exactly one of the two is right: if both were equally
good, each such image would be equally likely to favour either, a fair coin (binomial).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from medkfp.vocab import CONFIDENCE

DEFAULT_RESAMPLES = 2000
MIN_RESAMPLES = 1000
# Metrics computed from a confusion matrix, so every resample is a few array operations.
LABEL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices [batch, actual, predicted] of label arrays shaped [batch, n]."""
    batch = y_true.shape[0]
    flat = (np.arange(batch)[:, None] * n_classes + y_true) * n_classes + y_pred
    counts = np.bincount(flat.ravel(), minlength=batch * n_classes * n_classes)
    return counts.reshape(batch, n_classes, n_classes).astype(np.float64)


def metric_from_confusions(matrices: np.ndarray, metric: str) -> np.ndarray:
    """`metric` of each confusion matrix in [batch, C, C], as metrics.classification_metrics
    computes it (classes without support or predictions count as 0, like zero_division=0)."""
    diagonal = np.diagonal(matrices, axis1=1, axis2=2)
    support = matrices.sum(axis=2)
    predicted = matrices.sum(axis=1)
    total = support.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, diagonal / support, 0.0)
        precision = np.where(predicted > 0, diagonal / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        if metric == "accuracy":
            return np.where(total > 0, diagonal.sum(axis=1) / total, 0.0)
        if metric == "balanced_accuracy":
            # scikit-learn averages recall over the classes present in y_true only
            present = support > 0
            return np.where(present.any(axis=1), (recall * present).sum(axis=1) / present.sum(axis=1), 0.0)
        if metric == "macro_f1":
            return f1.mean(axis=1)
        if metric == "weighted_f1":
            return np.where(total > 0, (f1 * support).sum(axis=1) / total, 0.0)
    raise ValueError(f"metric {metric!r} is not computed from labels: use one of {', '.join(LABEL_METRICS)}")


def macro_auc_batch(y_true: np.ndarray, probabilities: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro one-vs-rest ROC-AUC of each row: labels [batch, n], probabilities [batch, n, C].

    AUC is the Mann-Whitney statistic from ranks (ties averaged, as roc_auc_score); a class
    absent from a row, or present in every image of it, is left out of that row's average.
    """
    n = y_true.shape[1]
    scores = np.full((y_true.shape[0], n_classes), np.nan)
    for c in range(n_classes):
        positives = y_true == c
        n_pos = positives.sum(axis=1)
        n_neg = n - n_pos
        ranks = stats.rankdata(probabilities[..., c], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = ((ranks * positives).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        scores[:, c] = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    with np.errstate(invalid="ignore"):
        defined = ~np.isnan(scores)
        return np.where(
            defined.any(axis=1), np.nansum(scores, axis=1) / np.maximum(defined.sum(axis=1), 1), np.nan
        )


def bootstrap_difference(
    y_true,
    challenger,
    champion,
    n_classes: int,
    metric: str = "macro_f1",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    challenger_probabilities=None,
    champion_probabilities=None,
) -> dict:
    """Bootstrap interval of metric(challenger) - metric(champion) on the same images.

    Args:
      y_true, challenger, champion: class indices per image (the two models' predictions).
      metric: one of LABEL_METRICS, or macro_roc_auc (then both probability arrays [N, C]).
      n_resamples: at least MIN_RESAMPLES; seed makes the interval reproducible.
    Returns {"difference", "ci": [low, high], "resamples", "seed", "confidence", "method"}.
    Raises ValueError for too few resamples, mismatched lengths or an unknown metric.
    """
    y_true, a, b = (np.asarray(v, dtype=np.int64) for v in (y_true, challenger, champion))
    if not len(y_true) == len(a) == len(b):
        raise ValueError(f"paired predictions differ in length: {len(y_true)}, {len(a)}, {len(b)}")
    if n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be at least {MIN_RESAMPLES}, got {n_resamples}")
    if not len(y_true):
        return {
            "difference": None,
            "ci": [None, None],
            "resamples": 0,
            "seed": seed,
            "confidence": confidence,
            "method": "percentile",
        }
    if metric == "macro_roc_auc":
        if challenger_probabilities is None or champion_probabilities is None:
            raise ValueError("macro_roc_auc needs both models' probabilities")
        pa, pb = np.asarray(challenger_probabilities), np.asarray(champion_probabilities)

        def statistic(index, axis=-1):
            index = np.atleast_2d(index.astype(np.int64))
            truth = y_true[index]
            return macro_auc_batch(truth, pa[index], n_classes) - macro_auc_batch(truth, pb[index], n_classes)

    elif metric in LABEL_METRICS:

        def statistic(index, axis=-1):
            index = np.atleast_2d(index.astype(np.int64))
            truth = y_true[index]
            difference = metric_from_confusions(
                _confusions(truth, a[index], n_classes), metric
            ) - metric_from_confusions(_confusions(truth, b[index], n_classes), metric)
            return difference

    else:
        raise ValueError(
            f"no paired bootstrap for metric {metric!r}: use one of "
            f"{', '.join((*LABEL_METRICS, 'macro_roc_auc'))}"
        )
    # Resampling the image indices resamples labels and both models' predictions together:
    # the pairing is kept. Percentile intervals stay defined when every difference is equal.
    observed = float(statistic(np.arange(len(y_true)))[0])
    result = stats.bootstrap(
        (np.arange(len(y_true), dtype=np.float64),),
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
        batch=100,
    )
    low, high = result.confidence_interval
    return {
        "difference": float(observed),
        "ci": [float(low), float(high)],
        "resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
        "method": "percentile",
    }


def mcnemar_exact(y_true, challenger, champion) -> dict:
    """McNemar's exact test on the images where exactly one of the two models is right.

    Returns {"challenger_only_right", "champion_only_right", "discordant", "p_value"}:
    the two-sided binomial p-value of the discordant counts under p = 0.5 (1.0 when the
    models never disagree on correctness).
    """
    y_true, a, b = (np.asarray(v, dtype=np.int64) for v in (y_true, challenger, champion))
    right_a, right_b = a == y_true, b == y_true
    only_a = int((right_a & ~right_b).sum())
    only_b = int((right_b & ~right_a).sum())
    discordant = only_a + only_b
    p_value = float(stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "challenger_only_right": only_a,
        "champion_only_right": only_b,
        "discordant": discordant,
        "p_value": p_value,
    }


def compare(
    y_true,
    challenger,
    champion,
    n_classes: int,
    metric: str,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
    **probabilities,
) -> dict:
    """Both paired statistics: bootstrap_difference(...) merged with mcnemar_exact(...)."""
    return {
        **bootstrap_difference(
            y_true, challenger, champion, n_classes, metric, n_resamples, seed, **probabilities
        ),
        **mcnemar_exact(y_true, challenger, champion),
        "images": int(len(np.asarray(y_true))),
    }
