"""Scoring SavedModels on labelled images: the evaluate step, the champion gate and external validation.

The push step's champion gate uses it to score the challenger and the served champion on
the same images (this run's test split): the split is read once, each model runs its
serving signature over the stored PNG bytes exactly as the evaluate step does, and the
per-image predictions are kept for paired statistics.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medkfp.errors import InvalidInputError
from medkfp.imaging import load_signature, predict_bytes
from medkfp.metrics import classification_metrics
from medkfp.shards import download_shards, read_split
from medkfp.store import open_store


def score_probabilities(probabilities: np.ndarray, labels, class_names, model: str) -> dict:
    """Metrics of predicted probabilities [N, C] against class indices `labels`.

    Raises ValueError when the model's number of outputs is not the number of classes.
    """
    if not len(labels):
        return classification_metrics(labels, np.array([], dtype=np.int64), class_names)
    if probabilities.shape[1] != len(class_names):
        raise InvalidInputError(
            f"the model {model} predicts {probabilities.shape[1]} classes but the data has "
            f"{len(class_names)} ({', '.join(class_names)}): check --dataset and the model"
        )
    return classification_metrics(labels, probabilities.argmax(axis=1), class_names, probabilities)


@dataclass
class SplitScores:
    """One model on one split: its metrics, and per image the label, prediction and probabilities."""

    metrics: dict
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray


def score_models_on_split(
    dataset_summary: dict, models: dict[str, Path], split: str = "test"
) -> dict[str, SplitScores]:
    """Score each local SavedModel folder in `models` ({name: folder}) on the run's `split`.

    Returns {name: SplitScores}, all on the same images in the same order. Raises
    ValueError when a model predicts another number of classes than the data has,
    StoreError when the shards cannot be read.
    """
    store = open_store(dataset_summary["store"])
    class_names = dataset_summary["class_names"]
    with tempfile.TemporaryDirectory(prefix="medkfp-score-") as tmp:
        paths = download_shards(store, dataset_summary["splits"][split]["shards"], Path(tmp))
        images, labels = read_split(paths)
    scored = {}
    for name, folder in models.items():
        _, signature = load_signature(folder)
        probabilities = predict_bytes(signature, images)
        metrics = score_probabilities(probabilities, labels, class_names, name)
        predictions = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, np.int64)
        scored[name] = SplitScores(metrics, labels, predictions.astype(np.int64), probabilities)
    return scored
