"""The model repository: verified publishes, models.config, rollback, retention, `medkfp models`.

All on a local store and on the loopback S3 server."""

from __future__ import annotations

import json

import keras
import pytest
import tensorflow as tf
from google.protobuf import text_format
from serving_helpers import CLASSES, FailingStore, export_model

from medkfp import vocab
from medkfp.cli import main
from medkfp.errors import InvalidModelError
from medkfp.model_repository import (
    CONFIG_KEY,
    ModelRepository,
    sha256_file,
)
from medkfp.servable import check_servable
from medkfp.store import LocalStore, StoreError, open_store

METRICS = {
    "accuracy": 0.9,
    "balanced_accuracy": 0.88,
    "macro_f1": 0.87,
    "class_names": CLASSES,
    "per_class": {
        c: {"precision": 0.9, "recall": 0.8, "specificity": 0.95, "f1": 0.85, "support": 10} for c in CLASSES
    },
}
METADATA = {
    "dataset": "shapes",
    "candidate": {"name": "simple-cnn-none"},
    "class_names": CLASSES,
    "metrics": METRICS,
    "run_id": "run-1",
    "created": "2026-01-01T00:00:00+00:00",
}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return export_model(tmp_path_factory.mktemp("export") / "m")


@pytest.fixture
def repo(local_store) -> ModelRepository:
    return ModelRepository(local_store)


def publish(repo: ModelRepository, saved_model, **kwargs) -> int:
    return repo.publish("m", saved_model, METADATA, **kwargs)


def served(repo: ModelRepository, model: str = "m") -> tuple[list[int], int | None]:
    """(versions models.config loads, stable version) of a model."""
    return repo.served_versions(model), repo.stable_version(model)


def assert_not_published(repo: ModelRepository, config_before: str | None, complete: list[int]) -> None:
    config_now = repo.store.get_text(CONFIG_KEY) if repo.store.exists(CONFIG_KEY) else None
    assert config_now == config_before
    assert repo.complete_versions("m") == complete


# --- publish -----------------------------------------------------------------------------------


def test_publish_uploads_verifies_then_names_the_version(repo, saved_model):
    version = publish(repo, saved_model)

    assert version == 1
    metadata = repo.metadata("m", 1)
    prefix = repo.store.root / "models" / "m" / "1"
    assert set(metadata["files"]) == {
        p.relative_to(prefix).as_posix()
        for p in prefix.rglob("*")
        if p.is_file() and p.name != vocab.METADATA_FILE
    }
    for relative, digest in metadata["files"].items():
        assert sha256_file(prefix / relative) == digest
    assert {"saved_model.pb", vocab.MODEL_CARD_FILE} <= set(metadata["files"])
    assert metadata["dataset"] == "shapes" and metadata["run_id"] == "run-1"
    assert metadata["previous_version"] is None
    assert metadata["signature"]["inputs"] == {vocab.INPUT_KEY: "DT_STRING"}
    config = repo.read_config()
    [entry] = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("m", "/models/m", "tensorflow")
    assert list(entry.model_version_policy.specific.versions) == [1]
    assert dict(entry.version_labels) == {vocab.STABLE_LABEL: 1}


def test_default_model_card_has_data_metrics_use_and_limits(repo, saved_model):
    publish(repo, saved_model)

    card = repo.store.get_text("models/m/1/MODEL_CARD.md")

    assert card.startswith("# Model card: m v1")
    assert "Dataset: shapes" in card
    assert "| a | 0.900 | 0.800 | 0.950 | 0.850 | 10 |" in card
    assert "macro-F1 0.8700" in card
    assert "Not for diagnosis without clinical validation" in card


def test_the_config_keeps_the_stable_and_the_previous_version(repo, saved_model):
    for _ in range(3):
        publish(repo, saved_model, keep=None)

    assert served(repo) == ([2, 3], 3)
    assert repo.metadata("m", 3)["previous_version"] == 2
    # TF Serving must be able to read what we write.
    text_format.Parse(repo.store.get_text(CONFIG_KEY), type(repo.read_config())())


def no_default_signature(path):
    """A SavedModel whose only signature is "predict" (Keras would add serving_default)."""
    module = tf.Module()
    module.predict = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(path), signatures={"predict": module.predict})
    return path


