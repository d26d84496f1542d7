"""Shared vocabulary: dataset names, class lists, grids, signature keys and store layouts.

Every step, the pipeline, the server and the tests import names from here so that a
layout or a key is spelled once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from medkfp import __version__
from medkfp.errors import InvalidInputError

# --- datasets -----------------------------------------------------------------

COVID = "covid19-radiography"
MIAS = "mias"
IMAGEFOLDER = "imagefolder"
# A flat DICOM export (any folders) with a labels table: --dataset dicom --labels FILE.csv.
DICOM = "dicom"
DATASETS = (COVID, MIAS, IMAGEFOLDER, DICOM)
# The labels table --dataset dicom reads when --labels is not given: at the top of the export.
DICOM_LABELS_FILE = "labels.csv"

# Kaggle "COVID-19 Radiography Database": folder names exactly as in the download.
COVID_ROOT = "COVID-19_Radiography_Dataset"
COVID_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
# mini-MIAS abnormality classes, alphabetical.
MIAS_CLASSES = ("ARCH", "ASYM", "CALC", "CIRC", "MISC", "NORM", "SPIC")
# mini-MIAS download: films and Info.txt (one row per abnormality) in all-mias/.
MIAS_DIR = "all-mias"
MIAS_INFO_FILE = "Info.txt"
MIAS_NORMAL = "NORM"
MIAS_TISSUES = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
# --label severity: Info.txt's B / M, and normal for NORM films.
SEVERITY_CLASSES = ("normal", "benign", "malignant")
MIAS_SEVERITY = {"B": "benign", "M": "malignant"}
LABELS = ("class", "severity")
# Ingest fails when more of the files found are rejected: a source where most files are
# unusable is usually the wrong folder or a broken download (--max-rejected-fraction).
DEFAULT_MAX_REJECTED_FRACTION = 0.5

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff"})

SPLITS = ("train", "val", "test")
# Confidence of every interval reported: the bootstrap CIs of the metrics and of the paired
# challenger-minus-champion difference.
CONFIDENCE = 0.95

# --- candidates ------------------------------------------------------------------

# Train-split balancing: resample (under/over) or keep every image once and hand training
# per-class loss weights (class_weight).
BALANCING = ("none", "undersample", "oversample", "class_weight")
ARCHITECTURES = ("simple-cnn", "mobilenetv2", "resnet50", "resnet101")
OPTIMIZERS = ("adam", "adamax", "sgd")
# Backbone weights: Keras's ImageNet download, random, or the URI of a weights file
# (s3://... or a local path; "{architecture}" in it is replaced by the candidate's).
WEIGHTS = ("imagenet", "none")
# Units of the dense layer before the softmax (the studies' custom head); 0: none.
DEFAULT_DENSE_UNITS = {"simple-cnn": 0, "mobilenetv2": 256, "resnet50": 256, "resnet101": 256}
DEFAULT_EPOCHS = 10
# Used when neither --image-size nor the grid names one.
DEFAULT_IMAGE_SIZE = 64

# How Candidate.from_dict casts grid values (other fields are strings).
_FIELD_TYPES = {
    "batch_size": int,
    "learning_rate": float,
    "epochs": int,
    "image_size": int,
    "freeze_backbone": bool,
    "dense_units": int,
    "min_steps": int,
    "warmup_steps": int,
}


@dataclass(frozen=True)
class Candidate:
    """One cell of the experiment grid: a backbone trained on one balancing of the data.

    image_size None means the run's --image-size; dense_units None the architecture's
    default head (DEFAULT_DENSE_UNITS).
    """

    architecture: str
    balancing: str
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    epochs: int = DEFAULT_EPOCHS
    image_size: int | None = None
    weights: str = "none"
    freeze_backbone: bool = False
    dense_units: int | None = None
    # Step-based budget: at least this many optimizer steps over all epochs, so a small
    # (undersampled) split is not starved by a fixed epoch count; 0: epochs alone decide.
    min_steps: int = 0
    # Linear learning-rate warm-up over the first steps; 0: none (the studies' settings).
    warmup_steps: int = 0

    def __post_init__(self):
        if self.dense_units is None:
            object.__setattr__(self, "dense_units", DEFAULT_DENSE_UNITS.get(self.architecture, 256))

    @property
    def name(self) -> str:
        return f"{self.architecture}-{self.balancing}"

    def to_dict(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        """Build from a grid entry or a to_dict() result; unknown keys raise ValueError."""
        types = {f.name: _FIELD_TYPES.get(f.name, str) for f in fields(cls)}
        unknown = set(d) - set(types) - {"name"}
        if unknown:
            raise InvalidInputError(
                f"grid entry {d!r}: unknown key(s) {', '.join(sorted(unknown))}; use {', '.join(types)}"
            )
        return cls(**{k: None if v is None else types[k](v) for k, v in d.items() if k in types})


def _paper(architecture: str, balancing: str, **settings) -> Candidate:
    return Candidate(architecture, balancing, weights="imagenet", **settings)


# Study 1 (Adamax 1e-3, 20 epochs, 224 px, ImageNet weights, all layers trainable):
# A = ResNet50 unbalanced, B = MobileNetV2 undersampled with batch 8 and a smaller head,
# C = ResNet50 oversampled. The head sizes are ours (the study shows them only in figures).
_COVID_PAPER = dict(learning_rate=1e-3, optimizer="adamax", epochs=20, image_size=224)
# Study 2: ResNet101, Adam 1e-4, 10 epochs, batch 32, 256 px; plus the balanced variants
# its lesson calls for (oversampling, class weights) and a lighter MobileNetV2.
_MIAS_PAPER = dict(batch_size=32, learning_rate=1e-4, optimizer="adam", epochs=10, image_size=256)
PAPER_GRIDS: dict[str, tuple[Candidate, ...]] = {
    COVID: (
        _paper("resnet50", "none", batch_size=32, dense_units=256, **_COVID_PAPER),
        _paper("mobilenetv2", "undersample", batch_size=8, dense_units=64, **_COVID_PAPER),
        _paper("resnet50", "oversample", batch_size=32, dense_units=256, **_COVID_PAPER),
    ),
    MIAS: tuple(
        _paper(architecture, balancing, **_MIAS_PAPER)
        for architecture, balancing in (
            ("resnet101", "none"),
            ("resnet101", "oversample"),
            ("resnet101", "class_weight"),
            ("mobilenetv2", "oversample"),
            ("mobilenetv2", "class_weight"),
        )
    ),
}
PAPER_GRID = "paper"

QUICK_MIN_STEPS = 1000
QUICK_WARMUP_STEPS = 30
GRIDS: dict[str, tuple[Candidate, ...]] = {
    # CPU-sized: the batch-normalised small CNN at 48-64 px. Every candidate gets at least
    # QUICK_MIN_STEPS optimizer steps whatever its split's size (an undersampled split of 40
    # images per class is only ~7 batches an epoch) and warms up its learning rate.
    "quick": tuple(
        Candidate(
            "simple-cnn",
            b,
            batch_size=16,
            learning_rate=3e-3,
            min_steps=QUICK_MIN_STEPS,
            warmup_steps=QUICK_WARMUP_STEPS,
        )
        for b in ("none", "undersample", "oversample")
    ),
}

SELECTION_METRIC = "macro_f1"
# Metrics a run may select by (--selection-metric); all are "higher is better".
SELECTION_METRICS = ("macro_f1", "balanced_accuracy", "accuracy", "weighted_f1", "macro_roc_auc")
DEFAULT_MIN_DELTA = 0.005

# --- serving contract ---------------------------------------------------------------

SIGNATURE = "serving_default"
INPUT_KEY = "image_bytes"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"
STABLE_LABEL = "stable"
DEFAULT_GRPC_PORT = 8500
# The second exported signature: already-decoded images, float32 [None, size, size, 3] in 0..255.
FLOAT_SIGNATURE = "serving_float"
FLOAT_INPUT_KEY = "images"
# The model layer whose output is the pre-softmax logits: the export divides them by the
# temperature fitted on the validation split, so served probabilities are calibrated.
LOGITS_LAYER = "logits"
# Largest image (width x height) anywhere: ingest, DICOM conversion, the serving signature and
# the server, so a file a run accepts is one its served model takes. 25 MP covers full-field
# mammograms (~14-21 MP) and stops decompression bombs (a few KB that expand to gigabytes); it
# is read from the file header, before the pixels are decoded.
MAX_IMAGE_PIXELS = 25_000_000
# Versions the model repository keeps per model (the served ones are always kept).
DEFAULT_KEEP_VERSIONS = 5
# The local mirror `medkfp serve` syncs for tensorflow_model_server when it runs it.
DEFAULT_SERVING_DIR = ".medkfp/serving"
TF_SERVING_BINARY = "tensorflow_model_server"
# `medkfp serve --engine`: auto runs TF Serving when its binary is on PATH, else the built-in one.
SERVING_ENGINES = ("auto", "builtin", "tensorflow-serving")

# --- store layout ---------------------------------------------------------------------
# A store root (s3://bucket[/prefix] or a directory) holds pipeline data under runs/ and
# the model repository under models/ (TF Serving layout: models/<model>/<version>/).

RUNS_PREFIX = "runs"
MODELS_PREFIX = "models"
MODELS_CONFIG = "models.config"
METADATA_FILE = "metadata.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
# Where the serving pod mounts its mirror of the repository; base_path in models.config.
SERVING_BASE_DIR = "/models"
SHARD_MAX_RECORDS = 1024
# Shards stay under this size whatever the image size (records per shard shrink to fit).
SHARD_MAX_BYTES = 64 * 1024 * 1024


def run_key(run_id: str, *parts: str) -> str:
    """Key of a file of one pipeline run, e.g. run_key(r, "ingest", "manifest.csv")."""
    return "/".join((RUNS_PREFIX, run_id, *parts))


def pack_key(run_id: str, index: int) -> str:
    """Key of one of ingest's image packs (medkfp.packs)."""
    return run_key(run_id, "raw", f"pack-{index:05d}.tar")


