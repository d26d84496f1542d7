"""The train step: architectures, weights from the store, device choice, resumable checkpoints, class weights.

Each architecture has its own preprocessing and the weights come from the object store;
checkpoints let a killed task resume; and one short run trains a real backbone through the S3 store."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from training_helpers import SHAPES, prepare_shapes, quick_candidate

from medkfp import vocab
from medkfp.components.evaluate.logic import evaluate
from medkfp.components.train.devices import plan_devices, setup_devices
from medkfp.components.train.logic import check_candidate, resolve_weights, train
from medkfp.components.train.models import BackbonePreprocess, build_model
from medkfp.imaging import export_serving_model, load_signature
from medkfp.store import StoreError, open_store

SIZE = 32


class Killed(Exception):
    """Stands in for the pod being killed."""


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.weights = self.model.get_weights()
            raise Killed(f"killed after epoch {self.epoch}")


class Watch(keras.callbacks.Callback):
    """Records the epochs run and the state training (re)started from."""

    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []

    def on_train_begin(self, logs=None):
        self.start_weights = self.model.get_weights()
        self.start_iterations = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_end(self, logs=None):
        self.model_at_end = self.model


def assert_serving_signature(saved_model_dir, n_classes: int) -> None:
    _, signature = load_signature(saved_model_dir)
    inputs = signature.structured_input_signature[1]
    assert inputs[vocab.INPUT_KEY].dtype == tf.string
    outputs = signature.structured_outputs
    assert outputs[vocab.OUTPUT_PROBABILITIES].shape.as_list() == [None, n_classes]
    assert outputs[vocab.OUTPUT_CLASSES].dtype == tf.string


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_shapes(tmp_path_factory.mktemp("prepared"), per_class=12, size=SIZE)


# --- architectures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "preprocess_input"),
    [
        ("resnet50", keras.applications.resnet.preprocess_input),
        ("resnet101", keras.applications.resnet.preprocess_input),
        ("mobilenetv2", keras.applications.mobilenet_v2.preprocess_input),
    ],
)
def test_each_backbone_runs_its_own_preprocess_input_inside(architecture, preprocess_input):
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    layer = BackbonePreprocess(architecture)
    np.testing.assert_allclose(layer(images), preprocess_input(images.copy()), rtol=1e-6)
    # serializable: a saved model rebuilds the same layer
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(rebuilt, BackbonePreprocess) and rebuilt.architecture == architecture


def test_every_layer_trains_by_default_and_freeze_trains_the_head_only():
    full = build_model("mobilenetv2", 3, SIZE, dense_units=16)
    frozen = build_model("mobilenetv2", 3, SIZE, freeze_backbone=True, dense_units=16)
    backbone = full.get_layer("mobilenetv2_1.00_32")
    assert backbone.trainable and len(backbone.trainable_weights) > 100
    assert len(full.trainable_weights) == len(backbone.trainable_weights) + 4
    # frozen: the dense head (16 units) and the softmax only
    assert [w.shape for w in frozen.trainable_weights] == [(1280, 16), (16,), (16, 3), (3,)]
    assert full.get_layer("head").units == 16
    assert full.output.dtype == "float32"


def test_simple_cnn_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="simple-cnn has no pretrained weights"):
        build_model("simple-cnn", 3, SIZE, weights="imagenet")
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg", 3, SIZE)


def test_weights_are_imagenet_none_or_a_file_from_the_store(s3_env, tmp_path):
    """The real backbone run below loads such a file; here: where it comes from, and the errors."""
    store = open_store("s3://medkfp-weights")
    store.put_bytes("keras/mobilenetv2.weights.h5", b"weights")
    uri = "s3://medkfp-weights/keras/{architecture}.weights.h5"
    path = resolve_weights(uri, "mobilenetv2", tmp_path)
    assert path.endswith("mobilenetv2.weights.h5") and open(path, "rb").read() == b"weights"
    assert resolve_weights(path, "mobilenetv2", tmp_path) == path  # a local file is used in place
    assert resolve_weights("none", "resnet50", tmp_path) is None
    assert resolve_weights("imagenet", "resnet50", tmp_path) == "imagenet"  # Keras downloads it
    with pytest.raises(StoreError, match="not found in store: s3://medkfp-weights/keras/resnet50"):
        resolve_weights(uri, "resnet50", tmp_path)
    with pytest.raises(FileNotFoundError, match="weights file /nowhere/x.h5 not found"):
        resolve_weights("/nowhere/x.h5", "resnet50", tmp_path)


# --- devices -----------------------------------------------------------------------------------


def test_gpus_switch_on_mixed_precision_xla_and_mirrored_strategy():
    on_cpu = plan_devices([])
    assert (on_cpu.mixed_precision, on_cpu.xla, on_cpu.mirrored, on_cpu.policy) == (
        False,
        False,
        False,
        "float32",
    )
    on_gpus = plan_devices(["/device:GPU:0", "/device:GPU:1"])
    assert (on_gpus.mixed_precision, on_gpus.xla, on_gpus.mirrored, on_gpus.policy) == (
        True,
        True,
        True,
        "mixed_float16",
    )


def test_devices_used_are_logged_and_described():
    lines = []
    devices = setup_devices(log=lines.append)
    described = devices.describe()
    assert described["gpus"] == [] and described["devices"][0].endswith("CPU:0")
    assert described["replicas"] == 1 and described["mixed_precision"] is False
    assert keras.mixed_precision.global_policy().name == "float32"
    assert lines and lines[0].startswith("WARNING: no GPU visible")  # a silent CPU fall-back shows


# --- training ----------------------------------------------------------------------------------


def test_train_exports_the_serving_signature(trained_shapes, tmp_path):
    store, _, _, model = trained_shapes
    assert model["epochs_run"] >= 1 and model["devices"]
    assert model["resumed_from_epoch"] == 0
    assert all(len(values) == model["epochs_run"] for values in model["history"].values())
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(model["history"])
    assert model["accelerator"]["strategy"] and model["accelerator"]["devices"] == model["devices"]
    store.download_dir(model["model_key"], tmp_path / "m")
    assert_serving_signature(tmp_path / "m", 3)
    # the exported model replaced the checkpoints
    assert store.list_keys(vocab.candidate_key("test-run", "simple-cnn-none", "checkpoints") + "/") == []


def test_killed_training_resumes_from_its_last_checkpoint(prepared):
    candidate = quick_candidate("undersample", epochs=4)
    checkpoints = vocab.candidate_key(prepared.dataset["run_id"], candidate["name"], "checkpoints")
    kill = KillAfterEpoch(2)
    with pytest.raises(Killed):
        train(prepared.dataset, prepared.balanced("undersample"), candidate, callbacks=[kill])
    latest = prepared.store.get_json(f"{checkpoints}/latest.json")
    assert latest["epoch"] == 2 and len(latest["history"]["loss"]) == 2
    assert prepared.store.exists(f"{checkpoints}/{latest['weights']}")

    watch = Watch()
    resumed = train(
        prepared.dataset,
        prepared.balanced("undersample"),
        candidate,
        callbacks=[watch],
        strategy=tf.distribute.MirroredStrategy(["/cpu:0"]),
    )
    assert watch.epochs == [2, 3]  # only the remaining epochs ran
    assert all(np.array_equal(a, b) for a, b in zip(watch.start_weights, kill.weights))
    steps_per_epoch = -(-sum(prepared.balanced("undersample")["after"].values()) // 8)
    assert watch.start_iterations == 2 * steps_per_epoch  # the optimizer state came back too
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == 4
    assert resumed["history"]["loss"][:2] == latest["history"]["loss"]
    assert resumed["accelerator"]["strategy"] == "MirroredStrategy"
    assert prepared.store.list_keys(checkpoints + "/") == []


def test_killed_after_its_last_epoch_it_exports_without_training_again(prepared, tmp_path):
    candidate = quick_candidate("oversample", epochs=2)
    with pytest.raises(Killed):
        train(prepared.dataset, prepared.balanced("oversample"), candidate, callbacks=[KillAfterEpoch(2)])
    watch = Watch()
    resumed = train(prepared.dataset, prepared.balanced("oversample"), candidate, callbacks=[watch])
    assert watch.epochs == [] and resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == 2
    prepared.store.download_dir(resumed["model_key"], tmp_path / "m")
    assert_serving_signature(tmp_path / "m", 3)


def test_class_weights_from_the_balance_step_reach_fit(prepared, monkeypatch):
    seen = {}
    fit = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    balanced = prepared.balanced("class_weight")
    summary = train(prepared.dataset, balanced, quick_candidate("class_weight", epochs=1))
    expected = {SHAPES.index(name): w for name, w in balanced["class_weights"].items()}
    assert seen["class_weight"] == pytest.approx(expected)
    assert summary["class_weight"] == pytest.approx(balanced["class_weights"])
    assert summary["train_examples"] == sum(balanced["before"].values())  # every image once


class LearningRates(keras.callbacks.Callback):
    """Records the learning rate each optimizer step runs with."""

    def __init__(self):
        super().__init__()
        self.rates: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate.numpy()))


def test_a_tiny_undersampled_split_still_gets_the_step_budget_and_converges(prepared, tmp_path):
    """The quick grid's undersample candidate (with a smaller budget, for speed) on 3 x ~7
    train images, one batch an epoch: the step budget repeats the split until the run has its
    minimum number of steps, the learning rate warms up, and the head converges."""
    quick = next(c for c in vocab.GRIDS["quick"] if c.balancing == "undersample")
    candidate = {**quick.to_dict(), "epochs": 3, "min_steps": 120}
    balanced = prepared.balanced("undersample")
    rates = LearningRates()
    trained = train(prepared.dataset, balanced, candidate, callbacks=[rates])
    assert trained["steps_per_epoch"] == 40 > -(-balanced["count"] // quick.batch_size)
    assert len(rates.rates) == trained["epochs_run"] * trained["steps_per_epoch"]
    warmup = quick.warmup_steps
    assert rates.rates[0] == pytest.approx(quick.learning_rate / warmup)
    assert rates.rates[warmup - 1] == pytest.approx(quick.learning_rate)
    assert trained["calibration"]["temperature"] > 0
    metrics = evaluate(prepared.dataset, trained)["metrics"]
    assert metrics["macro_f1"] >= 0.85, metrics["confusion_matrix"]


def test_a_candidate_for_other_shards_or_no_epochs_is_refused():
    with pytest.raises(ValueError, match="wants 64 px images but the run's shards are 32 px"):
        check_candidate(vocab.Candidate("simple-cnn", "none", image_size=64), 32)
    with pytest.raises(ValueError, match="--epochs must be at least 1"):
        check_candidate(vocab.Candidate("simple-cnn", "none", epochs=0), 32)
    with pytest.raises(ValueError, match="min_steps and warmup_steps must be 0 or more"):
        check_candidate(vocab.Candidate("simple-cnn", "none", min_steps=-1), 32)


def test_real_backbone_with_weights_from_the_store(s3_env, tmp_path):
    """MobileNetV2 at 32 px for 2 epochs, everything through S3: backbone weights file, shards,
    checkpoints and the exported model. The backbone is frozen, so after training it still holds
    exactly the file's weights (and tracing a fully trainable one costs ~40 s of CPU more)."""
    backbone = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, pooling="avg"
    )
    backbone.set_weights([w + 0.25 for w in backbone.get_weights()])  # unlike any fresh init
    backbone.save_weights(tmp_path / "w.weights.h5")
    store = open_store("s3://medkfp-train")
    store.put_file("weights/mobilenetv2.weights.h5", tmp_path / "w.weights.h5")
    prepared = prepare_shapes(tmp_path, store.uri, per_class=12, size=SIZE)
    candidate = vocab.Candidate(
        "mobilenetv2",
        "oversample",
        batch_size=8,
        learning_rate=1e-3,
        epochs=2,
        dense_units=32,
        weights="s3://medkfp-train/weights/{architecture}.weights.h5",
        freeze_backbone=True,
    ).to_dict()
    balanced = prepared.balanced("oversample")
    watch = Watch()
    trained = train(prepared.dataset, balanced, candidate, callbacks=[watch])
    model = watch.model_at_end
    after = model.get_layer(backbone.name).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(after, backbone.get_weights()))
    assert not np.array_equal(model.get_layer("head").get_weights()[0], watch.start_weights[-4])
    assert trained["epochs_run"] == 2
    assert trained["train_examples"] == 3 * max(balanced["before"].values())
    assert trained["model_uri"] == f"s3://medkfp-train/{trained['model_key']}"
    assert trained["candidate"]["weights"].startswith("s3://")

    scored = evaluate(prepared.dataset, trained, report_path=tmp_path / "report.html")
    metrics = scored["metrics"]
    assert np.array(metrics["confusion_matrix"]).sum() == prepared.dataset["splits"]["test"]["count"]
    assert metrics["class_names"] == SHAPES
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3
    json.dumps(scored)


@pytest.mark.integration
@pytest.mark.parametrize("architecture", ["resnet50", "resnet101"])
def test_large_backbones_export_the_serving_signature(architecture, tmp_path):
    """simple-cnn and mobilenetv2 export in the tests above; these take ~30 s each."""
    model = build_model(architecture, 4, SIZE)
    export_serving_model(model, vocab.COVID_CLASSES, SIZE, tmp_path / "m")
    assert_serving_signature(tmp_path / "m", 4)
    _, signature = load_signature(tmp_path / "m")
    image = tf.io.encode_png(tf.zeros((40, 40, 3), tf.uint8)).numpy()
    probabilities = signature(**{vocab.INPUT_KEY: tf.constant([image])})[vocab.OUTPUT_PROBABILITIES]
    assert probabilities.shape == (1, 4)
    np.testing.assert_allclose(probabilities.numpy().sum(), 1.0, atol=1e-5)
