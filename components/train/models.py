"""Architectures: images in 0..255 in, softmax out, the backbone's own preprocessing inside.

The input is float32 and casts what it is given, so uint8 batches from the train step's
pipeline are converted inside the model (on a GPU node, on the GPU).

Keeping `preprocess_input` inside the model means the exported serving signature needs no
knowledge of the backbone: it decodes and resizes, the model does the rest.
"""

from __future__ import annotations

import keras

from medkfp import vocab
from medkfp.errors import InvalidInputError

BACKBONES = {
    "mobilenetv2": keras.applications.MobileNetV2,
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
}
# Each backbone's own preprocess_input (ResNet: "caffe" mode, RGB->BGR minus the ImageNet
# mean; MobileNetV2: scale to -1..1); the small CNN scales to 0..1.
PREPROCESS = {
    "simple-cnn": lambda images: images / 255.0,
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
    "resnet50": keras.applications.resnet.preprocess_input,
    "resnet101": keras.applications.resnet.preprocess_input,
}
DROPOUT = {"simple-cnn": 0.2}
# Keras's default 0.99 leaves the moving statistics ~90% at their initial values after ten
# steps: a small run's validation loss then spikes in its first epochs and EarlyStopping
# keeps those weights. At 0.8 they are 90% caught up after ten steps.
BATCH_NORM_MOMENTUM = 0.8
HEAD_DROPOUT = 0.3


@keras.saving.register_keras_serializable(package="medkfp")
class BackbonePreprocess(keras.layers.Layer):
    """The architecture's preprocess_input as a serializable layer (computed in float32)."""

    def __init__(self, architecture: str, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if architecture not in PREPROCESS:
            raise InvalidInputError(
                f"unknown architecture {architecture!r}: use one of {', '.join(PREPROCESS)}"
            )
        self.architecture = architecture

    def call(self, images):
        return PREPROCESS[self.architecture](images)

    def get_config(self) -> dict:
        return {**super().get_config(), "architecture": self.architecture}


def simple_cnn_features(x):
    """Three conv-batch-norm-ReLU blocks and global average pooling: small enough for CPU
    tests and demos.

    Batch normalisation keeps every block's inputs centred, so a high learning rate trains
    from the first steps; its fast momentum lets the moving statistics, which validation and
    serving use, catch up within the few hundred steps of a quick run. Average pooling feeds
    the head a gradient from every position (max pooling: from one), which steadies it.
    """
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.GlobalAveragePooling2D()(x)


def backbone_features(x, architecture: str, image_size: int, weights, freeze: bool):
    """A Keras application without its top, average-pooled; frozen ones run BatchNorm in
    inference mode, as Keras's transfer-learning guide does."""
    backbone = BACKBONES[architecture](
        input_shape=(image_size, image_size, 3), include_top=False, weights=weights, pooling="avg"
    )
    backbone.trainable = not freeze
    return backbone(x, training=False) if freeze else backbone(x)


def build_model(
    architecture: str,
    n_classes: int,
    image_size: int,
    weights: str | None = None,
    freeze_backbone: bool = False,
    dense_units: int | None = None,
) -> keras.Model:
    """Build an untrained classifier.

    Args:
      weights: None, "imagenet" (Keras's download) or a local weights file for the backbone
        (a `.weights.h5` saved from the same application, or Keras's own `*_notop.h5`).
      freeze_backbone: train the head only; by default every layer trains.
      dense_units: units of the head's hidden dense layer (0: none; None: the default).
    Raises ValueError for an unknown architecture or weights the architecture cannot take.
    """
    if architecture not in PREPROCESS:
        raise InvalidInputError(f"unknown architecture {architecture!r}: use one of {', '.join(PREPROCESS)}")
    if dense_units is None:
        dense_units = vocab.DEFAULT_DENSE_UNITS[architecture]
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = BackbonePreprocess(architecture, name="preprocess")(inputs)
    if architecture == "simple-cnn":
        if weights is not None:
            raise InvalidInputError("simple-cnn has no pretrained weights: use weights none")
        x = simple_cnn_features(x)
    else:
        x = backbone_features(x, architecture, image_size, weights, freeze_backbone)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="head")(x)
    x = keras.layers.Dropout(DROPOUT.get(architecture, HEAD_DROPOUT))(x)
    # Logits and softmax apart, so the export can divide the logits by the fitted temperature;
    # float32 both: stable under the mixed-precision policy used on GPUs.
    logits = keras.layers.Dense(n_classes, dtype="float32", name=vocab.LOGITS_LAYER)(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=architecture.replace("-", "_"))
