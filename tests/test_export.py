"""The exported SavedModel: both signatures' names, dtypes and shapes, and serving_default's image checks.

serving_default runs those checks in the graph, before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from serving_helpers import CLASSES, SIZE, encoded, export_model, png, png_bomb

from medkfp import vocab
from medkfp.imaging import decode_and_resize, image_dimensions, load_signature
from medkfp.servable import read_signature_defs

DT_STRING = tf.string.as_datatype_enum
DT_FLOAT = tf.float32.as_datatype_enum


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_model(tmp_path_factory.mktemp("export") / "m")


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported))


def dims(info) -> list[int]:
    return [d.size for d in info.tensor_shape.dim]


def assert_outputs(signature_def) -> None:
    outputs = signature_def.outputs
    assert set(outputs) == {vocab.OUTPUT_PROBABILITIES, vocab.OUTPUT_CLASSES}
    assert outputs[vocab.OUTPUT_PROBABILITIES].dtype == DT_FLOAT
    assert dims(outputs[vocab.OUTPUT_PROBABILITIES]) == [-1, len(CLASSES)]
    assert outputs[vocab.OUTPUT_CLASSES].dtype == DT_STRING
    assert dims(outputs[vocab.OUTPUT_CLASSES]) == [-1]


def test_signature_defs_as_tf_serving_reads_them(exported):
    signatures = read_signature_defs(exported)

    assert {vocab.SIGNATURE, vocab.FLOAT_SIGNATURE} <= set(signatures)
    default = signatures[vocab.SIGNATURE]
    assert list(default.inputs) == [vocab.INPUT_KEY]
    assert default.inputs[vocab.INPUT_KEY].dtype == DT_STRING
    assert dims(default.inputs[vocab.INPUT_KEY]) == [-1]
    assert_outputs(default)
    floats = signatures[vocab.FLOAT_SIGNATURE]
    assert list(floats.inputs) == [vocab.FLOAT_INPUT_KEY]
    assert floats.inputs[vocab.FLOAT_INPUT_KEY].dtype == DT_FLOAT
    assert dims(floats.inputs[vocab.FLOAT_INPUT_KEY]) == [-1, SIZE, SIZE, 3]
    assert_outputs(floats)


def test_loaded_signatures_specs(loaded):
    default = loaded.signatures[vocab.SIGNATURE].structured_input_signature[1]
    floats = loaded.signatures[vocab.FLOAT_SIGNATURE].structured_input_signature[1]

    assert default == {vocab.INPUT_KEY: tf.TensorSpec([None], tf.string, name=vocab.INPUT_KEY)}
    assert floats == {
        vocab.FLOAT_INPUT_KEY: tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name=vocab.FLOAT_INPUT_KEY)
    }


def test_both_signatures_agree_on_every_accepted_format(loaded):
    images = [png("L", 30, 20, 0), png("RGB", 16, 16, 1), encoded("JPEG"), encoded("BMP")]

    from_bytes = loaded.signatures[vocab.SIGNATURE](image_bytes=tf.constant(images))
    pixels = tf.stack([decode_and_resize(tf.constant(b), SIZE) for b in images])
    from_floats = loaded.signatures[vocab.FLOAT_SIGNATURE](images=tf.cast(pixels, tf.float32))

    np.testing.assert_allclose(
        from_bytes[vocab.OUTPUT_PROBABILITIES].numpy(),
        from_floats[vocab.OUTPUT_PROBABILITIES].numpy(),
        rtol=1e-5,
    )
    classes = [from_bytes[vocab.OUTPUT_CLASSES], from_floats[vocab.OUTPUT_CLASSES]]
    assert classes[0].numpy().tolist() == classes[1].numpy().tolist()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (png_bomb(10_000, 10_000), "the image is 10000x10000 pixels, above the limit of 25000000 pixels"),
        (encoded("GIF"), "the image is not PNG, JPEG or BMP"),
        (b"not an image", "the image is not PNG, JPEG or BMP"),
        (b"", "the image is not PNG, JPEG or BMP"),
    ],
    ids=["png-bomb", "gif", "junk", "empty"],
)
def test_serving_default_refuses_before_decoding(loaded, image, message):
    signature = loaded.signatures[vocab.SIGNATURE]

    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        signature(image_bytes=tf.constant([png("L", 8, 8, 0), image]))


def test_load_signature_names_the_missing_one(exported):
    with pytest.raises(ValueError, match="has no signature 'nope'"):
        load_signature(exported, "nope")


def jpeg(width: int, height: int, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_image_dimensions_from_headers():
    assert image_dimensions(png("L", 30, 20, 0)) == (30, 20)
    assert image_dimensions(jpeg(31, 21)) == (31, 21)
    assert image_dimensions(jpeg(33, 23, progressive=True)) == (33, 23)
    assert image_dimensions(encoded("BMP", 24, 20)) == (24, 20)
    assert image_dimensions(encoded("GIF", 24, 20)) == (24, 20)
    assert image_dimensions(png_bomb(70_000, 3)) == (70_000, 3)
    assert image_dimensions(b"not an image") is None
    assert image_dimensions(png("L", 30, 20, 0)[:20]) is None
    assert image_dimensions(jpeg(31, 21)[:10]) is None


# --- temperature scaling in the graph ------------------------------------------------------


def test_served_probabilities_are_the_temperature_scaled_ones(tmp_path):
    """serving_default and serving_float both return softmax(logits / T) of the model."""
    import keras

    from medkfp.components.train.models import build_model
    from medkfp.imaging import export_serving_model
    from medkfp.metrics import softmax

    keras.utils.set_random_seed(0)
    model = build_model("simple-cnn", len(CLASSES), SIZE)
    logits_layer = model.get_layer(vocab.LOGITS_LAYER)
    kernel, bias = logits_layer.get_weights()
    logits_layer.set_weights([kernel * 40.0, bias])  # an over-confident head
    temperature = 2.5
    export_dir = export_serving_model(model, CLASSES, SIZE, tmp_path / "m", temperature=temperature)
    pngs = [png("RGB", SIZE, SIZE, seed) for seed in range(6)]
    images = np.stack([decode_and_resize(tf.constant(b), SIZE).numpy() for b in pngs]).astype(np.float32)
    logits = keras.Model(model.input, logits_layer.output)(images, training=False).numpy()
    expected = softmax(logits, temperature)
    assert not np.allclose(expected, softmax(logits), atol=1e-3)  # the scaling shows

    _, serve_bytes = load_signature(export_dir)
    _, serve_float = load_signature(export_dir, vocab.FLOAT_SIGNATURE)
    from_bytes = serve_bytes(**{vocab.INPUT_KEY: tf.constant(pngs)})
    from_float = serve_float(**{vocab.FLOAT_INPUT_KEY: tf.constant(images)})
    np.testing.assert_allclose(from_bytes[vocab.OUTPUT_PROBABILITIES].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(from_float[vocab.OUTPUT_PROBABILITIES].numpy(), expected, atol=1e-5)
    top = [CLASSES[i] for i in logits.argmax(1)]  # the top class is the uncalibrated one
    assert [c.decode() for c in from_bytes[vocab.OUTPUT_CLASSES].numpy()] == top


def test_a_model_without_a_logits_layer_is_scaled_through_its_log_probabilities(tmp_path):
    import keras

    from medkfp.imaging import export_serving_model
    from medkfp.metrics import softmax

    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    model.layers[-1].set_weights(
        [np.full((3, len(CLASSES)), 2.0, np.float32), np.array([0.0, 4.0, 1.0], np.float32)]
    )
    batch = tf.constant([png("RGB", SIZE, SIZE, seed) for seed in range(3)])
    served = []
    for temperature in (1.0, 3.0):
        export_dir = export_serving_model(
            model, CLASSES, SIZE, tmp_path / str(temperature), temperature=temperature
        )
        _, signature = load_signature(export_dir)
        served.append(signature(**{vocab.INPUT_KEY: batch})[vocab.OUTPUT_PROBABILITIES].numpy())
    plain, scaled = served
    np.testing.assert_allclose(scaled, softmax(np.log(plain), 3.0), atol=1e-5)
    assert scaled.max() < plain.max()  # softened


def test_a_temperature_that_is_not_positive_is_refused(tmp_path):
    import keras

    from medkfp.imaging import export_serving_model

    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    with pytest.raises(ValueError, match="temperature must be positive"):
        export_serving_model(model, CLASSES, SIZE, tmp_path / "m", temperature=0.0)
