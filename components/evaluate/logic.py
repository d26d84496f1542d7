"""Evaluate one candidate on the test split through its exported serving signature.

Scoring the SavedModel's `serving_default` on the stored PNG bytes tests exactly the
artifact that would be served, preprocessing included.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from medkfp.components.train.logic import download_shards, parse_example
from medkfp.imaging import load_signature, predict_bytes
from medkfp.metrics import classification_metrics
from medkfp.store import open_store


def read_split(paths: list[str]) -> tuple[list[bytes], np.ndarray]:
    images, labels = [], []
    for example in tf.data.TFRecordDataset(paths).map(parse_example):
        images.append(example["image"].numpy())
        labels.append(int(example["label"]))
    return images, np.array(labels, dtype=np.int64)


def evaluate(dataset_summary: dict, trained_summary: dict, split: str = "test") -> dict:
    """Score the trained candidate on `split`; returns the candidate, its metrics and URI."""
    store = open_store(dataset_summary["store"])
    class_names = dataset_summary["class_names"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store.download_dir(trained_summary["model_key"], tmp / "model")
        paths = download_shards(store, dataset_summary["splits"][split]["shards"], tmp)
        images, labels = read_split(paths)
        _, signature = load_signature(tmp / "model")
        probabilities = predict_bytes(signature, images)
    predictions = probabilities.argmax(axis=1) if len(images) else np.array([], dtype=np.int64)
    return {
        "candidate": trained_summary["candidate"],
        "split": split,
        "metrics": classification_metrics(labels, predictions, class_names),
        "model_key": trained_summary["model_key"],
        "model_uri": trained_summary["model_uri"],
        "history": trained_summary["history"],
        "devices": trained_summary["devices"],
    }
