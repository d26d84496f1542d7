"""The versioned model repository in the object store and its TF Serving `models.config`.

Layout under the store root:
    models/<model>/<version>/saved_model.pb, variables/..., metadata.json, MODEL_CARD.md
    models/models.config          (TF Serving model_config_list, text format)
A version is named in models.config only after every file of it is uploaded and verified,
and an existing version is never written again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from medkfp import vocab
from medkfp.store import Store, StoreError

CONFIG_KEY = f"{vocab.MODELS_PREFIX}/{vocab.MODELS_CONFIG}"
# How many versions models.config keeps loaded: the stable one and the one before it.
LOADED_VERSIONS = 2


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRepository:
    """Publish, list and read model versions; read and write models.config."""

    def __init__(self, store: Store):
        self.store = store

    # --- config -------------------------------------------------------------------
    def read_config(self) -> model_server_config_pb2.ModelServerConfig:
        config = model_server_config_pb2.ModelServerConfig()
        if self.store.exists(CONFIG_KEY):
            text_format.Parse(self.store.get_text(CONFIG_KEY), config)
        return config

    def write_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        self.store.put_text(CONFIG_KEY, text_format.MessageToString(config))

    def config_entry(self, config, model: str):
        for entry in config.model_config_list.config:
            if entry.name == model:
                return entry
        return None

    def stable_version(self, model: str) -> int | None:
        """The version the config labels stable (else its highest), or None if not served."""
        entry = self.config_entry(self.read_config(), model)
        if entry is None:
            return None
        if vocab.STABLE_LABEL in entry.version_labels:
            return int(entry.version_labels[vocab.STABLE_LABEL])
        versions = list(entry.model_version_policy.specific.versions)
        return max(versions) if versions else None

    # --- versions -----------------------------------------------------------------
    def model_prefix(self, model: str) -> str:
        return f"{vocab.MODELS_PREFIX}/{model}"

    def version_numbers(self, model: str) -> list[int]:
        """Every version folder present, complete or not (numbers are never reused)."""
        prefix = self.model_prefix(model) + "/"
        numbers = set()
        for key in self.store.list_keys(prefix):
            head = key[len(prefix):].split("/", 1)[0]
            if head.isdigit():
                numbers.add(int(head))
        return sorted(numbers)

    def complete_versions(self, model: str) -> list[int]:
        return [
            v
            for v in self.version_numbers(model)
            if self.store.exists(vocab.model_version_key(model, v, vocab.METADATA_FILE))
        ]

    def metadata(self, model: str, version: int) -> dict:
        return self.store.get_json(vocab.model_version_key(model, version, vocab.METADATA_FILE))

    def publish(
        self,
        model: str,
        saved_model_dir: str | Path,
        metadata: dict,
        model_card: Callable[[int], str] | None = None,
    ) -> int:
        """Upload a SavedModel as the next version, verify it, then name it in models.config.

        Returns the new version number. Raises StoreError if verification fails; the
        config is then left as it was.
        """
        saved_model_dir = Path(saved_model_dir)
        if not (saved_model_dir / "saved_model.pb").is_file():
            raise StoreError(f"{saved_model_dir} is not a SavedModel (no saved_model.pb)")
        version = max(self.version_numbers(model), default=0) + 1
        prefix = vocab.model_version_key(model, version)
        files = {
            p.relative_to(saved_model_dir).as_posix(): sha256_file(p)
            for p in sorted(saved_model_dir.rglob("*"))
            if p.is_file()
        }
        self.store.upload_dir(saved_model_dir, prefix)
        if model_card:
            self.store.put_text(f"{prefix}/{vocab.MODEL_CARD_FILE}", model_card(version))
        self._verify(prefix, files)
        metadata = {**metadata, "model_name": model, "version": version, "files": files}
        # metadata.json is written last: its presence marks the version complete.
        self.store.put_json(f"{prefix}/{vocab.METADATA_FILE}", metadata)
        self._serve(model, version)
        return version

    def _verify(self, prefix: str, files: dict[str, str]) -> None:
        for name, digest in files.items():
            got = sha256_bytes(self.store.get_bytes(f"{prefix}/{name}"))
            if got != digest:
                raise StoreError(f"upload of {self.store.uri_for(prefix)}/{name} is corrupt")

    def _serve(self, model: str, version: int) -> None:
        config = self.read_config()
        entry = self.config_entry(config, model)
        if entry is None:
            entry = config.model_config_list.config.add()
            entry.name = model
            entry.base_path = f"{vocab.SERVING_BASE_DIR}/{model}"
            entry.model_platform = "tensorflow"
        keep = sorted({*entry.model_version_policy.specific.versions, version})
        del entry.model_version_policy.specific.versions[:]
        entry.model_version_policy.specific.versions.extend(keep[-LOADED_VERSIONS:])
        entry.version_labels[vocab.STABLE_LABEL] = version
        self.write_config(config)
