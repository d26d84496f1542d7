"""The S3 endpoint going away and coming back: bounded retries, one-line failure, no half-written publish.

Store calls retry with backoff for a bounded time, fail in one line naming the endpoint when it
stays away, and a publish cut off mid-way never leaves a half-written version named in
models.config.

Two kinds of outage, both real: the loopback S3 server (moto) is stopped and started again on
the same port; and, where the data must survive the outage the way it does on a MinIO disk
(moto keeps objects in memory only), a TCP relay in front of the server is stopped, which
refuses and cuts connections exactly like a stopped endpoint while the objects stay."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from serving_helpers import CLASSES, export_model

from medkfp.model_repository import CONFIG_KEY, ModelRepository
from medkfp.s3server import free_port, loopback_s3
from medkfp.store import RETRY_SECONDS_ENV, StoreError, open_store

METADATA = {
    "dataset": "shapes",
    "candidate": {"name": "simple-cnn-none"},
    "class_names": CLASSES,
    "metrics": {"macro_f1": 0.9},
    "run_id": "run-o",
}


class Relay:
    """A TCP relay on a fixed loopback port in front of the S3 server; stop() is an outage."""

    def __init__(self, target: str):
        self.target = int(target.rsplit(":", 1)[1])
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port again
        self.listener.settimeout(0.1)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self.listener = self.listener, None
        if listener:
            listener.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay(s3_server, monkeypatch):
    relay = Relay(s3_server["AWS_ENDPOINT_URL_S3"])
    relay.start()
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", relay.endpoint)
    yield relay
    relay.stop()


def later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def test_store_calls_wait_for_a_restarted_server(s3_server, monkeypatch):
    """moto stopped, then started again on the same port while a step opens its store."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv(RETRY_SECONDS_ENV, "60")
    with contextlib.ExitStack() as servers:
        servers.enter_context(loopback_s3(port=port, set_environ=False))
        open_store("s3://outage").put_bytes("before", b"1")  # the endpoint answered once
        servers.close()  # the server goes away

        started = time.monotonic()
        restart = later(2.0, lambda: servers.enter_context(loopback_s3(port=port, set_environ=False)))
        store = open_store("s3://outage")  # retried until the server is back
        store.put_bytes("after", b"2")
        assert store.get_bytes("after") == b"2"
        waited = time.monotonic() - started
        restart.join()
        assert 2.0 <= waited < 60


def test_an_endpoint_that_stays_away_fails_in_one_line_naming_it(relay, monkeypatch):
    monkeypatch.setenv(RETRY_SECONDS_ENV, "2")
    store = open_store("s3://outage-gone")
    store.put_bytes("k", b"v")
    relay.stop()
    started = time.monotonic()
    with pytest.raises(StoreError) as error:
        store.get_bytes("k")
    message = str(error.value)
    assert message.startswith(f"cannot reach the S3 endpoint {relay.endpoint} for s3://outage-gone/k")
    assert RETRY_SECONDS_ENV in message and "\n" not in message
    assert 2 <= time.monotonic() - started < 20


def test_bad_retry_setting_is_one_line(relay, monkeypatch):
    monkeypatch.setenv(RETRY_SECONDS_ENV, "soon")
    with pytest.raises(StoreError, match=f"{RETRY_SECONDS_ENV}='soon' is not a number of seconds"):
        open_store("s3://outage-setting").put_bytes("k", b"v")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return export_model(tmp_path_factory.mktemp("export") / "m")


def cut_after(store, writes: int, relay: Relay, back_after: float | None) -> None:
    """Stop the endpoint right after the store's `writes`-th file upload; restart it later."""
    original = store.put_file
    count = {"n": 0}

    def put_file(key, path):
        original(key, path)
        count["n"] += 1
        if count["n"] == writes:
            relay.stop()
            if back_after is not None:
                later(back_after, relay.start)

    store.put_file = put_file


def test_a_publish_survives_the_endpoint_going_away_mid_upload(relay, saved_model, monkeypatch):
    monkeypatch.setenv(RETRY_SECONDS_ENV, "60")
    repository = ModelRepository(open_store("s3://outage-publish"))
    assert repository.publish("m", saved_model, METADATA) == 1
    cut_after(repository.store, 1, relay, back_after=2.0)
    started = time.monotonic()
    assert repository.publish("m", saved_model, METADATA) == 2
    assert time.monotonic() - started >= 2.0
    assert repository.served_versions("m") == [1, 2] and repository.stable_version("m") == 2
    assert repository.complete_versions("m") == [1, 2]


def test_a_publish_cut_off_for_good_names_nothing_half_written(relay, saved_model, monkeypatch):
    monkeypatch.setenv(RETRY_SECONDS_ENV, "1")
    repository = ModelRepository(open_store("s3://outage-cut"))
    assert repository.publish("m", saved_model, METADATA) == 1
    config_before = repository.store.get_text(CONFIG_KEY)
    cut_after(repository.store, 2, relay, back_after=None)
    with pytest.raises(StoreError, match=f"cannot reach the S3 endpoint {relay.endpoint}"):
        repository.publish("m", saved_model, METADATA)

    relay.start()  # the endpoint is back: what is served did not move
    fresh = ModelRepository(open_store("s3://outage-cut"))
    assert fresh.store.get_text(CONFIG_KEY) == config_before
    assert fresh.complete_versions("m") == [1] and fresh.version_numbers("m") == [1, 2]
    # the abandoned number is not reused; the next publish takes a new one
    assert fresh.publish("m", saved_model, METADATA) == 3
    assert fresh.served_versions("m") == [1, 3]
