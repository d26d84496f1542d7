"""The one image path shared by training and serving: decode, three channels, resize.

Preprocessing writes shards with `decode_and_resize`, training decodes them with it, and the
exported `serving_default` signature runs it inside the graph, so a client sends the raw
file bytes and the model sees exactly what it saw in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from medkfp import vocab


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes (scalar tf.string) -> uint8 [size, size, 3].

    Grayscale is repeated to three channels, alpha dropped, 16-bit scaled to 8-bit by
    tf.io.decode_image; resizing is bilinear with antialiasing, rounded back to uint8.
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def encode_png(image: tf.Tensor) -> bytes:
    return tf.io.encode_png(image).numpy()


def export_serving_model(
    model, class_names: list[str] | tuple[str, ...], image_size: int, export_dir: str | Path
) -> Path:
    """Export `model` (float32 [N, size, size, 3] in 0..255 -> softmax) as a SavedModel.

    Signatures:
      serving_default(image_bytes: string [None]) -> probabilities float32 [None, C],
                                                     classes string [None]
      serving_float(images: float32 [None, size, size, 3]) -> same outputs
    """
    import keras

    names = tf.constant(list(class_names))

    def outputs(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        return {
            vocab.OUTPUT_PROBABILITIES: probabilities,
            vocab.OUTPUT_CLASSES: tf.gather(names, tf.argmax(probabilities, axis=-1)),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=vocab.INPUT_KEY)])
    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda b: decode_and_resize(b, image_size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        return outputs(model(tf.cast(images, tf.float32), training=False))

    @tf.function(
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")]
    )
    def serve_float(images):
        return outputs(model(images, training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=vocab.SIGNATURE, fn=serve_bytes)
    archive.add_endpoint(name="serving_float", fn=serve_float)
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