def export_archive(path, dtype):
    """A SavedModel whose serving_default takes `image_bytes` of `dtype`."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    shape = [None] if dtype == tf.string else [None, 4]

    @tf.function(input_signature=[tf.TensorSpec(shape, dtype, name=vocab.INPUT_KEY)])
    def fn(image_bytes):
        x = tf.zeros([tf.shape(image_bytes)[0], 4]) if dtype == tf.string else image_bytes
        probabilities = model(x)
        return {"probabilities": probabilities, "classes": tf.strings.as_string(tf.argmax(probabilities, 1))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=vocab.SIGNATURE, fn=fn)
    archive.write_out(str(path), verbose=False)
    return path


@pytest.fixture(scope="module")
def unservable(tmp_path_factory):
    """SavedModels that break the serving contract in different ways, with the expected message."""
    tmp = tmp_path_factory.mktemp("unservable")
    keras_default = tmp / "keras-default"
    model = keras.Sequential([keras.Input((4,), name="pixels"), keras.layers.Dense(2)])
    model.export(str(keras_default), verbose=False)
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "saved_model.pb").write_bytes(b"not a protobuf")
    return {
        "empty": (tmp / "nothing", "is not a SavedModel (no saved_model.pb)"),
        "garbage": (tmp / "garbage", "is not a SavedModel protobuf"),
        "keras-default": (keras_default, "serving_default takes pixels, not image_bytes"),
        "float-input": (
            export_archive(tmp / "float", tf.float32),
            "input image_bytes is DT_FLOAT [-1, 4], not a batch of encoded images (DT_STRING [-1])",
        ),
        "no-default": (
            no_default_signature(tmp / "other"),
            "has no serving_default signature (it has: predict);",
        ),
    }


def test_unservable_saved_models_are_refused_with_one_line(repo, unservable):
    for name, (path, message) in unservable.items():
        with pytest.raises(InvalidModelError) as info:
            repo.publish("m", path, METADATA)
        assert message in str(info.value), name
        assert "\n" not in str(info.value)
    assert repo.store.list_keys("models/") == []


def test_check_servable_summarises_the_contract(saved_model):
    summary = check_servable(saved_model)

    assert summary["outputs"] == {vocab.OUTPUT_CLASSES: "DT_STRING", vocab.OUTPUT_PROBABILITIES: "DT_FLOAT"}
    assert {vocab.SIGNATURE, vocab.FLOAT_SIGNATURE} <= set(summary["signatures"])


def test_bad_model_name_is_refused(repo, saved_model):
    with pytest.raises(ValueError, match="invalid model name '../x'"):
        repo.publish("../x", saved_model, METADATA)


def writes_of_one_publish(saved_model, tmp_path) -> int:
    counter = FailingStore(LocalStore(tmp_path / "count"), fail_on=0)
    ModelRepository(counter).publish("m", saved_model, METADATA)
    return counter.writes


def test_interrupted_publish_changes_nothing_served(repo, saved_model, tmp_path):
    publish(repo, saved_model)
    config_before = repo.store.get_text(CONFIG_KEY)
    total = writes_of_one_publish(saved_model, tmp_path)
    # every SavedModel file, the card, metadata.json (the last write before the config)
    for fail_on in range(1, total):
        failing = ModelRepository(FailingStore(repo.store, fail_on))
        with pytest.raises(StoreError, match="injected failure"):
            failing.publish("m", saved_model, METADATA)
        assert_not_published(repo, config_before, [1])
    # numbers of failed publishes are not reused while their folders exist
    assert publish(repo, saved_model) == max(repo.version_numbers("m"))
    assert repo.version_numbers("m")[-1] > total - 1


def test_corrupt_upload_is_caught_by_verification(repo, saved_model):
    class Corrupting(FailingStore):
        def put_file(self, key, path):
            self.inner.put_bytes(key, b"flipped bits")

    publish(repo, saved_model)
    config_before = repo.store.get_text(CONFIG_KEY)

    with pytest.raises(StoreError, match=r"upload of .*models/m/2/.* is corrupt"):
        ModelRepository(Corrupting(repo.store, 0)).publish("m", saved_model, METADATA)

    assert_not_published(repo, config_before, [1])


def test_an_existing_version_is_never_written_again(repo, saved_model, monkeypatch):
    publish(repo, saved_model)
    before = {k: repo.store.get_bytes(k) for k in repo.store.list_keys("models/m/1/")}
    # a second publisher that did not see version 1 picks the same number
    monkeypatch.setattr(repo, "version_numbers", lambda model: [])

    with pytest.raises(StoreError, match="is not empty: another publish"):
        publish(repo, saved_model)

    assert {k: repo.store.get_bytes(k) for k in repo.store.list_keys("models/m/1/")} == before


# --- rollback ----------------------------------------------------------------------------------


def test_rollback_walks_back_through_the_stable_versions(repo, saved_model):
    for _ in range(3):
        publish(repo, saved_model, keep=None)

    assert repo.rollback("m") == 2
    assert served(repo) == ([1, 2], 2)  # 2 is also the highest loaded: it answers unlabelled requests
    assert repo.rollback("m") == 1
    assert served(repo) == ([1], 1)
    with pytest.raises(ValueError, match="v1 has no earlier version to roll back to"):
        repo.rollback("m")

    assert publish(repo, saved_model, keep=None) == 4
    assert served(repo) == ([1, 4], 4)
    assert repo.rollback("m") == 1  # back to the version that was stable before 4, not to 3
    assert repo.rollback("m", version=3) == 3
    assert served(repo) == ([2, 3], 3)


def test_rollback_errors(repo, saved_model):
    with pytest.raises(ValueError, match="model 'm' is not served"):
        repo.rollback("m")
    publish(repo, saved_model)
    with pytest.raises(ValueError, match="already the stable one"):
        repo.rollback("m", version=1)
    with pytest.raises(ValueError, match=r"no complete version 7 \(versions: 1\)"):
        repo.rollback("m", version=7)


# --- retention ---------------------------------------------------------------------------------


def test_retention_keeps_the_newest_and_the_served_versions(repo, saved_model):
    for _ in range(3):
        publish(repo, saved_model, keep=None)
    repo.rollback("m")  # serves 1 and 2
    with pytest.raises(StoreError):
        ModelRepository(FailingStore(repo.store, 2)).publish("m", saved_model, METADATA)  # leaves 4 partial

    assert publish(repo, saved_model, keep=1) == 5

    # 3 is old and not served, 4 an abandoned publish; 2 (loaded beside 5) stays
    assert repo.version_numbers("m") == [2, 5]
    assert served(repo) == ([2, 5], 5)
    assert repo.prune("m", keep=1) == []
    assert publish(repo, saved_model, keep=1) == 6  # numbers are never reused
    assert repo.version_numbers("m") == [5, 6]


# --- on S3 ----------------------------------------------------------------------------------------


def test_publish_interrupt_and_rollback_on_s3(s3_env, saved_model):
    store = open_store("s3://repo-test")
    repo = ModelRepository(store)
    publish(repo, saved_model)
    publish(repo, saved_model)
    config_before = store.get_text(CONFIG_KEY)

    with pytest.raises(StoreError, match="injected failure"):
        ModelRepository(FailingStore(store, 3)).publish("m", saved_model, METADATA)

    assert_not_published(repo, config_before, [1, 2])
    assert repo.rollback("m") == 1
    assert served(repo) == ([1], 1)
    assert [r["stable"] for r in repo.versions("m")] == [True, False]


# --- the command line ------------------------------------------------------------------------------


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_models_publish_list_rollback_commands(capsys, tmp_path, saved_model, unservable):
    store = str(tmp_path / "store")
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "elsewhere", "metrics": METRICS}))

    status, out, err = cli(
        capsys,
        "models",
        "publish",
        "--model",
        "m",
        "--saved-model",
        str(unservable["keras-default"][0]),
        "--store",
        store,
    )
    assert status == 2 and out == ""
    assert err.startswith("medkfp: error: SavedModel ") and err.count("\n") == 1
    assert "serving_default takes pixels, not image_bytes" in err

    publish_args = (
        "models",
        "publish",
        "--model",
        "m",
        "--saved-model",
        str(saved_model),
        "--store",
        store,
        "--metadata",
        str(tmp_path / "meta.json"),
        "--class-names",
        "a,b,c",
    )
    for _ in range(2):
        status, out, _ = cli(capsys, *publish_args)
        assert status == 0
    assert json.loads(out) == {
        "model": "m",
        "version": 2,
        "stable": 2,
        "loaded": [1, 2],
        "uri": f"{store}/models/m/2",
    }

    status, out, _ = cli(capsys, "models", "rollback", "--model", "m", "--store", store)
    assert status == 0
    assert json.loads(out) == {"model": "m", "previous_stable": 2, "stable": 1, "loaded": [1]}

    status, out, _ = cli(capsys, "models", "list", "--model", "m", "--store", store, "--json")
    rows = json.loads(out)
    assert [(r["version"], r["stable"], r["loaded"], r["macro_f1"]) for r in rows] == [
        (1, True, True, 0.87),
        (2, False, False, 0.87),
    ]
    assert ModelRepository(LocalStore(store)).metadata("m", 1)["class_names"] == CLASSES

    status, out, _ = cli(capsys, "models", "list", "--model", "m", "--store", store)
    assert out.splitlines()[1].startswith("* v1  (external)")
