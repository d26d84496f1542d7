"""Select the best candidate and push it as the next model version, if it beats the champion."""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

from medkfp import vocab
from medkfp.model_repository import ModelRepository
from medkfp.store import open_store


def rank_key(evaluation: dict, metric: str) -> tuple[float, float]:
    """Sort key: the selection metric, then balanced accuracy to break ties."""
    metrics = evaluation["metrics"]
    return (metrics[metric], metrics["balanced_accuracy"])


def select_best(evaluations: list[dict], metric: str = vocab.SELECTION_METRIC) -> dict:
    if not evaluations:
        raise ValueError("no candidate was evaluated: the grid is empty")
    return max(evaluations, key=lambda e: rank_key(e, metric))


def champion_decision(
    challenger: dict, champion: dict | None, metric: str, min_delta: float
) -> tuple[bool, str]:
    """(push?, reason) for a challenger's metrics against the served champion's metadata."""
    score = challenger["metrics"][metric]
    if champion is None:
        return True, "no champion yet"
    best = champion["metrics"][metric]
    version = champion["version"]
    if score >= best + min_delta:
        return True, (
            f"better than champion v{version}: {metric} {score:.4f} vs {best:.4f} "
            f"(min delta {min_delta})"
        )
    return False, (
        f"not better than champion v{version}: {metric} {score:.4f} vs {best:.4f} "
        f"(needs +{min_delta})"
    )


def model_card(model_name: str, version: int, metadata: dict) -> str:
    metrics = metadata["metrics"]
    rows = "\n".join(
        f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['specificity']:.3f} "
        f"| {m['f1']:.3f} | {m['support']} |"
        for name, m in metrics["per_class"].items()
    )
    return f"""# Model card: {model_name} v{version}

- Dataset: {metadata['dataset']} (run {metadata['run_id']})
- Candidate: {metadata['candidate']['name']}
- Test accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f},
  macro-F1 {metrics['macro_f1']:.4f}

| class | precision | recall | specificity | F1 | support |
|---|---|---|---|---|---|
{rows}

## Intended use and limitations
Research and workflow support. Not for diagnosis without clinical validation on the
target site's data; metrics above come from a held-out split of the training source.
"""


def push(
    evaluations: list[dict],
    ingest_summary: dict,
    dataset_summary: dict,
    store_uri: str,
    model_name: str = "",
    min_delta: float = vocab.DEFAULT_MIN_DELTA,
    metric: str = vocab.SELECTION_METRIC,
) -> dict:
    """Pick the best evaluation and publish it unless the champion is as good.

    Returns the run summary (DESIGN.md schema): counts, every candidate's metrics, the
    selected candidate, what was pushed (or None) and why.
    """
    dataset = ingest_summary["dataset"]
    model_name = model_name or vocab.default_model_name(dataset, ingest_summary["source"])
    best = select_best(evaluations, metric)
    repository = ModelRepository(open_store(store_uri))
    champion_version = repository.stable_version(model_name)
    champion = repository.metadata(model_name, champion_version) if champion_version else None
    should_push, reason = champion_decision(best, champion, metric, min_delta)

    pushed = None
    if should_push:
        metadata = {
            "dataset": dataset,
            "candidate": best["candidate"],
            "class_names": best["metrics"]["class_names"],
            "metrics": best["metrics"],
            "run_id": ingest_summary["run_id"],
            "source_model_uri": best["model_uri"],
            "devices": best["devices"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        run_store = open_store(ingest_summary["store"])
        with tempfile.TemporaryDirectory() as tmp:
            run_store.download_dir(best["model_key"], Path(tmp))
            version = repository.publish(
                model_name, tmp, metadata, lambda v: model_card(model_name, v, metadata)
            )
        pushed = {
            "model_name": model_name,
            "version": version,
            "uri": repository.store.uri_for(vocab.model_version_key(model_name, version)),
        }

    counts = dict(ingest_summary["counts"])
    counts.update({split: s["count"] for split, s in dataset_summary["splits"].items()})
    return {
        "dataset": dataset,
        "run_id": ingest_summary["run_id"],
        "counts": counts,
        "candidates": [
            {
                "name": e["candidate"]["name"],
                "architecture": e["candidate"]["architecture"],
                "balancing": e["candidate"]["balancing"],
                "metrics": e["metrics"],
                "model_uri": e["model_uri"],
            }
            for e in evaluations
        ],
        "selected": best["candidate"]["name"],
        "selection_metric": metric,
        "champion": (
            {"version": champion_version, "metrics": champion["metrics"]} if champion else None
        ),
        "pushed": pushed,
        "push_reason": reason,
    }
