"""The gRPC servicers: TF Serving's PredictionService and ModelService over the loaded models.

Predict and GetModelMetadata (PredictionService) and GetModelStatus (ModelService) answer
like TF Serving, so clients written for TF Serving work unchanged. Requests are checked
against the signature and the server's RequestLimits before anything runs; a request-level
failure is answered as its gRPC status (models.RpcError), anything unexpected as INTERNAL.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from medkfp import vocab
from medkfp.imaging import image_dimensions
from medkfp.serving.batching import Batcher, BatcherClosed, QueueFull
from medkfp.serving.models import InputSpec, LoadedVersion, ModelManager, RpcError, Signature

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
_STATES = get_model_status_pb2.ModelVersionStatus.State


@dataclass(frozen=True)
class RequestLimits:
    """What one Predict request may ask for; beyond it the answer is INVALID_ARGUMENT.

    The size of a whole request is bounded by the gRPC message limit (RESOURCE_EXHAUSTED,
    as in TF Serving).
    """

    max_image_pixels: int = vocab.MAX_IMAGE_PIXELS
    max_batch: int = vocab.DEFAULT_MAX_BATCH


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


def _convert_inputs(inputs, signature: Signature) -> dict:
    """Request TensorProtos -> numpy arrays for `signature`, checked against its input specs.

    Raises RpcError(INVALID_ARGUMENT) naming the expected keys, dtypes or shapes.
    """
    specs, where = signature.inputs, signature.where
    if len(inputs) != len(specs) or any(key not in inputs for key in specs):
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where} expects inputs {sorted(specs)}, got {sorted(inputs)}",
        )
    tensors = {}
    for key, spec in specs.items():
        proto = inputs[key]
        if proto.dtype != spec.enum:
            dtype = tf.dtypes.as_dtype(proto.dtype) if proto.dtype else None
            got = dtype.name if dtype else "no dtype"
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where} input {key!r} must be {spec.dtype.name}, got {got}",
            )
        try:
            array = _to_ndarray(proto, spec)
        except (TypeError, ValueError) as e:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{where} input {key!r} is malformed: {e}"
            ) from None
        if not spec.accepts_shape(array.shape):
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where} input {key!r} must have shape {spec.shape}, got {list(array.shape)}",
            )
        tensors[key] = array
    return tensors


def _to_ndarray(proto: tensor_pb2.TensorProto, spec: InputSpec) -> np.ndarray:
    """tf.make_ndarray(proto), read with numpy for the two encodings clients send.

    A full string_val (what tf.make_tensor_proto writes for bytes) and tensor_content (for
    numbers) are read directly: TF's helper costs more Python than the rest of a request.
    Every other encoding (typed value lists, a repeated last value) goes through
    tf.make_ndarray, so the array is always the one TF would build.
    """
    shape = [dim.size for dim in proto.tensor_shape.dim]
    count = 1
    for size in shape:
        count *= size
    if count >= 0 and all(size >= 0 for size in shape):
        if spec.enum == _DT_STRING:
            if len(proto.string_val) == count and not proto.tensor_content:
                return np.array(list(proto.string_val), dtype=object).reshape(shape)
        elif proto.tensor_content:
            return np.frombuffer(proto.tensor_content, dtype=spec.dtype.as_numpy_dtype).copy().reshape(shape)
    return tf.make_ndarray(proto)


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


def _run(signature: Signature, arrays: dict, where: str) -> dict[str, np.ndarray]:
    """Call a signature on numpy inputs; returns its outputs as numpy arrays.

    An input it cannot process (e.g. bytes that are no image) is the caller's error,
    RpcError(INVALID_ARGUMENT), not the server's.
    """
    specs = signature.inputs
    tensors = {key: tf.constant(array, dtype=specs[key].dtype) for key, array in arrays.items()}
    try:
        outputs = signature.fn(**tensors)
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
        proto.dtype = _DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1))
    else:
        proto.dtype = _datatype_enum(array.dtype)
        proto.tensor_content = array.tobytes()  # C order, whatever the array's layout
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size


_DT_STRING = tf.string.as_datatype_enum
_DATATYPE_ENUMS: dict[np.dtype, int] = {}


def _datatype_enum(dtype: np.dtype) -> int:
    """The TF DataType enum of a numpy dtype (tf.dtypes.as_dtype's answer, remembered)."""
    enum = _DATATYPE_ENUMS.get(dtype)
    if enum is None:
        enum = _DATATYPE_ENUMS[dtype] = tf.dtypes.as_dtype(dtype).as_datatype_enum
    return enum


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

    def __init__(
        self, manager: ModelManager, limits: RequestLimits | None = None, batcher: Batcher | None = None
    ):
        self.manager = manager
        self.limits = limits or RequestLimits()
        self.batcher = batcher

    def _predict(self, loaded: LoadedVersion, signature: Signature, arrays: dict) -> dict:
        """Run one request's (already validated) inputs, through the batcher when there is one."""
        where = signature.where
        if self.batcher is None:
            return _run(signature, arrays, where)
        # A batch runs on one loaded version object: after a hot swap, requests holding the
        # old and the new set of models never share a batch, even for the same number.
        key = (loaded.name, loaded.version, signature.name, id(signature.fn))
        try:
            return self.batcher.run(key, functools.partial(_run, signature, where=where), arrays)
        except (QueueFull, BatcherClosed) as e:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, f"{where}: {e}") from None

    @_rpc
    def Predict(self, request, context):
        loaded = _resolve(self.manager, request.model_spec)
        signature_name = request.model_spec.signature_name or vocab.SIGNATURE
        signature = loaded.signature(signature_name)
        where = signature.where
        arrays = _convert_inputs(request.inputs, signature)
        _check_limits(arrays, self.limits, where)
        outputs = self._predict(loaded, signature, arrays)
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
