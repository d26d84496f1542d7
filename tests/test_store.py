"""Stores: a local folder and a real S3 server (moto's, over HTTP) behave the same."""

from __future__ import annotations

import random
import time

import pytest

from medkfp import store as store_module
from medkfp.store import LocalStore, StoreError, open_store, resolve_store_uri


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    request.getfixturevalue("s3_env")
    return open_store(f"s3://store-test-{int(time.time() * 1e6) % 10**9}/some/prefix")


def test_put_get_list_exists_delete(store):
    store.put_bytes("a/b/c.bin", b"\x00\x01")
    store.put_json("a/meta.json", {"x": 1})
    store.put_text("z.txt", "hello")
    assert store.get_bytes("a/b/c.bin") == b"\x00\x01"
    assert store.get_json("a/meta.json") == {"x": 1}
    assert store.list_keys("a/") == ["a/b/c.bin", "a/meta.json"]
    assert store.list_keys() == ["a/b/c.bin", "a/meta.json", "z.txt"]
    assert store.exists("z.txt") and not store.exists("a/none")
    store.delete("z.txt")
    assert not store.exists("z.txt")
    with pytest.raises(StoreError, match="not found in store"):
        store.get_bytes("z.txt")


def test_directories_round_trip(store, tmp_path):
    src = tmp_path / "src"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"pb")
    (src / "variables" / "variables.index").write_bytes(b"idx")
    keys = store.upload_dir(src, "models/m/1")
    assert keys == ["models/m/1/saved_model.pb", "models/m/1/variables/variables.index"]
    store.download_dir("models/m/1", tmp_path / "dst")
    assert (tmp_path / "dst" / "variables" / "variables.index").read_bytes() == b"idx"
    with pytest.raises(StoreError, match="nothing stored under"):
        store.download_dir("models/m/2", tmp_path / "none")


@pytest.mark.parametrize("size", [0, 3, 11 * 1024 * 1024])
def test_files_and_bytes_round_trip_in_one_put_or_in_parts(store, tmp_path, monkeypatch, size):
    """Objects up to PUT_PART_BYTES go up in one PUT, larger ones in parts (here 5 MiB, the
    smallest part S3 takes, so 11 MiB is a three-part upload); every byte arrives either way."""
    monkeypatch.setattr(store_module, "PUT_PART_BYTES", 5 * 1024 * 1024)
    data = random.Random(size).randbytes(size)
    (tmp_path / "blob").write_bytes(data)
    store.put_file("f/blob", tmp_path / "blob")
    store.put_bytes("b/blob", data)
    store.get_file("f/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    assert store.get_bytes("b/blob") == data


def test_uri_for_names_the_object(store):
    assert store.uri_for("runs/x/manifest.csv").endswith("/runs/x/manifest.csv")


def test_local_store_refuses_keys_that_leave_it(tmp_path):
    with pytest.raises(StoreError, match="leaves the store"):
        LocalStore(tmp_path / "s").put_bytes("../escape.txt", b"x")


def test_unreachable_endpoint_fails_fast_naming_it(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:9"):
        open_store("s3://medkfp")
    assert time.monotonic() - started < 60


def test_endpoint_without_credentials_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not"):
        open_store("s3://medkfp")


def test_s3_store_without_endpoint_says_what_to_set():
    with pytest.raises(StoreError, match="set AWS_ENDPOINT_URL_S3"):
        open_store("s3://medkfp")


def test_default_store_uri(monkeypatch):
    assert resolve_store_uri(None) == ".medkfp/store"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert resolve_store_uri(None) == "s3://medkfp"
    monkeypatch.setenv("MEDKFP_STORE", "s3://other/prefix")
    assert resolve_store_uri(None) == "s3://other/prefix"
    assert resolve_store_uri("/data/store") == "/data/store"
