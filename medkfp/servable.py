"""The serving contract of a SavedModel: its signatures, read from TensorFlow's protos, checked."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import message
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from medkfp import vocab
from medkfp.errors import InvalidModelError

SERVE_TAG = "serve"


def read_signature_defs(saved_model_dir: str | Path) -> dict:
    """The SignatureDefs of the `serve` MetaGraph of a SavedModel, as TF Serving reports them.

    Raises InvalidModelError when saved_model.pb is missing or unreadable.
    """
    path = Path(saved_model_dir) / "saved_model.pb"
    if not path.is_file():
        raise InvalidModelError(
            f"{saved_model_dir} is not a SavedModel (no saved_model.pb): "
            "export it with Keras model.export() or medkfp.imaging.export_serving_model"
        )
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(path.read_bytes())
    except message.DecodeError:
        raise InvalidModelError(f"{path} is not a SavedModel protobuf: export the model again") from None
    graphs = saved_model.meta_graphs
    serving = [g for g in graphs if SERVE_TAG in g.meta_info_def.tags] or list(graphs[:1])
    if not serving:
        raise InvalidModelError(f"{path} holds no MetaGraph: export the model again")
    return dict(serving[0].signature_def)


def _dtype(info) -> str:
    return types_pb2.DataType.Name(info.dtype)


def check_servable(saved_model_dir: str | Path) -> dict:
    """Check that a SavedModel has the serving contract medkfp clients rely on.

    serving_default must take `image_bytes` (DT_STRING, shape [-1]) and return
    `probabilities` (DT_FLOAT) and `classes` (DT_STRING). Returns a summary
    {"signatures": [names], "inputs": {key: dtype}, "outputs": {key: dtype}} of
    serving_default. Raises InvalidModelError with a one-line message naming what is wrong.
    """
    # __saved_model_init_op is TF's own bookkeeping, not a signature anyone calls.
    signatures = {k: v for k, v in read_signature_defs(saved_model_dir).items() if not k.startswith("__")}
    fix = (
        f"export it with medkfp.imaging.export_serving_model, or give it a {vocab.SIGNATURE} "
        f"signature taking {vocab.INPUT_KEY} (DT_STRING [-1]) and returning "
        f"{vocab.OUTPUT_PROBABILITIES} (DT_FLOAT) and {vocab.OUTPUT_CLASSES} (DT_STRING)"
    )
    where = f"SavedModel {saved_model_dir}"
    if vocab.SIGNATURE not in signatures:
        names = ", ".join(sorted(signatures)) or "none"
        raise InvalidModelError(f"{where} has no {vocab.SIGNATURE} signature (it has: {names}); {fix}")
    signature = signatures[vocab.SIGNATURE]
    image_bytes = signature.inputs.get(vocab.INPUT_KEY)
    if image_bytes is None:
        raise InvalidModelError(
            f"{where}: {vocab.SIGNATURE} takes {', '.join(sorted(signature.inputs)) or 'no input'}, "
            f"not {vocab.INPUT_KEY}; {fix}"
        )
    shape = image_bytes.tensor_shape
    if image_bytes.dtype != types_pb2.DT_STRING or (not shape.unknown_rank and len(shape.dim) != 1):
        dims = "?" if shape.unknown_rank else [d.size for d in shape.dim]
        raise InvalidModelError(
            f"{where}: input {vocab.INPUT_KEY} is {_dtype(image_bytes)} {dims}, "
            f"not a batch of encoded images (DT_STRING [-1]); {fix}"
        )
    expected = {vocab.OUTPUT_PROBABILITIES: types_pb2.DT_FLOAT, vocab.OUTPUT_CLASSES: types_pb2.DT_STRING}
    for key, dtype in expected.items():
        info = signature.outputs.get(key)
        if info is None or info.dtype != dtype:
            got = _dtype(info) if info is not None else "missing"
            raise InvalidModelError(f"{where}: {vocab.SIGNATURE} output {key} is {got}; {fix}")
    return {
        "signatures": sorted(signatures),
        "inputs": {k: _dtype(v) for k, v in sorted(signature.inputs.items())},
        "outputs": {k: _dtype(v) for k, v in sorted(signature.outputs.items())},
    }
