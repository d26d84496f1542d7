"""Helpers shared by the serving tests: tiny models, images, a failing store, a stub Predict, polling.

export_model() exports a tiny classifier with medkfp's signatures, png()/encoded()/png_bomb()
make images, FailingStore fails a write on cue, stub_predict() calls Predict through the
tensorflow-serving-api stubs alone and wait_for() polls until a condition holds.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from medkfp import vocab
from medkfp.imaging import export_serving_model
from medkfp.store import Store, StoreError

CLASSES = ["a", "b", "c"]
SIZE = 16


def export_model(export_dir: Path, favour: int | None = None, seed: int = 0) -> Path:
    """A tiny classifier exported with medkfp's signatures.

    With `favour`, every image gets ~0.98 probability for class CLASSES[favour], so two
    versions exported with different `favour` answer differently and predictably.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    if favour is not None:
        dense = model.layers[-1]
        bias = np.zeros(len(CLASSES), np.float32)
        bias[favour] = 5.0
        dense.set_weights([np.zeros((3, len(CLASSES)), np.float32), bias])
    return export_serving_model(model, CLASSES, SIZE, export_dir)


def png(mode: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def encoded(image_format: str, width: int = 24, height: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, image_format)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of width x height black pixels: a few hundred KB that decode to
    width*height*3 bytes (and 4x that as floats) if anything decodes it."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


class FailingStore(Store):
    """Wraps a store; the `fail_on`-th write (put_bytes/put_file, 1-based) raises StoreError,
    like a connection dropped in the middle of a publish."""

    def __init__(self, inner: Store, fail_on: int):
        self.inner = inner
        self.uri = inner.uri
        self.fail_on = fail_on
        self.writes = 0

    def _write(self, key: str) -> None:
        self.writes += 1
        if self.writes == self.fail_on:
            raise StoreError(f"injected failure writing {self.uri_for(key)}")

    def put_bytes(self, key, data):
        self._write(key)
        self.inner.put_bytes(key, data)

    def put_file(self, key, path):
        self._write(key)
        self.inner.put_file(key, path)

    def get_bytes(self, key):
        return self.inner.get_bytes(key)

    def get_file(self, key, path):
        self.inner.get_file(key, path)

    def list_keys(self, prefix=""):
        return self.inner.list_keys(prefix)

    def exists(self, key):
        return self.inner.exists(key)

    def delete(self, key):
        self.inner.delete(key)


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition` every 50 ms until it is true; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout:.0f} s"
        time.sleep(0.05)


def stub_predict(
    channel, model: str, images: list[bytes], timeout: float = 60.0, **spec
) -> predict_pb2.PredictResponse:
    """Predict over `channel` with a client made only of the tensorflow-serving-api stubs;
    `spec` is version=N or label=NAME."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = vocab.SIGNATURE
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs[vocab.INPUT_KEY].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
