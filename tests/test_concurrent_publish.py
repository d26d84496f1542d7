"""Concurrent publishes: distinct version numbers and no lost models.config change, on both stores.

The stores are the loopback S3 server (conditional writes) and a folder store (atomic links and
lock files)."""

from __future__ import annotations

import threading

import pytest
from serving_helpers import CLASSES, export_model

from medkfp import vocab
from medkfp.model_repository import CONFIG_KEY, LOADED_VERSIONS, RESERVATION_FILE, ModelRepository
from medkfp.store import LocalStore, PreconditionFailed, open_store

METRICS = {"macro_f1": 0.9, "class_names": CLASSES, "per_class": {}}
METADATA = {
    "dataset": "shapes",
    "candidate": {"name": "simple-cnn-none"},
    "class_names": CLASSES,
    "metrics": METRICS,
    "run_id": "run-c",
}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return export_model(tmp_path_factory.mktemp("export") / "m")


def publish_all_at_once(store_uri: str, saved_model, models: list[str]) -> list[tuple[str, int]]:
    """Publish each of `models` from its own thread and store client, all released together.

    Returns (model, version) per publish; re-raises the first publish's error.
    """
    barrier = threading.Barrier(len(models))
    results: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def one(model: str) -> None:
        repository = ModelRepository(open_store(store_uri))  # its own client, like another pod
        barrier.wait()
        try:
            results.append((model, repository.publish(model, saved_model, METADATA, keep=None)))
        except BaseException as e:  # noqa: BLE001 (reported to the test below)
            errors.append(e)

    threads = [threading.Thread(target=one, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def assert_consistent(repository: ModelRepository, results: list[tuple[str, int]]) -> None:
    """Every publish has its own complete version, and models.config names every model."""
    config = repository.read_config()
    names = [e.name for e in config.model_config_list.config]
    assert {m for m, _ in results} <= set(names), names
    for model in {m for m, _ in results}:
        versions = sorted(v for m, v in results if m == model)
        assert len(set(versions)) == len(versions), f"{model} took one number twice: {versions}"
        assert set(versions) <= set(repository.complete_versions(model))
        entry = repository.config_entry(config, model)
        loaded = list(entry.model_version_policy.specific.versions)
        stable = entry.version_labels[vocab.STABLE_LABEL]
        # the last publish to finish is stable; with two, the other one stays loaded beside it
        assert stable in versions, (stable, versions)
        if len(versions) <= LOADED_VERSIONS:
            assert set(versions) <= set(loaded), (loaded, stable, versions)
        for version in loaded:  # nothing half-written is named
            assert repository.store.exists(vocab.model_version_key(model, version, vocab.METADATA_FILE))


def test_the_loopback_s3_server_honours_conditional_writes(s3_env):
    store = open_store("s3://conditional")
    assert store.conditional_writes
    etag = store.put_bytes_if("k", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes_if("k", b"two", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes_if("k", b"three", if_match="0" * 32)
    store.put_bytes_if("k", b"four", if_match=etag)
    assert store.get_bytes("k") == b"four"


def test_concurrent_publishes_through_s3_keep_every_version_and_model(s3_env, saved_model):
    """Two publishes of one model and one each of two others, at once (the issue's failing case)."""
    store_uri = "s3://concurrent"
    results = publish_all_at_once(store_uri, saved_model, ["a", "a", "b", "c"])
    repository = ModelRepository(open_store(store_uri))
    assert sorted(v for m, v in results if m == "a") == [1, 2]
    assert_consistent(repository, results)
    # and again, now that every model has a stable version to replace
    more = publish_all_at_once(store_uri, saved_model, ["a", "a", "b"])
    assert sorted(v for m, v in more if m == "a") == [3, 4]
    assert_consistent(repository, more)
    names = [e.name for e in repository.read_config().model_config_list.config]
    assert sorted(names) == ["a", "b", "c"]


def test_concurrent_publishes_to_a_folder_store(tmp_path, saved_model):
    store_uri = str(tmp_path / "store")
    results = publish_all_at_once(store_uri, saved_model, ["a", "a", "a", "b"])
    assert sorted(v for m, v in results if m == "a") == [1, 2, 3]
    assert_consistent(ModelRepository(LocalStore(store_uri)), results)


def test_version_numbers_are_reserved_with_create_if_absent(tmp_path, saved_model):
    repository = ModelRepository(LocalStore(tmp_path / "store"))
    assert repository.reserve_version("m") == 1
    assert repository.reserve_version("m") == 2  # the reserved folder counts as taken
    assert repository.store.exists(vocab.model_version_key("m", 1, RESERVATION_FILE))
    # the reserved-but-unpublished numbers are skipped, never named in the config
    assert repository.publish("m", saved_model, METADATA) == 3
    assert repository.served_versions("m") == [3]
    assert "models/m/1" not in repository.store.get_text(CONFIG_KEY)


def test_an_endpoint_without_conditional_writes_falls_back_to_a_lease(s3_env, saved_model, monkeypatch):
    """The same race through the lease path that endpoints ignoring If-None-Match get."""
    import medkfp.store as store_module

    monkeypatch.setitem(store_module._CONDITIONAL, s3_env["AWS_ENDPOINT_URL_S3"], False)
    store_uri = "s3://concurrent-lease"
    assert not open_store(store_uri).conditional_writes
    results = publish_all_at_once(store_uri, saved_model, ["a", "a", "b"])
    repository = ModelRepository(open_store(store_uri))
    assert sorted(v for m, v in results if m == "a") == [1, 2]
    assert_consistent(repository, results)
    assert not [k for k in repository.store.list_keys("models/") if k.endswith(".lease")]
