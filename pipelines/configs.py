"""Pipeline defaults and the cluster settings the compiled YAML carries."""

from __future__ import annotations

from dataclasses import dataclass, field

from medkfp import vocab
from medkfp.errors import InvalidInput

PIPELINE_NAME = "medkfp-train-and-push"
PIPELINE_DESCRIPTION = (
    "Ingest, preprocess, balance, train a grid of candidates (GPU), evaluate, and push the "
    "best model per dataset to the TF Serving model repository."
)

DEFAULT_GRID = "quick"
# `medkfp run --runner`: every step a subprocess of this Python, or its own container of the image.
SUBPROCESS_RUNNER, DOCKER_RUNNER = "subprocess", "docker"
RUNNERS = (SUBPROCESS_RUNNER, DOCKER_RUNNER)
# 0: each candidate's own epochs (the grid's; 10 when it names none).
DEFAULT_EPOCHS = 0
# 0: the grid's image size (paper: 224 px covid19-radiography, 256 px mias), else 64.
DEFAULT_IMAGE_SIZE = 0
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = 0
DEFAULT_MIN_DELTA = vocab.DEFAULT_MIN_DELTA
DEFAULT_SELECTION_METRIC = vocab.SELECTION_METRIC
# "": each candidate's own weights (the paper grids: imagenet; others: none).
DEFAULT_WEIGHTS = ""
# Candidates trained at once; each asks for its own GPU on the cluster.
TRAIN_PARALLELISM = 3

# Cluster settings, ignored by kfp.local.
S3_SECRET = "medkfp-s3"
S3_SECRET_ENV = {
    "endpoint": "AWS_ENDPOINT_URL_S3",
    "access-key": "AWS_ACCESS_KEY_ID",
    "secret-key": "AWS_SECRET_ACCESS_KEY",
}
# The salt of the DICOM patient pseudonyms (medkfp.dicom), for the ingest step only; optional:
# without the Secret each run draws a random salt, so pseudonyms do not link across runs.
DEID_SECRET = "medkfp-deid"
DEID_SECRET_ENV = {"pseudonym-salt": "MEDKFP_PSEUDONYM_SALT"}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_COUNT = 1
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
TRAIN_RETRIES = 2
# A retried train task waits 60 s, then 120 s, ... (capped), and resumes from its checkpoint.
TRAIN_RETRY_BACKOFF = {"backoff_duration": "60s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}


@dataclass(frozen=True)
class GpuNode:
    """Where the train task runs: `medkfp compile` options, compiled into the YAML."""

    gpus: int = GPU_COUNT
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = (GPU_TOLERATION,)
    retries: int = TRAIN_RETRIES


def parse_node_selector(items: list[str]) -> dict[str, str]:
    """KEY=VALUE strings -> {key: value}. Raises ValueError naming the bad item."""
    selector = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(
                f"node selector {item!r}: use KEY=VALUE, e.g. cloud.google.com/gke-accelerator=nvidia-l4"
            )
        selector[key] = value
    return selector


def parse_toleration(item: str) -> dict:
    """KEY[=VALUE][:EFFECT] -> a toleration (operator Equal with a value, else Exists)."""
    rest, _, effect = item.partition(":")
    key, sep, value = rest.partition("=")
    effects = ("NoSchedule", "PreferNoSchedule", "NoExecute")
    if not key or (effect and effect not in effects):
        raise InvalidInput(
            f"toleration {item!r}: use KEY[=VALUE][:EFFECT] with EFFECT one of {', '.join(effects)}, "
            "e.g. nvidia.com/gpu:NoSchedule"
        )
    toleration = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration
