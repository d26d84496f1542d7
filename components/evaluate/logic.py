"""Evaluate one candidate on the test split through its exported serving signature.

Scoring the SavedModel's `serving_default` on the stored PNG bytes tests exactly the
artifact that would be served, preprocessing and temperature scaling included: its
probabilities are the calibrated ones, and `metrics.calibration` compares their ECE with the
uncalibrated model's (recovered from them and the temperature the train step fitted).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from medkfp.imaging import load_signature, predict_bytes
from medkfp.metrics import calibration_metrics
from medkfp.report import write_report
from medkfp.scoring import score_probabilities
from medkfp.shards import download_shards, read_split
from medkfp.store import open_store


def evaluate(dataset_summary: dict, trained_summary: dict, split: str = "test", report_path=None) -> dict:
    """Score the trained candidate on `split`.

    Args:
      report_path: where to write the HTML report (curves, heat map, tables); None: none.
    Returns the evaluation summary: the candidate, its metrics (with `ci` and `calibration`),
    the reliability bins, model key and URI, training history and devices (carried on for the
    push step's comparison and metadata).
    """
    store = open_store(dataset_summary["store"])
    class_names = dataset_summary["class_names"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store.download_dir(trained_summary["model_key"], tmp / "model")
        paths = download_shards(store, dataset_summary["splits"][split]["shards"], tmp)
        images, labels = read_split(paths)
        _, signature = load_signature(tmp / "model")
        probabilities = predict_bytes(signature, images)
        metrics = score_probabilities(probabilities, labels, class_names, trained_summary["model_uri"])
    temperature = (trained_summary.get("calibration") or {}).get("temperature", 1.0)
    reliability = None
    if len(labels):
        metrics["calibration"], reliability = calibration_metrics(probabilities, labels, temperature)
    evaluation = {
        "candidate": trained_summary["candidate"],
        "split": split,
        "metrics": metrics,
        "model_key": trained_summary["model_key"],
        "model_uri": trained_summary["model_uri"],
        "image_size": trained_summary.get("image_size", dataset_summary["image_size"]),
        "epochs_run": trained_summary.get("epochs_run"),
        "history": trained_summary["history"],
        "reliability": reliability,
        "devices": trained_summary["devices"],
        "accelerator": trained_summary.get("accelerator"),
    }
    write_report(evaluation, report_path)
    return evaluation
