"""Pipeline defaults and the cluster settings the compiled YAML carries."""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, dataclass, field, fields, replace

from medkfp import vocab
from medkfp.errors import InvalidInputError

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


def _parameter(
    help: str,
    default=MISSING,
    *,
    flag: str = "",
    choices: tuple = (),
    cli_note: str = "",
    default_factory=MISSING,
):
    """A RunConfig field: `help` is the KFP run form's description and, with `cli_note`, the flag's."""
    metadata = {"help": help, "flag": flag, "choices": choices, "cli_note": cli_note}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """The run parameters, defined once: the pipeline's signature and run form (pipeline.py), the
    local runner's arguments and the options of `run`, `submit` and `schedule create` (cli.py).

    Raises InvalidInputError for a dataset or label that cannot work.
    """

    dataset: str = _parameter(
        "Layout of the source: covid19-radiography, mias, imagefolder or dicom.", choices=vocab.DATASETS
    )
    source: str = _parameter(
        "The raw images: s3://bucket/prefix (or a folder, .zip or .tar(.gz) the pods can read)."
    )
    store: str = _parameter("Store root for run data and the model repository, e.g. s3://medkfp.")
    model_name: str = _parameter(
        "Served model name; empty: the dataset's (imagefolder: the folder's name).", "", flag="--name"
    )
    grid: str = _parameter(
        "Candidates to train: quick, paper, or a JSON list of candidate settings.",
        DEFAULT_GRID,
        cli_note="On the command line also a JSON/YAML grid file.",
    )
    epochs: int = _parameter("Epochs of every candidate; 0: each candidate's own.", DEFAULT_EPOCHS)
    image_size: int = _parameter(
        "Training size in pixels; 0: the grid's (paper: 224 or 256), else 64.", DEFAULT_IMAGE_SIZE
    )
    test_fraction: float = _parameter(
        "Share of the images held out for the test split (0-1).", DEFAULT_TEST_FRACTION
    )
    val_fraction: float = _parameter(
        "Share of the remaining images used for validation (0-1).", DEFAULT_VAL_FRACTION
    )
    seed: int = _parameter("Seed of the split, the balancing and training.", DEFAULT_SEED)
    min_delta: float = _parameter(
        "Push only if the best candidate beats the served model by this much.", DEFAULT_MIN_DELTA
    )
    label: str = _parameter("What to predict: class, or severity (mias only).", "class", choices=vocab.LABELS)
    max_rejected_fraction: float = _parameter(
        "Stop when more than this share of the files found is rejected (0-1).",
        vocab.DEFAULT_MAX_REJECTED_FRACTION,
    )
    selection_metric: str = _parameter(
        "Metric that picks the best candidate (macro_f1, balanced_accuracy, ...).",
        DEFAULT_SELECTION_METRIC,
        choices=vocab.SELECTION_METRICS,
    )
    min_recall: dict = _parameter(
        'Recall floors per class the pushed model must meet, e.g. {"COVID": 0.95}.',
        default_factory=dict,
        cli_note="On the command line: CLASS=X, repeatable.",
    )
    weights: str = _parameter(
        "Backbone weights of every candidate: imagenet, none or a weights file URI; empty: the grid's.",
        DEFAULT_WEIGHTS,
    )
    freeze_backbone: bool = _parameter("Train the dense head only.", False)
    labels: str = _parameter(
        "dicom only: the labels table (path or SOPInstanceUID, label); empty: labels.csv in the source.", ""
    )
    require_significant: bool = _parameter(
        "Push only if the 95% interval of best minus served (same images) is above 0.", False
    )

    def __post_init__(self):
        if self.dataset not in vocab.DATASETS:
            raise InvalidInputError(
                f"unknown dataset {self.dataset!r}: use one of {', '.join(vocab.DATASETS)}"
            )
        if self.label != "class" and self.dataset != vocab.MIAS:
            raise InvalidInputError(
                f"--label {self.label} needs --dataset {vocab.MIAS}: {self.dataset} has no severity"
            )

    def completed(self) -> RunConfig:
        """The config as a run takes it: the grid checked (a grid file read into JSON, since the
        pods cannot read this machine's files) and the served model's name filled in.

        Raises InvalidInputError for a grid that does not expand for this dataset.
        """
        from medkfp.components.grid.logic import expand_grid, grid_json

        expand_grid(self.grid, self.dataset, self.epochs, self.image_size, self.weights, self.freeze_backbone)
        return replace(
            self,
            grid=grid_json(self.grid, self.dataset),
            model_name=self.model_name or vocab.default_model_name(self.dataset, self.source, self.label),
        )

    def arguments(self) -> dict:
        """{parameter: value}, as the pipeline takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def run_parameter_flag(f) -> str:
    """The command-line flag of a RunConfig field: --name for model_name, else --field-name."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def run_parameters_signature() -> inspect.Signature:
    """RunConfig as a function signature: the pipeline function's, which KFP compiles."""
    types = typing.get_type_hints(RunConfig)
    parameters = []
    for f in fields(RunConfig):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=types[f.name],
                default=inspect.Parameter.empty if default is MISSING else default,
            )
        )
    return inspect.Signature(parameters, return_annotation=str)


def run_parameters_docstring(summary: str, returns: str) -> str:
    """A Google-style docstring whose Args are RunConfig's descriptions (KFP's run form text)."""
    args = "\n".join(f"    {f.name}: {f.metadata['help']}" for f in fields(RunConfig))
    return f"{summary}\n\nArgs:\n{args}\n\nReturns:\n    {returns}\n"


RUN_SIGNATURE = run_parameters_signature()

# Cluster settings, ignored by kfp.local.
S3_SECRET = "medkfp-s3"
S3_SECRET_ENV = {
    "endpoint": vocab.S3_ENDPOINT_ENV,
    "access-key": vocab.ACCESS_KEY_ENV,
    "secret-key": vocab.SECRET_KEY_ENV,
}
# The salt of the DICOM patient pseudonyms (medkfp.dicom), for the ingest step only; optional:
# without the Secret each run draws a random salt, so pseudonyms do not link across runs.
DEID_SECRET = "medkfp-deid"
DEID_SECRET_ENV = {"pseudonym-salt": vocab.PSEUDONYM_SALT_ENV}
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
            raise InvalidInputError(
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
        raise InvalidInputError(
            f"toleration {item!r}: use KEY[=VALUE][:EFFECT] with EFFECT one of {', '.join(effects)}, "
            "e.g. nvidia.com/gpu:NoSchedule"
        )
    toleration = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration
