"""Preprocess: stratified split, resize to three channels, and TFRecord shards in the store.

Shards hold PNG bytes already at the training size, produced by the same decode-and-resize
function the serving signature runs, so training decodes them cheaply and sees exactly what
a served model sees.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image
from sklearn.model_selection import train_test_split

from medkfp import vocab
from medkfp.components.ingest.logic import read_manifest
from medkfp.imaging import decode_and_resize, encode_png
from medkfp.store import open_store

# Formats tf.io.decode_image reads; anything else (PGM, TIFF) is converted to PNG first.
TF_DECODABLE = {"PNG", "JPEG", "GIF", "BMP"}


def split_examples(
    labels: pd.Series, test_fraction: float, val_fraction: float, seed: int
) -> pd.Series:
    """Stratified train/val/test assignment: test first, then val out of the rest.

    Returns a Series of split names aligned with `labels`. Raises ValueError when a class
    is too small to appear in every split.
    """
    for name, value in (("test", test_fraction), ("val", val_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"--{name}-fraction must be between 0 and 1, got {value}")
    counts = labels.value_counts()
    if counts.min() < 3:
        raise ValueError(
            f"class {counts.idxmin()!r} has {counts.min()} image(s): a stratified "
            "train/val/test split needs at least 3 per class"
        )
    index = labels.index.to_numpy()
    rest, test = train_test_split(
        index, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train, val = train_test_split(
        rest, test_size=val_fraction, stratify=labels.loc[rest], random_state=seed
    )
    split = pd.Series("train", index=labels.index)
    split.loc[val] = "val"
    split.loc[test] = "test"
    return split


def to_decodable(data: bytes) -> bytes:
    """Bytes tf.io.decode_image can read: PNG/JPEG/GIF/BMP as is, others re-encoded as PNG."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format in TF_DECODABLE and image.mode in ("L", "RGB", "RGBA", "P", "LA"):
            return data
        if image.mode in ("I;16", "I;16B", "I"):  # 16-bit grayscale: scale to 8 bits
            array = np.asarray(image, dtype=np.float64)
            image = Image.fromarray((array / max(array.max(), 1) * 255).round().astype(np.uint8))
        out = io.BytesIO()
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(out, "PNG")
        return out.getvalue()


def make_example(png: bytes, label: int, image_id: str) -> tf.train.Example:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def preprocess(
    ingest_summary: dict,
    image_size: int,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    shard_max_records: int = vocab.SHARD_MAX_RECORDS,
) -> dict:
    """Split the ingested images and write resized TFRecord shards per split to the store.

    Returns the dataset summary: image size, class names, the examples CSV (id, label,
    split) and per split its shard keys, count and class counts.
    """
    if image_size < 16:
        raise ValueError(f"--image-size must be at least 16 pixels, got {image_size}")
    store = open_store(ingest_summary["store"])
    run_id = ingest_summary["run_id"]
    class_names = ingest_summary["class_names"]
    label_index = {name: i for i, name in enumerate(class_names)}
    manifest = read_manifest(ingest_summary)
    manifest["split"] = split_examples(manifest["label"], test_fraction, val_fraction, seed)
    examples_key = vocab.run_key(run_id, "preprocess", "examples.csv")
    store.put_text(examples_key, manifest[["id", "label", "split"]].to_csv(index=False))

    splits = {}
    for split in vocab.SPLITS:
        rows = manifest[manifest["split"] == split]
        total = max(1, -(-len(rows) // shard_max_records))
        shards = []
        for index in range(total):
            chunk = rows.iloc[index * shard_max_records : (index + 1) * shard_max_records]
            key = vocab.shard_key(run_id, split, index, total)
            _write_shard(store, key, chunk, run_id, label_index, image_size)
            shards.append(key)
        class_counts = rows["label"].value_counts().reindex(class_names, fill_value=0)
        splits[split] = {
            "shards": shards,
            "count": len(rows),
            "class_counts": {c: int(n) for c, n in class_counts.items()},
        }
    return {
        "dataset": ingest_summary["dataset"],
        "run_id": run_id,
        "store": store.uri,
        "class_names": class_names,
        "image_size": image_size,
        "examples_key": examples_key,
        "seed": seed,
        "splits": splits,
    }


def _write_shard(store, key, rows: pd.DataFrame, run_id, label_index, image_size) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for row in rows.itertuples():
                data = to_decodable(store.get_bytes(vocab.raw_image_key(run_id, row.id, row.suffix)))
                png = encode_png(decode_and_resize(tf.constant(data), image_size))
                writer.write(make_example(png, label_index[row.label], row.id).SerializeToString())
        store.put_file(key, path)


def read_examples(dataset_summary: dict) -> pd.DataFrame:
    store = open_store(dataset_summary["store"])
    return pd.read_csv(io.StringIO(store.get_text(dataset_summary["examples_key"])), dtype={"id": str})