def shard_key(run_id: str, split: str, index: int, total: int) -> str:
    return run_key(run_id, "shards", f"{split}-{index:05d}-of-{total:05d}.tfrecord")


def candidate_key(run_id: str, candidate_name: str, *parts: str) -> str:
    return run_key(run_id, "candidates", candidate_name, *parts)


def model_version_key(model_name: str, version: int, *parts: str) -> str:
    return "/".join((MODELS_PREFIX, model_name, str(version), *parts))


def dataset_classes(dataset: str) -> tuple[str, ...] | None:
    """The fixed class list of a known dataset, or None when the source defines it."""
    return {COVID: COVID_CLASSES, MIAS: MIAS_CLASSES}.get(dataset)


# --- environment variables -----------------------------------------------------------
# The object store's endpoint and keys: the standard variables MinIO, SeaweedFS and AWS tools
# all read (AWS_ENDPOINT_URL is the fallback for every service, AWS_ENDPOINT_URL_S3 for S3 only).
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
S3_ENVIRONMENT = (
    S3_ENDPOINT_ENV,
    ENDPOINT_ENV,
    ACCESS_KEY_ENV,
    SECRET_KEY_ENV,
    SESSION_TOKEN_ENV,
    *REGION_ENVS,
)
# The project's own settings, all MEDKFP_*: they travel into step containers with the above.
PROJECT_ENVIRONMENT_PREFIX = "MEDKFP_"
STORE_ENV = "MEDKFP_STORE"
STORE_RETRY_SECONDS_ENV = "MEDKFP_STORE_RETRY_SECONDS"
PSEUDONYM_SALT_ENV = "MEDKFP_PSEUDONYM_SALT"

