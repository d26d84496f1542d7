"""Train one candidate on its balanced train shards and export the serving SavedModel.

The shards are streamed, and a checkpoint goes to the store after every epoch.

A candidate dict (vocab.Candidate.to_dict) carries everything: architecture, head, weights,
optimizer, learning rate, batch size, epochs and the step budget. EarlyStopping (patience 3)
and ReduceLROnPlateau (patience 1) watch the validation loss, as in the COVID-19 study.

A candidate's `min_steps` makes each epoch long enough (the train split repeats) that the
whole run has at least that many optimizer steps: with a fixed epoch count an undersampled
split of a few dozen images gets a few dozen steps and its head never converges.
`warmup_steps` ramps the learning rate up linearly first. After fitting, a temperature is
fitted on the validation split's logits and built into the exported model.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medkfp import vocab
from medkfp.components.train.checkpoints import StoreCheckpoint
from medkfp.components.train.data import train_pipeline
from medkfp.components.train.devices import setup_devices
from medkfp.components.train.models import build_model
from medkfp.errors import InvalidInputError
from medkfp.imaging import export_serving_model
from medkfp.metrics import expected_calibration_error, fit_temperature, negative_log_likelihood, softmax
from medkfp.shards import FEATURES, download_shards, parse_example  # noqa: F401 (FEATURES: the schema train reads)
from medkfp.store import open_store, open_uri
from medkfp.tables import read_repeats
from medkfp.tfdata import without_autotune

MONITOR = "val_loss"
EARLY_STOPPING_PATIENCE = 3
REDUCE_LR_PATIENCE = 1
REDUCE_LR_FACTOR = 0.5
MIN_LEARNING_RATE = 1e-6
OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamax": keras.optimizers.Adamax,
    "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
}


def decode(example, image_size: int):
    image = tf.io.decode_png(example["image"], channels=3)
    # uint8, as the train split: the model's float32 input casts it (data.images_and_labels)
    return tf.ensure_shape(image, (image_size, image_size, 3)), example["label"]


def steps_per_epoch(examples: int, spec: vocab.Candidate) -> int:
    """Batches per epoch: one pass over the split, or more when the candidate's step budget
    (min_steps over its epochs) asks for more."""
    one_pass = max(1, math.ceil(examples / spec.batch_size))
    return max(one_pass, math.ceil(spec.min_steps / spec.epochs))


def eval_dataset(paths, image_size, batch_size, count: int) -> tf.data.Dataset:
    """The `count` examples of a split in order, batched (a known size spares Keras a guess)."""
    ds = tf.data.TFRecordDataset(paths).map(parse_example)
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    ds = ds.map(lambda ex: decode(ex, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotune(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def resolve_weights(weights: str, architecture: str, local_dir: Path) -> str | None:
    """Backbone weights for Keras: None, "imagenet", or a local copy of a weights file.

    `weights` is "none", "imagenet", an s3:// URI or a local path; "{architecture}" in it
    is replaced by the architecture name. Raises StoreError or FileNotFoundError when the
    file is missing.
    """
    if weights in ("none", ""):
        return None
    if weights == "imagenet":
        return "imagenet"
    uri = weights.replace("{architecture}", architecture)
    if not uri.startswith("s3://"):
        if not Path(uri).is_file():
            raise FileNotFoundError(
                f"weights file {uri} not found: give imagenet, none, or the s3:// URI or path "
                "of a .weights.h5 / .h5 file"
            )
        return uri
    store, key = open_uri(uri)
    path = local_dir / key.rsplit("/", 1)[-1]
    store.get_file(key, path)
    return str(path)


def class_weights_by_index(balanced_summary: dict, class_names: list[str]) -> dict[int, float] | None:
    """The balance step's {class name: weight} as Keras wants it, {class index: weight}."""
    weights = balanced_summary.get("class_weights")
    if not weights:
        return None
    return {class_names.index(name): float(w) for name, w in weights.items()}


