"""Serving never drops a request: not while versions are published, rolled back or fail, nor on SIGTERM.

Clients predict non-stop while versions are published, rolled back, or fail to publish, and
while the server shuts down on SIGTERM. Real gRPC, real TensorFlow, real stores. Versions
are told apart by their answers: the "a" export puts ~0.98 on class a for every image, the
"b" export on class b.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import CLASSES, FailingStore, export_model, png, stub_predict, wait_for

from medkfp import vocab
from medkfp.model_repository import CONFIG_KEY, ModelRepository
from medkfp.s3server import free_port
from medkfp.serving import client
from medkfp.serving.server import serve, start_server
from medkfp.store import LocalStore, StoreError, open_store

IMAGES = [png("L", 20, 30, 0), png("RGB", 16, 16, 1)]
POLL = 0.2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exports")
    return {"a": export_model(tmp / "a", favour=0), "b": export_model(tmp / "b", favour=1)}


def publish(repo: ModelRepository, saved_model) -> int:
    return repo.publish("m", saved_model, {"class_names": CLASSES}, keep=None)


def answer(response) -> tuple[int, list[str], np.ndarray]:
    """(version, classes, probabilities) of a Predict response."""
    classes = [c.decode() for c in tf.make_ndarray(response.outputs[vocab.OUTPUT_CLASSES])]
    probabilities = tf.make_ndarray(response.outputs[vocab.OUTPUT_PROBABILITIES])
    return response.model_spec.version.value, classes, probabilities


class Clients:
    """Threads that predict non-stop over their own channels (no version, by label, or with
    medkfp's client) and record every answer and every error."""

    def __init__(self, address: str, threads: int = 4):
        self.address = address
        self.answers: Counter = Counter()  # (how, version, first class) -> count
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, index: int) -> None:
        how = ("default", "label", "client", "default")[index % 4]
        with grpc.insecure_channel(self.address) as channel:
            while not self._stop.is_set():
                try:
                    if how == "client":
                        result = client.predict(self.address, "m", IMAGES)
                        version, classes = result["version"], [p["class"] for p in result["predictions"]]
                    else:
                        spec = {"label": vocab.STABLE_LABEL} if how == "label" else {}
                        version, classes, _ = answer(stub_predict(channel, "m", IMAGES, **spec))
                    with self._lock:
                        self.answers[(how, version, classes[0])] += 1
                except Exception as e:  # every failure is a dropped request
                    self.errors.append(e)

    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values())


def answered_by(address: str, **spec) -> int:
    with grpc.insecure_channel(address) as channel:
        return answer(stub_predict(channel, "m", IMAGES, **spec))[0]


def answers_of(address: str, **spec):
    with grpc.insecure_channel(address) as channel:
        return answer(stub_predict(channel, "m", IMAGES, **spec))


def test_hot_swap_and_rollback_drop_no_request(s3_env, tmp_path, models):
    repo = ModelRepository(open_store("s3://hot-swap"))
    publish(repo, models["a"])
    with start_server("s3://hot-swap", port=0, poll_interval=POLL, cache_dir=tmp_path / "cache") as server:
        address = f"127.0.0.1:{server.port}"
        before = answers_of(address)
        with Clients(address) as clients:
            wait_for(lambda: clients.total() >= 8, what="clients running")
            publish(repo, models["b"])
            wait_for(
                lambda: answered_by(address) == 2 and answered_by(address, label="stable") == 2,
                what="v2 swapped in",
            )
            swapped_at = clients.total()
            wait_for(lambda: clients.total() >= swapped_at + 8, what="requests after the swap")

            assert repo.rollback("m") == 1
            wait_for(
                lambda: answered_by(address) == 1 and answered_by(address, label="stable") == 1,
                what="rolled back",
            )
            rolled_at = clients.total()
            wait_for(lambda: clients.total() >= rolled_at + 8, what="requests after the rollback")

        assert clients.errors == []
        versions = {version for (_, version, _) in clients.answers}
        assert versions == {1, 2}, clients.answers
        # each version always gave its own answers: no request saw a half-swapped model
        assert all(cls == ("a" if version == 1 else "b") for (_, version, cls) in clients.answers)
        after = answers_of(address)
        assert after[:2] == before[:2] == (1, ["a", "a"])
        np.testing.assert_array_equal(after[2], before[2])
        states = {s["version"]: s["state"] for s in client.model_status(address, "m")}
        assert states == {1: "AVAILABLE", 2: "END"}