# --- containers -----------------------------------------------------------------------
# The image every step runs in, tagged with the package version; its GPU variant runs train.
# kustomize `images:` and `medkfp compile --image/--gpu-image` rewrite them.
IMAGE_REPOSITORY = "medkfp/medkfp"
COMPONENT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
GPU_COMPONENT_IMAGE = f"{COMPONENT_IMAGE}-gpu"
# Where `make container-engine` puts the Docker API of Podman on machines without Docker.
PODMAN_SOCKET = "/run/podman/podman.sock"


def default_model_name(dataset: str, source: str, label: str = "class") -> str:
    """Served model name: the dataset's, or for imagefolder and dicom the folder's name.

    A severity model (--label severity) answers another question than the class model of
    the same dataset, so it is served apart: "mias-severity".
    """
    if label != "class":
        return f"{default_model_name(dataset, source)}-{label}"
    if dataset not in (IMAGEFOLDER, DICOM):
        return dataset
    name = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".zip", ".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(suffix)
    return name.lower().replace(" ", "-").replace("_", "-") or IMAGEFOLDER


# --- model server: limits, defaults ------------------------------------------------------
# The built-in server (serving/server.py), its client (serving/client.py) and `medkfp serve`
# read these; the gRPC port is DEFAULT_GRPC_PORT above.

# Largest gRPC message (a Predict request or response) the built-in server and the client
# accept; `medkfp serve --max-request-mb` changes the server's.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Most images in one Predict request to the built-in server (`--max-batch`).
DEFAULT_MAX_BATCH = 256
# The address the built-in server binds (`--host`), and how often it re-reads models.config.
DEFAULT_SERVE_HOST = "0.0.0.0"
DEFAULT_POLL_SECONDS = 5.0