def compile_model(spec: vocab.Candidate, n_classes: int, image_size: int, weights, xla: bool):
    """Build and compile the candidate's model (call inside the strategy's scope)."""
    model = build_model(
        spec.architecture,
        n_classes,
        image_size,
        weights=weights,
        freeze_backbone=spec.freeze_backbone,
        dense_units=spec.dense_units,
    )
    if spec.optimizer not in OPTIMIZERS:
        raise InvalidInputError(f"unknown optimizer {spec.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    model.compile(
        optimizer=OPTIMIZERS[spec.optimizer](learning_rate=spec.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=xla,
    )
    # Built here, inside the strategy's scope, so a checkpoint can be loaded into its slots.
    model.optimizer.build(model.trainable_variables)
    return model


class WarmUp(keras.callbacks.Callback):
    """Linear learning-rate warm-up from learning_rate / steps to learning_rate over the first
    `steps` optimizer steps (counted by the optimizer, so a resumed run continues the ramp).

    Large early updates on a fresh head and fresh batch-norm statistics are what make a
    small run diverge or stall; after the ramp ReduceLROnPlateau owns the learning rate.
    """

    def __init__(self, steps: int, learning_rate: float):
        super().__init__()
        self.steps = steps
        self.learning_rate = learning_rate
        self.done = False

    def on_train_batch_begin(self, batch, logs=None):
        if self.done:  # spares reading the step counter off the device on every batch
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step < self.steps:
            self.model.optimizer.learning_rate = self.learning_rate * (step + 1) / self.steps
        else:
            self.done = True


def schedule_callbacks() -> tuple[keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau]:
    return (
        keras.callbacks.EarlyStopping(
            monitor=MONITOR, patience=EARLY_STOPPING_PATIENCE, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=MONITOR,
            patience=REDUCE_LR_PATIENCE,
            factor=REDUCE_LR_FACTOR,
            min_lr=MIN_LEARNING_RATE,
        ),
    )


def check_candidate(spec: vocab.Candidate, image_size: int) -> None:
    if spec.epochs < 1:
        raise InvalidInputError(f"--epochs must be at least 1, got {spec.epochs}")
    if spec.min_steps < 0 or spec.warmup_steps < 0:
        raise InvalidInputError(
            f"candidate {spec.name}: min_steps and warmup_steps must be 0 or more, got "
            f"{spec.min_steps} and {spec.warmup_steps}"
        )
    if spec.image_size not in (None, image_size):
        raise InvalidInputError(
            f"candidate {spec.name} wants {spec.image_size} px images but the run's shards are "
            f"{image_size} px: run with --image-size {spec.image_size} or drop image_size from the grid"
        )


def fit_resuming(
    model,
    spec,
    checkpoint: StoreCheckpoint,
    train_ds,
    val_ds,
    class_weight,
    callbacks,
    steps: int | None = None,
) -> int:
    """Fit from the last stored checkpoint (or from scratch); returns the epoch resumed from."""
    resumed_from = checkpoint.restore(model)
    if resumed_from:
        print(f"resuming {spec.name} from its checkpoint after epoch {resumed_from}", flush=True)
    if checkpoint.finished(spec.epochs):  # killed after training, before the export
        best = checkpoint.best_weights()
        if best:
            model.set_weights(best)
        return resumed_from
    warm_up = [WarmUp(spec.warmup_steps, spec.learning_rate)] if spec.warmup_steps else []
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=spec.epochs,
        initial_epoch=resumed_from,
        steps_per_epoch=steps,
        class_weight=class_weight,
        shuffle=False,  # the dataset shuffles itself, seeded
        callbacks=[*warm_up, checkpoint.early_stopping, checkpoint.reduce_lr, checkpoint, *callbacks],
        verbose=2,
    )
    return resumed_from


