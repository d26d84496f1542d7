"""Shared vocabulary: dataset names, class lists, grids, signature keys and store layouts.

Every step, the pipeline, the server and the tests import names from here so that a
layout or a key is spelled once.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- datasets -----------------------------------------------------------------

COVID = "covid19-radiography"
MIAS = "mias"
IMAGEFOLDER = "imagefolder"
DATASETS = (COVID, MIAS, IMAGEFOLDER)

# Kaggle "COVID-19 Radiography Database": folder names exactly as in the download.
COVID_ROOT = "COVID-19_Radiography_Dataset"
COVID_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
# mini-MIAS abnormality classes, alphabetical.
MIAS_CLASSES = ("ARCH", "ASYM", "CALC", "CIRC", "MISC", "NORM", "SPIC")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff"})

SPLITS = ("train", "val", "test")

# --- candidates ------------------------------------------------------------------

BALANCING = ("none", "undersample", "oversample")
ARCHITECTURES = ("simple-cnn", "mobilenetv2")


@dataclass(frozen=True)
class Candidate:
    """One cell of the experiment grid: a backbone trained on one balancing of the data."""

    architecture: str
    balancing: str
    batch_size: int = 32
    learning_rate: float = 1e-3

    @property
    def name(self) -> str:
        return f"{self.architecture}-{self.balancing}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "balancing": self.balancing,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(
            architecture=d["architecture"],
            balancing=d["balancing"],
            batch_size=int(d.get("batch_size", 32)),
            learning_rate=float(d.get("learning_rate", 1e-3)),
        )


GRIDS: dict[str, tuple[Candidate, ...]] = {
    # CPU-sized: the small CNN learns the synthetic sets in ~15 epochs at 48-64 px.
    "quick": tuple(Candidate("simple-cnn", b, batch_size=16, learning_rate=3e-3) for b in BALANCING),
}

SELECTION_METRIC = "macro_f1"
DEFAULT_MIN_DELTA = 0.005

# --- serving contract ---------------------------------------------------------------

SIGNATURE = "serving_default"
INPUT_KEY = "image_bytes"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"
STABLE_LABEL = "stable"
DEFAULT_GRPC_PORT = 8500

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


def run_key(run_id: str, *parts: str) -> str:
    """Key of a file of one pipeline run, e.g. run_key(r, "ingest", "manifest.csv")."""
    return "/".join((RUNS_PREFIX, run_id, *parts))


def raw_image_key(run_id: str, image_id: str, suffix: str) -> str:
    return run_key(run_id, "raw", f"{image_id}{suffix.lower()}")


def shard_key(run_id: str, split: str, index: int, total: int) -> str:
    return run_key(run_id, "shards", f"{split}-{index:05d}-of-{total:05d}.tfrecord")


def candidate_key(run_id: str, candidate_name: str, *parts: str) -> str:
    return run_key(run_id, "candidates", candidate_name, *parts)


def model_version_key(model_name: str, version: int, *parts: str) -> str:
    return "/".join((MODELS_PREFIX, model_name, str(version), *parts))


def dataset_classes(dataset: str) -> tuple[str, ...] | None:
    """The fixed class list of a known dataset, or None when the source defines it."""
    return {COVID: COVID_CLASSES, MIAS: MIAS_CLASSES}.get(dataset)


# --- containers -----------------------------------------------------------------------
# The image every step runs in; kustomize and `medkfp compile --image` rewrite it.
COMPONENT_IMAGE = "medkfp/medkfp:0.1.0"


def default_model_name(dataset: str, source: str) -> str:
    """Served model name: the dataset's, or for imagefolder the folder's name."""
    if dataset != IMAGEFOLDER:
        return dataset
    name = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".zip", ".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(suffix)
    return name.lower().replace(" ", "-").replace("_", "-") or IMAGEFOLDER
