"""The loaded models: versions fetched from the store's models.config, kept loaded and swapped atomically.

Every version models.config names is downloaded into a local cache, verified, loaded with
`tf.saved_model.load`, and the config is re-read every few seconds. A reload loads every
new version first and then swaps the whole served set, labels included, in one step: a
label therefore only ever points to a loaded version, and requests running on the old set
finish on it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from medkfp.model_repository import MODEL_NAME, ModelRepository, desired_versions
from medkfp.servable import read_signature_defs
from medkfp.serving.sync import fetch_version
from medkfp.store import Store, StoreError

log = logging.getLogger(__name__)

# A version that failed to load is retried after this long, not on every poll: versions are
# immutable, so most failures repeat, and each retry downloads the whole SavedModel again.
RETRY_FAILED_AFTER = 60.0


class VersionStatus(NamedTuple):
    """A version's state as GetModelStatus reports it ("AVAILABLE", ...) and why it failed."""

    state: str
    error: str = ""


class RpcError(Exception):
    """A request-level failure, answered to the client as a gRPC status with this message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """One input of a signature: its TF dtype (and DataType enum) and shape (dims, None = any)."""

    dtype: tf.DType
    enum: int
    shape: tf.TensorShape
    dims: tuple[int | None, ...] | None  # None: any rank

    @classmethod
    def of(cls, spec: tf.TensorSpec) -> InputSpec:
        dims = None if spec.shape.rank is None else tuple(spec.shape.as_list())
        return cls(spec.dtype, spec.dtype.as_datatype_enum, spec.shape, dims)

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """spec.shape.is_compatible_with(shape), without building a TensorShape per request."""
        if self.dims is None:
            return True
        return len(shape) == len(self.dims) and all(d is None or d == n for d, n in zip(self.dims, shape))


@dataclass(frozen=True)
class Signature:
    """A callable signature of a loaded version with its input specs, read once at load.

    `where` names it in error messages ("model m version 2 signature 'serving_default'").
    """

    name: str
    fn: object = field(repr=False)
    inputs: dict[str, InputSpec] = field(repr=False)
    where: str

    @classmethod
    def of(cls, model: str, version: int, name: str, fn) -> Signature:
        inputs = {key: InputSpec.of(spec) for key, spec in fn.structured_input_signature[1].items()}
        return cls(name, fn, inputs, f"model {model} version {version} signature {name!r}")


@dataclass(frozen=True)
class LoadedVersion:
    """One version of a model in memory: its signatures and their SignatureDefs."""

    name: str
    version: int
    path: Path
    loaded: object = field(repr=False)
    signature_defs: dict[str, meta_graph_pb2.SignatureDef] = field(repr=False)
    signatures: dict[str, Signature] = field(repr=False)

    def signature(self, signature_name: str) -> Signature:
        """The callable signature; raises RpcError(INVALID_ARGUMENT) naming the ones it has."""
        signature = self.signatures.get(signature_name)
        if signature is None:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {self.name} version {self.version} has no signature {signature_name!r}; "
                f"it has {', '.join(sorted(self.signatures))}",
            )
        return signature


@dataclass(frozen=True)
class ServedModel:
    """The loaded versions of one model and its version labels (label -> version)."""

    name: str
    versions: dict[int, LoadedVersion]
    labels: dict[str, int]

    def resolve(self, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """Pick a version by number, by label, or the highest loaded one when neither is given.

        Raises RpcError(NOT_FOUND) for a version or label that is not loaded.
        """
        if label:
            if label not in self.labels:
                known = ", ".join(sorted(self.labels)) or "none"
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {self.name} has no version label {label!r} (labels: {known})",
                )
            version = self.labels[label]
            if version not in self.versions:
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND,
                    f"label {label!r} of model {self.name} points to version {version}, "
                    f"which is not loaded (loaded versions: {self._loaded_versions()})",
                )
        if version is None:
            # Like TF Serving: the default is the highest loaded version, not a label.
            if not self.versions:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"model {self.name} has no loaded version")
            version = max(self.versions)
        if version not in self.versions:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"model {self.name} has no loaded version {version} (loaded versions: "
                f"{self._loaded_versions()})",
            )
        return self.versions[version]

    def _loaded_versions(self) -> str:
        return ", ".join(str(v) for v in sorted(self.versions)) or "none"


class ModelManager:
    """Keeps the models named by a store's models.config loaded, swapping them atomically.

    Readers take `snapshot()` (an immutable dict name -> ServedModel) and keep using it for
    the whole request, so a reload never pulls a model out from under a running request.
    """

    def __init__(self, store: Store, cache_dir: str | Path | None = None):
        self.store = store
        self.repo = ModelRepository(store)
        self._own_cache = cache_dir is None
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="medkfp-serving-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._models: dict[str, ServedModel] = {}
        self._reload_lock = threading.Lock()
        # Failed loads and empty models are remembered so each poll does not log them again.
        self._failed: dict[tuple[str, int], tuple[float, str]] = {}
        self._warned_empty: set[str] = set()
        self._states: dict[str, dict[int, VersionStatus]] = {}
        self._states_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def snapshot(self) -> dict[str, ServedModel]:
        return self._models

    def version_states(self, name: str) -> dict[int, VersionStatus]:
        """version -> state of every version of `name` seen since start (unloaded ones: END).

        Raises RpcError(NOT_FOUND) for a model this server has never had.
        """
        with self._states_lock:
            states = dict(self._states.get(name, {}))
        if not states:
            self.model(name)  # raises NOT_FOUND naming the served models
        return states

    def _set_state(self, name: str, version: int, state: str, error: str = "") -> None:
        with self._states_lock:
            self._states.setdefault(name, {})[version] = VersionStatus(state, error)

    def model(self, name: str) -> ServedModel:
        """The served model called `name`; raises RpcError(NOT_FOUND) naming the ones served."""
        if not name:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is required")
        models = self.snapshot()
        if name not in models:
            served = ", ".join(sorted(models)) or "none"
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} is not served (served models: {served})",
            )
        return models[name]

    # --- reloading ----------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read models.config and load/unload versions to match it.

        Returns True if the served set changed. Raises StoreError if the config cannot be
        read; the served set is then left as it was. A version that fails to load is
        logged and skipped, and the versions served before stay loaded beside it.
        """
        with self._reload_lock:
            config = self.repo.read_config()
            old = self._models
            new = {}
            for entry in config.model_config_list.config:
                served = self._reload_model(entry, old.get(entry.name))
                if served is not None:
                    new[entry.name] = served
            if _unchanged(old, new):
                return False
            # Swap first, drop second: requests that already hold the old set finish on it.
            self._models = new
            self._record_swap(old, new)
            self._log_swap(old, new)
            return True

    def _record_swap(self, old: dict[str, ServedModel], new: dict[str, ServedModel]) -> None:
        for name, model in new.items():
            for version in model.versions:
                self._set_state(name, version, "AVAILABLE")
        for name, model in old.items():
            kept = new[name].versions if name in new else {}
            for version in model.versions:
                if version not in kept:
                    self._set_state(name, version, "END")

    def _reload_model(self, entry, current: ServedModel | None) -> ServedModel | None:
        """The ServedModel a config entry asks for, keeping `current` versions on failures."""
        name = entry.name
        if not MODEL_NAME.match(name):
            log.error("models.config names model %r: not a valid model name, skipped", name)
            return current
        try:
            wanted = desired_versions(self.repo, entry)
        except StoreError as e:
            log.error("cannot list versions of model %s, keeping what is loaded: %s", name, e)
            return current
        have = dict(current.versions) if current else {}
        versions: dict[int, LoadedVersion] = {}
        failed = False
        for version in wanted:
            loaded = have.get(version) or self._try_load(name, version)
            if loaded is None:
                failed = True
            else:
                versions[version] = loaded
        labels = {label: int(v) for label, v in entry.version_labels.items()}
        if failed and current is not None:
            # Keep serving what worked before beside whatever new versions did load, and
            # let a label whose new target failed keep pointing where it pointed before.
            versions = {**current.versions, **versions}
            for label, version in labels.items():
                if version not in versions and label in current.labels:
                    labels[label] = current.labels[label]
        if not versions:
            if not failed and name not in self._warned_empty:
                log.warning("model %s has no complete version in the store yet", name)
                self._warned_empty.add(name)
            return None
        self._warned_empty.discard(name)
        return ServedModel(name, versions, labels)

    def _try_load(self, name: str, version: int) -> LoadedVersion | None:
        """Load one version, or log why not and return None (retrying only after a while)."""
        last = self._failed.get((name, version))
        if last is not None and time.monotonic() - last[0] < RETRY_FAILED_AFTER:
            return None
        self._set_state(name, version, "LOADING")
        try:
            loaded = self.load_version(name, version)
        except Exception as e:  # any failure of one version must not stop the others
            message = f"{type(e).__name__}: {e}"
            if last is None or last[1] != message:
                log.error("cannot load model %s version %d: %s", name, version, message)
            self._failed[(name, version)] = (time.monotonic(), message)
            self._set_state(name, version, "END", message)
            return None
        self._failed.pop((name, version), None)
        return loaded

    def load_version(self, name: str, version: int) -> LoadedVersion:
        """Download version `version` of `name` into the cache (if not there yet) and load it."""
        path = self._fetch(name, version)
        started = time.monotonic()
        try:
            loaded = tf.saved_model.load(str(path))
            signature_defs = read_signature_defs(path)
        except Exception:
            # Drop the copy so a retry downloads it again instead of trusting a bad cache.
            shutil.rmtree(path, ignore_errors=True)
            raise
        log.info(
            "loaded model %s version %d (%.1f s, signatures: %s)",
            name,
            version,
            time.monotonic() - started,
            ", ".join(sorted(loaded.signatures)),
        )
        # Each signature's input specs are read once here, not on every request.
        signatures = {key: Signature.of(name, version, key, fn) for key, fn in loaded.signatures.items()}
        return LoadedVersion(name, version, path, loaded, signature_defs, signatures)

    def _fetch(self, name: str, version: int) -> Path:
        """The local copy of a version, downloaded and verified like serving-sync does it."""
        dest = self.cache_dir / name / str(version)
        fetch_version(self.store, name, version, dest, self.cache_dir / ".staging")
        return dest

    def _log_swap(self, old: dict[str, ServedModel], new: dict[str, ServedModel]) -> None:
        for name, model in sorted(old.items()):
            kept = new[name].versions if name in new else {}
            for version, loaded in sorted(model.versions.items()):
                if version not in kept:
                    log.info("unloaded model %s version %d", name, version)
                    # TF read the variables into memory at load, so the files can go now.
                    shutil.rmtree(loaded.path, ignore_errors=True)
        for name, model in sorted(new.items()):
            labels = ", ".join(f"{k}={v}" for k, v in sorted(model.labels.items()))
            log.info(
                "serving model %s versions %s%s",
                name,
                ", ".join(str(v) for v in sorted(model.versions)),
                f" (labels {labels})" if labels else "",
            )

    # --- polling ------------------------------------------------------------------
    def start_polling(self, interval: float) -> None:
        """Re-read models.config every `interval` seconds in a daemon thread until close()."""
        if interval <= 0:
            return
        self._poller = threading.Thread(
            target=self._poll, args=(interval,), name="medkfp-model-poller", daemon=True
        )
        self._poller.start()

    def _poll(self, interval: float) -> None:
        last_error = None
        while not self._stop.wait(interval):
            try:
                self.reload()
                last_error = None
            except Exception as e:  # a bad poll must never kill the poller
                message = f"{type(e).__name__}: {e}"
                if message != last_error:
                    log.error("cannot reload models.config, serving the loaded models: %s", message)
                last_error = message

    def close(self) -> None:
        """Stop polling and, if the cache folder was created here, delete it."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=60)
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


def _unchanged(old: dict[str, ServedModel], new: dict[str, ServedModel]) -> bool:
    """True if both sets hold the very same loaded versions under the same labels."""
    if old.keys() != new.keys():
        return False
    for name, before in old.items():
        after = new[name]
        if before.labels != after.labels or before.versions.keys() != after.versions.keys():
            return False
        if any(before.versions[v] is not after.versions[v] for v in before.versions):
            return False
    return True