def split_logits(model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], labels [N]) of `model` over a batched (images, labels) dataset: the
    output of its vocab.LOGITS_LAYER, or log-probabilities for a model without one."""
    layers = {layer.name for layer in model.layers}
    if vocab.LOGITS_LAYER in layers:
        scorer = keras.Model(model.input, model.get_layer(vocab.LOGITS_LAYER).output)
        transform = lambda z: z  # noqa: E731
    else:
        scorer = model
        transform = lambda p: np.log(np.maximum(p, np.finfo(np.float32).tiny))  # noqa: E731
    logits, labels = [], []
    for images, y in ds:
        logits.append(transform(np.asarray(scorer(images, training=False), np.float64)))
        labels.append(y.numpy())
    if not logits:
        return np.zeros((0, 0)), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def calibrate(model, val_ds: tf.data.Dataset) -> dict:
    """Fit the temperature on the validation split; returns {temperature, and the split's
    NLL and ECE before and after}."""
    logits, labels = split_logits(model, val_ds)
    temperature = fit_temperature(logits, labels)
    if not len(labels):
        return {"temperature": temperature, "val_examples": 0}
    return {
        "temperature": temperature,
        "val_examples": int(len(labels)),
        "val_nll_uncalibrated": negative_log_likelihood(logits, labels),
        "val_nll": negative_log_likelihood(logits, labels, temperature),
        "val_ece_uncalibrated": expected_calibration_error(softmax(logits), labels),
        "val_ece": expected_calibration_error(softmax(logits, temperature), labels),
    }


def train(
    dataset_summary: dict,
    balanced_summary: dict,
    candidate: dict,
    seed: int = 0,
    callbacks: list | tuple = (),
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Fit `candidate` on the balanced train split, resuming from its last stored checkpoint.

    Args:
      callbacks: extra Keras callbacks, run after the checkpoint callback.
      strategy: a tf.distribute strategy instead of the automatic choice (GPUs or CPU).
    Returns the trained-model summary: model key and URI, full history (across resumes),
    epoch resumed from, steps per epoch, the temperature fitted on the validation split
    (`calibration`), devices used. Raises ValueError for a bad candidate, StoreError
    when the store or a weights file cannot be read.
    """
    spec = vocab.Candidate.from_dict(candidate)
    image_size = dataset_summary["image_size"]
    check_candidate(spec, image_size)
    store = open_store(dataset_summary["store"])
    class_names = dataset_summary["class_names"]
    repeats_table = read_repeats(store.uri, balanced_summary)
    repeats = dict(zip(repeats_table["id"], repeats_table["repeat"].astype(int)))
    class_weight = class_weights_by_index(balanced_summary, class_names)
    devices = setup_devices(strategy)
    keras.utils.set_random_seed(seed)
    run_id = dataset_summary["run_id"]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        splits = dataset_summary["splits"]
        train_paths = download_shards(store, splits["train"]["shards"], tmp)
        val_paths = download_shards(store, splits["val"]["shards"], tmp)
        weights = resolve_weights(spec.weights, spec.architecture, tmp)
        with devices.strategy.scope():
            model = compile_model(spec, len(class_names), image_size, weights, devices.plan.xla)
        checkpoint = StoreCheckpoint(
            store, vocab.candidate_key(run_id, spec.name, "checkpoints"), *schedule_callbacks()
        )
        examples = int(sum(repeats.values()))
        steps = steps_per_epoch(examples, spec)
        one_pass = not examples or steps == math.ceil(examples / spec.batch_size)
        val_ds = eval_dataset(val_paths, image_size, spec.batch_size, splits["val"]["count"])
        # Batched parse, parallel decode, decoded images cached when they fit (data.py).
        train_ds, input_pipeline = train_pipeline(
            train_paths, repeats, image_size, spec.batch_size, seed, repeat=not one_pass, cache_dir=tmp
        )
        resumed_from = fit_resuming(
            model,
            spec,
            checkpoint,
            train_ds,
            val_ds,
            class_weight,
            callbacks,
            steps=None if one_pass else steps,
        )
        calibration = calibrate(model, val_ds)
        export_dir = export_serving_model(
            model, class_names, image_size, tmp / "saved_model", temperature=calibration["temperature"]
        )
        model_key = vocab.candidate_key(run_id, spec.name, "saved_model")
        store.upload_dir(export_dir, model_key)
        checkpoint.clear()

    history = checkpoint.history
    accelerator = devices.describe()
    return {
        "candidate": spec.to_dict(),
        "model_key": model_key,
        "model_uri": store.uri_for(model_key),
        "class_names": class_names,
        "image_size": image_size,
        "epochs_run": len(history.get("loss", [])),
        "resumed_from_epoch": resumed_from,
        "history": history,
        "class_weight": {class_names[i]: w for i, w in class_weight.items()} if class_weight else None,
        "train_examples": examples,
        "steps_per_epoch": steps,
        "calibration": calibration,
        "devices": accelerator["devices"],
        "accelerator": accelerator,
        "input_pipeline": input_pipeline,
    }
