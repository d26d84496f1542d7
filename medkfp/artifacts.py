"""Small JSON payloads carried by KFP artifacts between steps (bulk data stays in the store)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json_artifact(artifact, payload: dict, **metadata) -> None:
    """Write `payload` as the artifact's file and copy scalar `metadata` onto it for the UI."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(payload, indent=2, sort_keys=True))
    artifact.metadata.update(metadata)


def read_json_artifact(artifact) -> dict:
    return json.loads(Path(artifact.path).read_text())


# The line a per-candidate step prints first, so a local run's output names the candidate of
# each of the parallel tasks that share one name (pipelines/run_log.py reads it).
CANDIDATE_MARKER = "medkfp candidate: "


def announce_candidate(name: str) -> None:
    print(f"{CANDIDATE_MARKER}{name}", flush=True)
