"""Select the best candidate and push it as the next model version, if it passes the champion gate.

The gate (components/push/gate.py) scores the served champion on this run's test split with
the evaluate step's code and compares the two on the same images: the challenger must beat
it by `min_delta` on the selection metric (and, with require_significant, the 95% bootstrap
interval of the difference must lie above zero) and meet every per-class recall floor.
"""

from __future__ import annotations

import math
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from medkfp import vocab
from medkfp.components.push.gate import (  # noqa: F401 (recall_checks: re-exported)
    champion_gate,
    champion_on_this_split,
    class_mismatch,
    recall_checks,
    rescore_champion,
    with_gate_section,
)
from medkfp.dicom import windowing_statement
from medkfp.errors import InvalidInputError
from medkfp.model_repository import ModelRepository
from medkfp.report import comparison_report, write_html
from medkfp.snapshot import data_changes
from medkfp.store import open_store


def check_selection_metric(metric: str) -> str:
    if metric not in vocab.SELECTION_METRICS:
        raise InvalidInputError(
            f"unknown selection metric {metric!r}: use one of {', '.join(vocab.SELECTION_METRICS)}"
        )
    return metric


def check_min_recall(min_recall: dict | None, class_names) -> dict[str, float]:
    """Validate per-class recall floors {class: floor}; raises ValueError naming the fix."""
    floors = {}
    for name, floor in (min_recall or {}).items():
        if name not in class_names:
            raise InvalidInputError(
                f"--min-recall names class {name!r}, which is not one of {', '.join(class_names)}"
            )
        if not 0 <= float(floor) <= 1:
            raise InvalidInputError(f"--min-recall {name}={floor}: a recall floor is between 0 and 1")
        floors[name] = float(floor)
    return floors


def score(metrics: dict, metric: str) -> float:
    value = metrics.get(metric)
    return -math.inf if value is None else float(value)


def rank_key(evaluation: dict, metric: str) -> tuple[float, float]:
    """Sort key: the selection metric, then balanced accuracy to break ties."""
    metrics = evaluation["metrics"]
    return (score(metrics, metric), score(metrics, "balanced_accuracy"))


def select_best(evaluations: list[dict], metric: str = vocab.SELECTION_METRIC) -> dict:
    """The evaluation ranking first by `metric` (balanced accuracy breaks ties)."""
    check_selection_metric(metric)
    if not evaluations:
        raise InvalidInputError("no candidate was evaluated: the grid is empty")
    return max(evaluations, key=lambda e: rank_key(e, metric))


def publish(repository: ModelRepository, model_name: str, best: dict, metadata: dict, run_store) -> dict:
    """Copy the candidate's SavedModel into the repository as its next version."""
    with tempfile.TemporaryDirectory() as tmp:
        run_store.download_dir(best["model_key"], Path(tmp))
        version = repository.publish(model_name, tmp, metadata)
    return {
        "model_name": model_name,
        "version": version,
        "uri": repository.store.uri_for(vocab.model_version_key(model_name, version)),
    }


def candidate_entry(evaluation: dict) -> dict:
    candidate = evaluation["candidate"]
    return {
        "name": candidate["name"],
        "architecture": candidate["architecture"],
        "balancing": candidate["balancing"],
        "config": candidate,
        "metrics": evaluation["metrics"],
        "model_uri": evaluation["model_uri"],
        "epochs_run": evaluation.get("epochs_run"),
        "devices": evaluation.get("devices"),
    }


def push(
    evaluations: list[dict],
    ingest_summary: dict,
    dataset_summary: dict,
    store_uri: str,
    model_name: str = "",
    min_delta: float = vocab.DEFAULT_MIN_DELTA,
    metric: str = vocab.SELECTION_METRIC,
    min_recall: dict[str, float] | None = None,
    comparison_path=None,
    require_significant: bool = False,
) -> dict:
    """Pick the best evaluation and publish it if it passes the champion gate.

    Args:
      metric: selection metric (vocab.SELECTION_METRICS); balanced accuracy breaks ties.
      min_recall: per-class recall floors, {class name: floor}.
      comparison_path: where to write the HTML comparison table; None: none.
      require_significant: push only when the 95% bootstrap interval of challenger minus
        champion (same images) lies above zero.
    Returns the run summary (DESIGN.md schema plus `champion` and `gate`). Raises
    ValueError for an unknown metric or class, StoreError when the repository fails.
    """
    dataset = ingest_summary["dataset"]
    model_name = model_name or vocab.default_model_name(
        dataset, ingest_summary["source"], ingest_summary["label"]
    )
    floors = check_min_recall(min_recall, dataset_summary["class_names"])
    best = select_best(evaluations, metric)
    repository = ModelRepository(open_store(store_uri))
    champion_version = repository.stable_version(model_name)
    champion = repository.metadata(model_name, champion_version) if champion_version else None
    run_store = open_store(ingest_summary["store"])
    paired = None
    if champion is not None and class_mismatch(champion, dataset_summary["class_names"]) is None:
        # The fair comparison: both models on this run's test split, image by image.
        rescored, paired = rescore_champion(best, champion, repository, run_store, dataset_summary, metric)
        champion = {**champion, "rescored": rescored}
    gate = champion_gate(best, champion, metric, min_delta, floors, paired, require_significant)
    changes = data_changes(
        champion, ingest_summary.get("snapshot"), run_store, ingest_summary.get("snapshot_key")
    )

    pushed = None
    if gate["push"]:
        metadata = {
            "dataset": dataset,
            "label": ingest_summary["label"],
            "candidate": best["candidate"],
            "class_names": best["metrics"]["class_names"],
            "metrics": best["metrics"],
            "image_size": best["image_size"],
            "run_id": ingest_summary["run_id"],
            "source_model_uri": best["model_uri"],
            "snapshot": ingest_summary.get("snapshot"),
            "history": best.get("history"),
            "devices": best["devices"],
            "accelerator": best.get("accelerator"),
            "selection_metric": metric,
            "windowing": windowing_statement(ingest_summary.get("dicom")),
            "gate": gate,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        pushed = publish(repository, model_name, best, metadata, run_store)

    counts = dict(ingest_summary["counts"])
    counts.update({split: s["count"] for split, s in dataset_summary["splits"].items()})
    summary = {
        "dataset": dataset,
        "run_id": ingest_summary["run_id"],
        "image_size": dataset_summary["image_size"],
        "counts": counts,
        "rejects": ingest_summary["rejects"],
        "candidates": [candidate_entry(e) for e in evaluations],
        "selected": best["candidate"]["name"],
        "selection_metric": metric,
        "champion": (
            {
                "version": champion_version,
                "uri": repository.store.uri_for(vocab.model_version_key(model_name, champion_version)),
                "candidate": champion.get("candidate"),
                "metrics": champion["metrics"],
                "class_names": champion.get("class_names"),
                "rescored": champion.get("rescored"),
            }
            if champion
            else None
        ),
        "gate": gate,
        "pushed": pushed,
        "push_reason": gate["reason"],
        "data_changes": changes,
    }
    if comparison_path:
        page = comparison_report(champion_on_this_split(summary), evaluations)
        write_html(comparison_path, with_gate_section(page, summary))
    return summary
