"""A TF Serving-compatible gRPC model server that serves the model repository of a store.

It speaks TF Serving's `PredictionService` (Predict, GetModelMetadata) and `ModelService`
(GetModelStatus), so clients written for TF Serving work unchanged. Models come from
`models/models.config` in the store (or in a serving-sync mirror): every named version is
downloaded into a local cache, verified, loaded with `tf.saved_model.load`, and the config
is re-read every few seconds. A reload loads every new version first and then swaps the
whole served set, labels included, in one step: a label therefore only ever points to a
loaded version, and requests running on the old set finish on it.
"""

from __future__ import annotations

import functools
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from medkfp import vocab
from medkfp.imaging import image_dimensions
from medkfp.model_repository import (
    MODEL_NAME,
    ModelRepository,
    desired_versions,
    read_signature_defs,
)
from medkfp.serving.batching import Batcher, BatcherClosed, BatchingParameters, QueueFull
from medkfp.serving.sync import fetch_version
from medkfp.store import Store, StoreError, open_store

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_WORKERS = 8
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_MAX_BATCH = 256
MAX_BATCHING_WORKERS = 64
# A version that failed to load is retried after this long, not on every poll: versions are
# immutable, so most failures repeat, and each retry downloads the whole SavedModel again.
RETRY_FAILED_AFTER = 60.0
SIGNATURE_DEF_FIELD = "signature_def"
_STATES = get_model_status_pb2.ModelVersionStatus.State


class ServeError(RuntimeError):
    """The server cannot start (e.g. the port is taken); the message says what to change."""


@dataclass(frozen=True)
class RequestLimits:
    """What one Predict request may ask for; beyond it the answer is INVALID_ARGUMENT.

    The size of a whole request is bounded by the gRPC message limit (RESOURCE_EXHAUSTED,
    as in TF Serving).
    """

    max_image_pixels: int = vocab.MAX_IMAGE_PIXELS
    max_batch: int = DEFAULT_MAX_BATCH


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


# --- loaded models ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedVersion:
    """One version of a model in memory: its signatures and their SignatureDefs."""

    name: str
    version: int
    path: Path
    loaded: object = field(repr=False)
    signature_defs: dict[str, meta_graph_pb2.SignatureDef] = field(repr=False)

    def signature(self, signature_name: str):
        """The callable signature; raises RpcError(INVALID_ARGUMENT) naming the ones it has."""
        signatures = self.loaded.signatures
        if signature_name not in signatures:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {self.name} version {self.version} has no signature {signature_name!r}; "
                f"it has {', '.join(sorted(signatures))}",
            )
        return signatures[signature_name]


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
        loaded = ", ".join(str(v) for v in sorted(self.versions)) or "none"
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
                    f"which is not loaded (loaded versions: {loaded})",
                )
        if version is None:
            # Like TF Serving: the default is the highest loaded version, not a label.
            if not self.versions:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"model {self.name} has no loaded version")
            version = max(self.versions)
        if version not in self.versions:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"model {self.name} has no loaded version {version} (loaded versions: {loaded})",
            )
        return self.versions[version]


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
        return LoadedVersion(name, version, path, loaded, signature_defs)

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


# --- request handling -----------------------------------------------------------------------


def _rpc(method):
    """Answer RpcError as its gRPC status, and anything unexpected as INTERNAL (logged)."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except RpcError as e:
            context.abort(e.code, e.message)
        except Exception as e:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {e}")

    return wrapper


def _resolve(manager: ModelManager, spec) -> LoadedVersion:
    """The loaded version a ModelSpec names (version number, label, or neither)."""
    model = manager.model(spec.name)
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return model.resolve(version=spec.version.value)
    if choice == "version_label":
        return model.resolve(label=spec.version_label)
    return model.resolve()


def _convert_inputs(inputs, fn, where: str) -> dict:
    """Request TensorProtos -> numpy arrays for `fn`, checked against its input signature.

    Raises RpcError(INVALID_ARGUMENT) naming the expected keys, dtypes or shapes.
    """
    specs = fn.structured_input_signature[1]
    if set(inputs) != set(specs):
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where} expects inputs {sorted(specs)}, got {sorted(inputs)}",
        )
    tensors = {}
    for key, spec in specs.items():
        proto = inputs[key]
        dtype = tf.dtypes.as_dtype(proto.dtype) if proto.dtype else None
        if dtype != spec.dtype:
            got = dtype.name if dtype else "no dtype"
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where} input {key!r} must be {spec.dtype.name}, got {got}",
            )
        try:
            array = tf.make_ndarray(proto)
        except (TypeError, ValueError) as e:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{where} input {key!r} is malformed: {e}"
            ) from None
        if not spec.shape.is_compatible_with(array.shape):
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where} input {key!r} must have shape {spec.shape}, got {list(array.shape)}",
            )
        tensors[key] = array
    return tensors


def _check_limits(arrays: dict, limits: RequestLimits, where: str) -> None:
    """Refuse a batch above limits.max_batch and images whose header exceeds max_image_pixels.

    The image check reads only the file header, so a decompression bomb is refused before
    anything decodes it. Raises RpcError(INVALID_ARGUMENT).
    """
    for key, array in arrays.items():
        if array.ndim and array.shape[0] > limits.max_batch:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where} input {key!r} holds {array.shape[0]} items, above this server's limit "
                f"of {limits.max_batch} per request: split it into smaller requests",
            )
        if array.dtype != object:
            continue
        for index, data in enumerate(array.reshape(-1)):
            size = image_dimensions(bytes(data))
            if size and size[0] * size[1] > limits.max_image_pixels:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: image {index} of the request is {size[0]}x{size[1]} pixels, above "
                    f"this server's limit of {limits.max_image_pixels} pixels per image: "
                    "downscale it before sending",
                )


def _tf_message(message: str) -> str:
    """The useful line(s) of a TF runtime error: no node names, stack notes or op tags."""
    if "assertion failed: [" in message:
        message = message.split("assertion failed: [", 1)[1].split("]", 1)[0]
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith(noise)]
    return " ".join(" ".join(kept).split(" [Op:")[0].split())


def _run(fn, arrays: dict, where: str) -> dict[str, np.ndarray]:
    """Call a signature on numpy inputs; returns its outputs as numpy arrays.

    An input it cannot process (e.g. bytes that are no image) is the caller's error,
    RpcError(INVALID_ARGUMENT), not the server's.
    """
    specs = fn.structured_input_signature[1]
    tensors = {key: tf.constant(array, dtype=specs[key].dtype) for key, array in arrays.items()}
    try:
        outputs = fn(**tensors)
    except tf.errors.InvalidArgumentError as e:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{where} cannot process the input: {_tf_message(e.message)}"
        ) from None
    return {key: value.numpy() for key, value in outputs.items()}


def _fill_tensor_proto(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Write a numpy output into the (empty) TensorProto of a response, in place.

    Numeric arrays go straight into tensor_content and strings into string_val:
    tf.make_tensor_proto's generic path plus a CopyFrom cost more than the whole copy.
    """
    if array.dtype.kind in "SU":
        array = array.astype(object)
    if array.dtype == object:
        proto.dtype = tf.string.as_datatype_enum
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1))
    else:
        proto.dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape)


