"""The one image path shared by training and serving: decode, three channels, resize.

Preprocessing writes shards with `decode_and_resize`, training decodes them with it, and the
exported `serving_default` signature runs it inside the graph, so a client sends the raw
file bytes and the model sees exactly what it saw in training.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tensorflow as tf

from medkfp import vocab

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
BMP_SIGNATURE = b"BM"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
# JPEG start-of-frame markers (SOF0-SOF15 except DHT, JPG and DAC), which carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Header bytes the in-graph check reads: PNG's IHDR ends at 24, BMP's height at 26.
_HEADER_BYTES = 32
SERVING_FORMATS = "PNG, JPEG or BMP"


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes (scalar tf.string) -> uint8 [size, size, 3].

    Grayscale is repeated to three channels, alpha dropped, 16-bit scaled to 8-bit by
    tf.io.decode_image; resizing is bilinear with antialiasing, rounded back to uint8.
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, JPEG, BMP or GIF header without decoding the pixels.

    Returns None for other formats or a header too short to tell. A GIF's size is its
    logical screen; its frame count is not bounded by it.
    """
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data.startswith(JPEG_SIGNATURE):
        return _jpeg_dimensions(data)
    if data.startswith(BMP_SIGNATURE) and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:6] in GIF_SIGNATURES and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the first start-of-frame; None if there is none."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def _starts_with(head: tf.Tensor, prefix: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(head[: len(prefix)], tf.constant(list(prefix), tf.uint8)))


def _uint(head: tf.Tensor, offset: int, size: int, big_endian: bool) -> tf.Tensor:
    """An unsigned integer of `size` bytes at `offset` of the header bytes, as int64."""
    value = tf.constant(0, tf.int64)
    order = range(size) if big_endian else reversed(range(size))
    for i in order:
        value = value * 256 + tf.cast(head[offset + i], tf.int64)
    return value


def _int32_magnitude(value: tf.Tensor) -> tf.Tensor:
    """|x| of an unsigned 32-bit value read as two's-complement (BMP heights can be negative)."""
    return tf.where(value >= 2**31, 2**32 - value, value)


def _header_size(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(known format?, width, height) of one encoded image, read in the graph from its header."""
    head = tf.strings.substr(image_bytes, 0, _HEADER_BYTES)
    padded = tf.strings.join([head, tf.constant(b"\0" * _HEADER_BYTES)])
    head = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)
    is_png = _starts_with(head, PNG_SIGNATURE)
    is_jpeg = _starts_with(head, JPEG_SIGNATURE)
    is_bmp = _starts_with(head, BMP_SIGNATURE)

    def jpeg_size():
        shape = tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int32)
        return tf.cast(shape[1], tf.int64), tf.cast(shape[0], tf.int64)

    def other_size():
        width = tf.where(is_png, _uint(head, 16, 4, True), _int32_magnitude(_uint(head, 18, 4, False)))
        height = tf.where(is_png, _uint(head, 20, 4, True), _int32_magnitude(_uint(head, 22, 4, False)))
        return width, height

    width, height = tf.cond(is_jpeg, jpeg_size, other_size)
    return is_png | is_jpeg | is_bmp, width, height


def checked_image_bytes(image_bytes: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`image_bytes`, once its header shows a PNG, JPEG or BMP of at most `max_pixels` pixels.

    Runs in the graph before decoding, so a decompression bomb (a small PNG that decodes to
    gigabytes) fails with InvalidArgumentError instead of exhausting memory. GIF is refused:
    its frame count, and so its decoded size, is not in the header.
    """
    known, width, height = _header_size(image_bytes)
    format_ok = tf.debugging.Assert(
        known, [f"the image is not {SERVING_FORMATS}: send the file bytes of a PNG or JPEG image"]
    )
    with tf.control_dependencies([format_ok]):
        too_big = tf.strings.format(
            "the image is {}x{} pixels, above the limit of {} pixels: downscale it before sending",
            (width, height, max_pixels),
        )
        size_ok = tf.debugging.Assert(width * height <= max_pixels, [too_big])
    with tf.control_dependencies([size_ok]):
        return tf.identity(image_bytes)


def calibrated(model, temperature: float):
    """A function of images giving softmax(logits / temperature) of `model`.

    The logits are the output of the model's vocab.LOGITS_LAYER when it has one (medkfp's
    architectures do), else the log of its probabilities, which softmax maps back to the
    same probabilities. Temperature 1 returns the model itself. Raises ValueError for a
    temperature that is not positive.
    """
    import keras

    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}: refit it on the validation split")
    if temperature == 1.0:
        return model
    names = {layer.name for layer in model.layers}
    if vocab.LOGITS_LAYER in names:
        logits_of = keras.Model(model.input, model.get_layer(vocab.LOGITS_LAYER).output)
    else:
        tiny = np.finfo(np.float32).tiny
        logits_of = lambda x, training=False: tf.math.log(  # noqa: E731
            tf.maximum(tf.cast(model(x, training=training), tf.float32), tiny)
        )

    def scaled(images, training=False):
        logits = tf.cast(logits_of(images, training=training), tf.float32)
        return tf.nn.softmax(logits / tf.constant(temperature, tf.float32), axis=-1)

    return scaled


