"""Train one candidate: stream its balanced train shards, fit, export the serving SavedModel."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from medkfp import vocab
from medkfp.components.balance.logic import read_repeats
from medkfp.components.train.models import build_model
from medkfp.imaging import export_serving_model
from medkfp.store import open_store

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "id": tf.io.FixedLenFeature([], tf.string),
}
SHUFFLE_BUFFER = 4096


def parse_example(record):
    return tf.io.parse_single_example(record, FEATURES)


def decode(example, image_size: int):
    image = tf.io.decode_png(example["image"], channels=3)
    image = tf.ensure_shape(image, (image_size, image_size, 3))
    return tf.cast(image, tf.float32), example["label"]


def download_shards(store, keys: list[str], local_dir: Path) -> list[str]:
    paths = []
    for key in keys:
        path = local_dir / key.rsplit("/", 1)[-1]
        store.get_file(key, path)
        paths.append(str(path))
    return paths


def repeat_by_id(ds: tf.data.Dataset, repeats: dict[str, int]) -> tf.data.Dataset:
    """Show each example as many times as the balancing table says (0 drops it)."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(repeats), tf.string),
            tf.constant(list(repeats.values()), tf.int64),
        ),
        default_value=0,
    )
    return ds.flat_map(
        lambda ex: tf.data.Dataset.from_tensors(ex).repeat(table.lookup(ex["id"]))
    )


def train_dataset(paths, repeats, image_size, batch_size, seed) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(paths).map(parse_example)
    ds = repeat_by_id(ds, repeats).shuffle(SHUFFLE_BUFFER, seed=seed)
    ds = ds.map(lambda ex: decode(ex, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    ds = ds.batch(batch_size).map(lambda x, y: (flip(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(paths, image_size, batch_size) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(paths).map(parse_example)
    ds = ds.map(lambda ex: decode(ex, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def visible_devices() -> list[str]:
    return [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")]


def train(
    dataset_summary: dict,
    balanced_summary: dict,
    candidate: dict,
    epochs: int = 10,
    seed: int = 0,
    patience: int = 3,
) -> dict:
    """Fit `candidate` on the balanced train split, early-stopping on val loss.

    Uploads the exported SavedModel to runs/<run>/candidates/<name>/saved_model/ and
    returns the trained-model summary (model key and URI, history, devices used).
    """
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    spec = vocab.Candidate.from_dict(candidate)
    store = open_store(dataset_summary["store"])
    image_size = dataset_summary["image_size"]
    class_names = dataset_summary["class_names"]
    repeats_table = read_repeats(store.uri, balanced_summary)
    repeats = dict(zip(repeats_table["id"], repeats_table["repeat"].astype(int)))
    keras.utils.set_random_seed(seed)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        splits = dataset_summary["splits"]
        train_paths = download_shards(store, splits["train"]["shards"], tmp)
        val_paths = download_shards(store, splits["val"]["shards"], tmp)
        model = build_model(spec.architecture, len(class_names), image_size)
        model.compile(
            optimizer=keras.optimizers.Adam(spec.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        history = model.fit(
            train_dataset(train_paths, repeats, image_size, spec.batch_size, seed),
            validation_data=eval_dataset(val_paths, image_size, spec.batch_size),
            epochs=epochs,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=patience, restore_best_weights=True
                )
            ],
            verbose=2,
        )
        export_dir = export_serving_model(model, class_names, image_size, tmp / "saved_model")
        model_key = vocab.candidate_key(dataset_summary["run_id"], spec.name, "saved_model")
        store.upload_dir(export_dir, model_key)

    return {
        "candidate": spec.to_dict(),
        "model_key": model_key,
        "model_uri": store.uri_for(model_key),
        "class_names": class_names,
        "image_size": image_size,
        "epochs_run": len(history.history["loss"]),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "train_examples": int(sum(repeats.values())),
        "devices": visible_devices(),
    }