def test_interrupted_publish_changes_nothing_served(tmp_path, models):
    store = LocalStore(tmp_path / "store")
    repo = ModelRepository(store)
    publish(repo, models["a"])
    config = store.get_text(CONFIG_KEY)
    with start_server(store.uri, port=0, poll_interval=POLL, cache_dir=tmp_path / "cache") as server:
        address = f"127.0.0.1:{server.port}"
        before = answers_of(address, label="stable")
        with Clients(address, threads=2) as clients:
            for fail_on in (1, 3, 6):  # first file, a variables file, metadata.json
                with pytest.raises(StoreError, match="injected failure"):
                    publish(ModelRepository(FailingStore(store, fail_on)), models["b"])
            time.sleep(5 * POLL)  # several reloads of the (unchanged) config
            assert store.get_text(CONFIG_KEY) == config
            after = answers_of(address, label="stable")
            assert client.model_status(address, "m") == [
                {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}
            ]

            version = publish(repo, models["b"])  # a good publish after the failed ones
            wait_for(lambda: answered_by(address) == version, what="the good publish served")

        assert clients.errors == []
        assert after[:2] == before[:2] == (1, ["a", "a"])
        np.testing.assert_array_equal(after[2], before[2])
        # the first failure wrote nothing; the other two left partial folders, whose numbers
        # (2 and 3) are not reused
        assert version == 4
        assert {v for (_, v, _) in clients.answers} == {1, version}


def test_sigterm_lets_running_requests_finish(tmp_path, models, monkeypatch):
    """serve() in this (main) thread; a real SIGTERM to this process stops it gracefully.

    Each request is slowed to 0.3 s in the server so that several are running when the
    signal comes. Every request the server started must reach its client; the only
    failures allowed are UNAVAILABLE for requests sent after the server was gone.
    """
    from medkfp.serving import handlers

    handled = Counter()
    lock = threading.Lock()
    run = handlers._run

    def count(key: str) -> None:
        with lock:
            handled[key] += 1

    def slow_run(fn, arrays, where):
        count("started")
        time.sleep(0.3)
        outputs = run(fn, arrays, where)
        count("finished")
        return outputs

    monkeypatch.setattr(handlers, "_run", slow_run)
    store = LocalStore(tmp_path / "store")
    publish(ModelRepository(store), models["a"])
    port = free_port()
    address = f"127.0.0.1:{port}"
    ready = threading.Event()
    results = {"errors": []}

    def keep_predicting(stop: threading.Event):
        while not stop.is_set():
            try:
                client.predict(address, "m", IMAGES, retries=1, backoff=0.2)
                count("ok")
            except client.ServingError as e:
                results["errors"].append(e)

    def clients_then_sigterm():
        if not ready.wait(60):
            return
        stop = threading.Event()
        threads = [threading.Thread(target=keep_predicting, args=(stop,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_for(lambda: handled["started"] - handled["finished"] >= 2, what="requests in flight")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)  # requests keep coming while the server drains and stops
        stop.set()
        for thread in threads:
            thread.join(30)

    handler_before = signal.getsignal(signal.SIGTERM)
    helper = threading.Thread(target=clients_then_sigterm)
    helper.start()
    serve(store.uri, port=port, host="127.0.0.1", poll_interval=60, ready_event=ready)
    helper.join(60)

    assert handled["started"] == handled["finished"] == handled["ok"] >= 2
    assert {e.code for e in results["errors"]} <= {grpc.StatusCode.UNAVAILABLE}, results["errors"][:3]
    assert signal.getsignal(signal.SIGTERM) is handler_before