def export_serving_model(
    model,
    class_names: list[str] | tuple[str, ...],
    image_size: int,
    export_dir: str | Path,
    max_pixels: int = vocab.MAX_IMAGE_PIXELS,
    temperature: float = 1.0,
) -> Path:
    """Export `model` (float32 [N, size, size, 3] in 0..255 -> softmax) as a SavedModel.

    Signatures:
      serving_default(image_bytes: string [None]) -> probabilities float32 [None, C],
                                                     classes string [None]
      serving_float(images: float32 [None, size, size, 3]) -> same outputs
    serving_default refuses (InvalidArgument) images that are not PNG/JPEG/BMP or whose
    header says they exceed `max_pixels`, before decoding them. `temperature` (fitted on the
    validation split) divides the logits before the softmax inside the graph, so served
    probabilities are the calibrated ones; the top class does not change. Returns export_dir.
    Raises ValueError for a temperature that is not positive.
    """
    import keras

    names = tf.constant(list(class_names))
    predict = calibrated(model, temperature)

    def outputs(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        return {
            vocab.OUTPUT_PROBABILITIES: probabilities,
            vocab.OUTPUT_CLASSES: tf.gather(names, tf.argmax(probabilities, axis=-1)),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=vocab.INPUT_KEY)])
    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda b: decode_and_resize(checked_image_bytes(b, max_pixels), image_size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        return outputs(predict(tf.cast(images, tf.float32), training=False))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=vocab.FLOAT_INPUT_KEY)
        ]
    )
    def serve_float(images):
        return outputs(predict(images, training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=vocab.SIGNATURE, fn=serve_bytes)
    archive.add_endpoint(name=vocab.FLOAT_SIGNATURE, fn=serve_float)
    export_dir = Path(export_dir)
    archive.write_out(str(export_dir), verbose=False)
    return export_dir


def load_signature(saved_model_dir: str | Path, name: str = vocab.SIGNATURE):
    """Load a SavedModel and return (loaded object, signature function)."""
    loaded = tf.saved_model.load(str(saved_model_dir))
    if name not in loaded.signatures:
        raise ValueError(
            f"SavedModel {saved_model_dir} has no signature {name!r} "
            f"(it has {sorted(loaded.signatures)}): export it with medkfp's exporter"
        )
    return loaded, loaded.signatures[name]


def predict_bytes(signature, images: list[bytes], batch_size: int = 64) -> np.ndarray:
    """Run serving_default over encoded images in batches; returns probabilities [N, C]."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start : start + batch_size], dtype=tf.string)
        chunks.append(signature(**{vocab.INPUT_KEY: batch})[vocab.OUTPUT_PROBABILITIES].numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