def _select_outputs(outputs: dict, output_filter, where: str) -> list[str]:
    """The output keys to return: all, or those of output_filter (each must exist)."""
    if not output_filter:
        return sorted(outputs)
    unknown = sorted(set(output_filter) - set(outputs))
    if unknown:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where} has no output {', '.join(map(repr, unknown))} (outputs: {', '.join(sorted(outputs))})",
        )
    return list(dict.fromkeys(output_filter))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the manager's loaded models."""

    def __init__(self, manager: ModelManager, limits: RequestLimits | None = None,
                 batcher: Batcher | None = None):
        self.manager = manager
        self.limits = limits or RequestLimits()
        self.batcher = batcher

    def _predict(self, loaded: LoadedVersion, signature_name: str, fn, arrays: dict, where: str) -> dict:
        """Run one request's (already validated) inputs, through the batcher when there is one."""
        if self.batcher is None:
            return _run(fn, arrays, where)
        # A batch runs on one loaded version object: after a hot swap, requests holding the
        # old and the new set of models never share a batch, even for the same number.
        key = (loaded.name, loaded.version, signature_name, id(fn))
        try:
            return self.batcher.run(key, functools.partial(_run, fn, where=where), arrays)
        except (QueueFull, BatcherClosed) as e:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, f"{where}: {e}") from None

    @_rpc
    def Predict(self, request, context):
        loaded = _resolve(self.manager, request.model_spec)
        signature_name = request.model_spec.signature_name or vocab.SIGNATURE
        fn = loaded.signature(signature_name)
        where = f"model {loaded.name} version {loaded.version} signature {signature_name!r}"
        arrays = _convert_inputs(request.inputs, fn, where)
        _check_limits(arrays, self.limits, where)
        outputs = self._predict(loaded, signature_name, fn, arrays, where)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for key in _select_outputs(outputs, request.output_filter, where):
            _fill_tensor_proto(response.outputs[key], outputs[key])
        return response

    @_rpc
    def GetModelMetadata(self, request, context):
        fields = list(request.metadata_field)
        if not fields:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"metadata_field is required; the supported one is {SIGNATURE_DEF_FIELD!r}",
            )
        unsupported = [f for f in fields if f != SIGNATURE_DEF_FIELD]
        if unsupported:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"metadata field {unsupported[0]!r} is not supported; "
                f"the supported one is {SIGNATURE_DEF_FIELD!r}",
            )
        loaded = _resolve(self.manager, request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in loaded.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        packed = any_pb2.Any()
        packed.Pack(signature_map)
        response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
        return response

    def _unimplemented(self, what: str, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{what} is not implemented by the medkfp model server; use Predict",
        )

    def Classify(self, request, context):
        self._unimplemented("Classify", context)

    def Regress(self, request, context):
        self._unimplemented("Regress", context)

    def MultiInference(self, request, context):
        self._unimplemented("MultiInference", context)


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus over the manager's loaded models."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    @_rpc
    def GetModelStatus(self, request, context):
        spec = request.model_spec
        if not spec.name:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is required")
        states = self.manager.version_states(spec.name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            versions = [_resolve(self.manager, spec).version]
        elif choice == "version":
            if spec.version.value not in states:
                known = ", ".join(str(v) for v in sorted(states))
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {spec.name} has no version {spec.version.value} (versions: {known})",
                )
            versions = [spec.version.value]
        else:
            versions = sorted(states)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            state = states[version]
            status = response.model_version_status.add()
            status.version = version
            status.state = _STATES.Value(state.state)
            status.status.error_code = error_codes_pb2.UNKNOWN if state.error else error_codes_pb2.OK
            status.status.error_message = state.error
        return response

    def HandleReloadConfigRequest(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "HandleReloadConfigRequest is not implemented: the server re-reads "
            "models.config from the store by itself",
        )


# --- the server -----------------------------------------------------------------------------


def _address(host: str, port: int) -> str:
    # An IPv6 literal needs brackets before the port.
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ModelServer:
    """The gRPC server plus the ModelManager that feeds it; start() it, then stop() it."""

    def __init__(
        self,
        store_uri: str | Store | None,
        port: int = vocab.DEFAULT_GRPC_PORT,
        host: str = "0.0.0.0",
        cache_dir: str | Path | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        limits: RequestLimits | None = None,
        batching: BatchingParameters | None = None,
    ):
        self.store_uri = store_uri
        self.host = host
        self.requested_port = port
        self.cache_dir = cache_dir
        self.poll_interval = poll_interval
        self.max_workers = max_workers
        self.max_message_bytes = max_message_bytes
        self.limits = limits or RequestLimits()
        self.batching = batching
        self.batcher: Batcher | None = None
        self.port: int | None = None
        self.manager: ModelManager | None = None
        self._grpc: grpc.Server | None = None

    def start(self) -> ModelServer:
        """Load the models named in models.config, then listen; returns self.

        Raises StoreError if the store or its models.config cannot be read, ServeError if
        the address cannot be bound. Versions that fail to load are logged, not raised.
        """
        store = self.store_uri if isinstance(self.store_uri, Store) else open_store(self.store_uri)
        self.manager = ModelManager(store, self.cache_dir)
        try:
            # Bind before loading so a taken port fails at once, not after every download;
            # requests are only accepted after start(), when the models are loaded.
            server = self._build_grpc_server()
            self.manager.reload()
            if not self.manager.snapshot():
                log.warning(
                    "no model to serve yet in %s: waiting for a version to be published",
                    self.manager.store.uri,
                )
            server.start()
            self._grpc = server
        except BaseException:
            self.manager.close()
            if self.batcher is not None:
                self.batcher.close()
            raise
        self.manager.start_polling(self.poll_interval)
        log.info("model server listening on %s", _address(self.host, self.port))
        return self

    def _build_grpc_server(self) -> grpc.Server:
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # Without this a second server could silently share the port with a first one.
            ("grpc.so_reuseport", 0),
        ]
        workers = self.max_workers
        if self.batching is not None:
            self.batcher = Batcher(self.batching)
            # A request thread waits while its batch forms: enough of them to fill a batch,
            # or batches could never grow past the thread count.
            workers = max(workers, min(self.batching.max_batch_size, MAX_BATCHING_WORKERS))
            log.info("batching: %s", self.batching)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medkfp-grpc"),
            options=options,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.manager, self.limits, self.batcher), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(self.manager), server)
        address = _address(self.host, self.requested_port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise ServeError(f"cannot listen on {address}: is the port in use? pick another with --port")
        self.port = port
        return server

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting requests, let running ones finish for up to `grace` s, unload."""
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
            log.info("model server on %s stopped", _address(self.host, self.port))
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
        if self.manager is not None:
            self.manager.close()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    store_uri: str | Store | None,
    port: int = 0,
    host: str = "127.0.0.1",
    cache_dir: str | Path | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    limits: RequestLimits | None = None,
    batching: BatchingParameters | None = None,
) -> ModelServer:
    """Start a server in this process without blocking; port 0 picks a free port.

    `store_uri` is a store URI or a Store (e.g. a serving-sync MirrorStore). Returns the
    started ModelServer (`.port` is the bound port; call `.stop()` or use it as a context
    manager). `batching` turns on server-side batching (medkfp.serving.batching). Raises
    StoreError or ServeError like ModelServer.start().
    """
    return ModelServer(
        store_uri, port, host, cache_dir, poll_interval, max_workers, max_message_bytes, limits, batching
    ).start()


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set `stop` on SIGINT/SIGTERM while inside (main thread only; elsewhere a no-op)."""
    previous = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(
    store_uri: str | Store | None,
    port: int = vocab.DEFAULT_GRPC_PORT,
    host: str = "0.0.0.0",
    cache_dir: str | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    ready_event: threading.Event | None = None,
    stop_event: threading.Event | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    limits: RequestLimits | None = None,
    batching: BatchingParameters | None = None,
) -> None:
    """Serve the store's models until SIGINT/SIGTERM (or `stop_event`), then stop gracefully.

    `ready_event` is set once the models are loaded and the port is bound. Signals are
    only caught when called from the main thread; elsewhere, pass `stop_event`. On stop
    the server refuses new requests and lets running ones finish (5 s grace).
    Raises StoreError or ServeError when the server cannot start.
    """
    configure_logging()
    stop = stop_event or threading.Event()
    server = start_server(
        store_uri, port, host, cache_dir, poll_interval, max_workers, max_message_bytes, limits, batching
    )
    try:
        with stop_on_signals(stop):
            if ready_event is not None:
                ready_event.set()
            # A timed wait keeps the main thread responsive to signals on every platform.
            while not stop.wait(1.0):
                pass
            log.info("shutting down the model server")
    finally:
        server.stop()


def configure_logging() -> None:
    """Log INFO to stderr unless the caller set up logging already (for entry points)."""
    # serve() is an entry point: make the load/unload log visible.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
