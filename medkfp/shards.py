"""The TFRecord shard schema the steps share: feature keys, writing, parsing and fetching shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from medkfp.tfdata import without_autotune

IMAGE, LABEL, ID = "image", "label", "id"
# Each record: the PNG bytes at the training size, the class index and the image id.
FEATURES = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    ID: tf.io.FixedLenFeature([], tf.string),
}


def make_example(png: bytes, label: int, image_id: str) -> tf.train.Example:
    """One shard record."""
    feature = {
        IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(record):
    """One serialized record -> {image, label, id} tensors."""
    return tf.io.parse_single_example(record, FEATURES)


def parse_examples(records):
    """A batch of serialized records -> {image, label, id} tensors with a leading batch axis."""
    return tf.io.parse_example(records, FEATURES)


def download_shards(store, keys: list[str], local_dir: Path) -> list[str]:
    """Copy the shards `keys` from `store` into `local_dir`; returns their local paths in order.

    Raises StoreError when a shard cannot be read."""
    paths = []
    for key in keys:
        path = local_dir / key.rsplit("/", 1)[-1]
        store.get_file(key, path)
        paths.append(str(path))
    return paths


def read_split(paths: list[str]) -> tuple[list[bytes], np.ndarray]:
    """Local shard files -> (the encoded images, their class indices), in record order."""
    images, labels = [], []
    for example in without_autotune(tf.data.TFRecordDataset(paths).map(parse_example)):
        images.append(example[IMAGE].numpy())
        labels.append(int(example[LABEL]))
    return images, np.array(labels, dtype=np.int64)
