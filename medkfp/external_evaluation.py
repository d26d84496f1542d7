"""External validation: score an existing model on another labelled dataset (`medkfp evaluate`).

The source goes through the same ingest as a run (layouts, archives, s3:// prefixes, the
same checks and reject reasons) into a scratch store; every accepted image is then scored
through the model's serving signature, with the same metrics and report as the evaluate step.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from medkfp import vocab
from medkfp.components.ingest.logic import ingest
from medkfp.errors import InvalidInputError
from medkfp.imaging import load_signature, predict_bytes
from medkfp.packs import decodable_image, pack_reader
from medkfp.report import write_report
from medkfp.scoring import score_probabilities
from medkfp.store import LocalStore, open_uri
from medkfp.tables import read_manifest

RUN_ID = "external"
CHUNK = 256  # images decoded and scored at a time: memory stays flat for large sets


def fetch_model(model_uri: str, local_dir: Path) -> tuple[Path, dict | None]:
    """A model version folder (s3://... or local) or a SavedModel folder -> (local SavedModel
    folder, its metadata.json or None). Raises StoreError or ValueError naming the fix."""
    if model_uri.startswith("s3://"):
        store, key = open_uri(model_uri.rstrip("/"))
        store.download_dir(key, local_dir)
        path = local_dir
    else:
        path = Path(model_uri)
    if not (path / "saved_model.pb").is_file():
        raise InvalidInputError(
            f"{model_uri} is not a SavedModel: give a model version (s3://BUCKET/models/NAME/N, "
            "or its local folder) or a folder with saved_model.pb"
        )
    metadata_file = path / vocab.METADATA_FILE
    return path, json.loads(metadata_file.read_text()) if metadata_file.is_file() else None


def class_indices(labels, class_names: list[str], model: str) -> np.ndarray:
    """The model's class index of each label. Raises ValueError for a class it does not know."""
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise InvalidInputError(
            f"the source has class(es) {', '.join(unknown)} that the model {model} does not predict "
            f"({', '.join(class_names)}): check --dataset and --source"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[label] for label in labels], dtype=np.int64)


def predict_store_images(signature, store: LocalStore, manifest) -> np.ndarray:
    """Probabilities of every manifest image (taken from ingest's packs), in manifest order."""
    chunks = []
    with pack_reader(store, manifest["pack"]) as read:
        for start in range(0, len(manifest), CHUNK):
            rows = manifest.iloc[start : start + CHUNK]
            images = [decodable_image(read, row) for row in rows.itertuples()]
            chunks.append(predict_bytes(signature, images))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def evaluate_external(model_uri: str, source: str, dataset: str | None = None, report_path=None) -> dict:
    """Score the model at `model_uri` on every accepted image of `source`.

    Args:
      dataset: layout of the source; default the model's dataset (from its metadata), else
        imagefolder.
      report_path: where to write the HTML report; None: none.
    Returns {model, dataset, source, counts, rejects, candidate, metrics}. Raises
    ValueError, LayoutError or StoreError with a one-line message naming the fix.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir, metadata = fetch_model(model_uri, tmp / "model")
        metadata = metadata or {}
        dataset = dataset or metadata.get("dataset") or vocab.IMAGEFOLDER
        scratch = LocalStore(tmp / "store")
        ingested = ingest(dataset, source, scratch.uri, RUN_ID, label=metadata.get("label", "class"))
        manifest = read_manifest(ingested)
        class_names = metadata.get("class_names") or ingested["class_names"]
        labels = class_indices(manifest["label"], class_names, model_uri)
        _, signature = load_signature(model_dir)
        probabilities = predict_store_images(signature, scratch, manifest)
    result = {
        "model": model_uri,
        "dataset": dataset,
        "source": str(source),
        "split": "external",
        "counts": ingested["counts"],
        "rejects": ingested["rejects"],
        "candidate": metadata.get("candidate"),
        "metrics": score_probabilities(probabilities, labels, class_names, model_uri),
    }
    write_report(result, report_path, title=f"External validation of {model_uri} on {source}")
    return result
