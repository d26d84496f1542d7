"""Architectures: each takes float32 images in 0..255 and applies its own preprocessing inside."""

from __future__ import annotations

import keras


def simple_cnn(n_classes: int, image_size: int) -> keras.Model:
    """A small CNN for CPU tests and demos."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="simple_cnn")


def mobilenetv2(n_classes: int, image_size: int, weights: str | None = None) -> keras.Model:
    """Keras MobileNetV2 backbone with its preprocessing (scale to -1..1) and a dense head."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)  # mobilenet_v2.preprocess_input
    backbone = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), include_top=False, weights=weights, pooling="avg"
    )
    x = backbone(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2")


BUILDERS = {"simple-cnn": simple_cnn, "mobilenetv2": mobilenetv2}


def build_model(architecture: str, n_classes: int, image_size: int) -> keras.Model:
    """Build an untrained model. Raises ValueError for an unknown architecture."""
    if architecture not in BUILDERS:
        raise ValueError(
            f"unknown architecture {architecture!r}: use one of {', '.join(BUILDERS)}"
        )
    return BUILDERS[architecture](n_classes, image_size)
