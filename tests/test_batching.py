"""Server-side batching: the queue on its own, then real gRPC requests against a real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import yaml
from serving_helpers import CLASSES, export_model, png
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from medkfp import vocab
from medkfp.cli import main
from medkfp.model_repository import ModelRepository
from medkfp.serving import server as server_module
from medkfp.serving.batching import (
    Batcher,
    BatchingConfigError,
    BatchingParameters,
    QueueFull,
    read_batching_parameters,
)
from medkfp.serving.server import RequestLimits, start_server
from medkfp.store import LocalStore

CLIENTS = 8
# Generous, so that 8 concurrent clients on a loaded 2-core machine do land in one batch.
GENEROUS = BatchingParameters(max_batch_size=CLIENTS, batch_timeout_micros=300_000, num_batch_threads=1)
IMAGES = [png("L" if i % 2 else "RGB", 16 + i, 20, i) for i in range(CLIENTS)]
K8S_CONFIGMAP = Path(__file__).resolve().parents[1] / "k8s" / "base" / "serving-batching-configmap.yaml"


def doubling(calls: list[int]):
    """A runner (any array dict -> array dict function) that doubles `x` and logs batch sizes."""

    def run(inputs):
        calls.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": inputs["x"] * 2, "n": np.full(len(inputs["x"]), len(inputs["x"]))}

    return run


def concurrently(count: int, work) -> list:
    """Run work(i) for i < count in threads started together; results (or exceptions) by i."""
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def one(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as e:  # returned, so the test can assert on it
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# --- the queue ------------------------------------------------------------------------------


@pytest.fixture
def batcher():
    batcher = Batcher(GENEROUS)
    yield batcher
    batcher.close()


def test_concurrent_requests_run_as_one_batch_and_split_back(batcher):
    calls = []
    run = doubling(calls)
    results = concurrently(CLIENTS, lambda i: batcher.run("k", run, {"x": np.array([i, 10 * i])}))

    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], [2 * i, 20 * i])
    # max_batch_size counts items, as in TF Serving: 8 requests of 2 make two full batches.
    assert calls == [8, 8]
    assert batcher.batch_sizes == {4: 2}


def test_full_batch_runs_before_the_timeout(batcher):
    started = time.monotonic()
    concurrently(CLIENTS, lambda i: batcher.run("k", doubling([]), {"x": np.array([i])}))
    assert time.monotonic() - started < GENEROUS.batch_timeout_micros / 1e6


def test_timeout_bounds_the_wait_of_a_lone_request():
    batcher = Batcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=20_000))
    try:
        started = time.monotonic()
        batcher.run("k", doubling([]), {"x": np.array([1])})
        waited = time.monotonic() - started
    finally:
        batcher.close()
    assert 0.02 <= waited < 1.0


def test_oversized_request_runs_alone(batcher):
    calls = []
    result = batcher.run("k", doubling(calls), {"x": np.arange(CLIENTS + 3)})
    assert calls == [CLIENTS + 3]
    np.testing.assert_array_equal(result["n"], [CLIENTS + 3] * (CLIENTS + 3))


def test_a_failing_request_fails_alone(batcher):
    calls = []
    run = doubling(calls)
    results = concurrently(CLIENTS, lambda i: batcher.run("k", run, {"x": np.array([-1 if i == 3 else i])}))

    assert isinstance(results[3], ValueError)
    for i, result in enumerate(results):
        if i != 3:
            np.testing.assert_array_equal(result["y"], [2 * i])
    assert calls[0] == CLIENTS and sorted(calls[1:]) == [1] * CLIENTS  # the batch, then one by one


def test_different_keys_never_share_a_batch(batcher):
    calls = []
    run = doubling(calls)
    results = concurrently(CLIENTS, lambda i: batcher.run(i % 2, run, {"x": np.array([i])}))
    assert [int(r["n"][0]) for r in results] == [4] * CLIENTS
    assert sorted(calls) == [4, 4]


def test_full_queue_refuses_at_once():
    gate = threading.Event()
    batcher = Batcher(BatchingParameters(max_batch_size=1, max_enqueued_batches=2, num_batch_threads=1))
    try:
        blocked = batcher.submit("k", lambda inputs: gate.wait(10) and inputs, {"x": np.array([1])})
        time.sleep(0.2)  # the worker took the first batch and is stuck in it
        waiting = [batcher.submit("k", lambda inputs: inputs, {"x": np.array([i])}) for i in range(2)]
        with pytest.raises(QueueFull, match="max_enqueued_batches"):
            batcher.submit("k", lambda inputs: inputs, {"x": np.array([9])})
        gate.set()
        assert blocked.result(10)["x"][0] == 1
        assert [w.result(10)["x"][0] for w in waiting] == [0, 1]
    finally:
        gate.set()
        batcher.close()


# --- the parameters file ----------------------------------------------------------------------


def test_reads_the_k8s_tf_serving_batching_file(tmp_path):
    text = yaml.safe_load(K8S_CONFIGMAP.read_text())["data"]["batching.config"]
    ignored = "pad_variable_length_inputs: true\n"  # a TF Serving field this server does not use
    (tmp_path / "batching.config").write_text("# TF Serving's format\n" + text + ignored)
    parameters = read_batching_parameters(tmp_path / "batching.config")
    assert parameters == BatchingParameters(
        max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=100, num_batch_threads=2
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_batch_size: 32", "max_batch_size"),
        ("max_batch_sise { value: 32 }", "max_batch_sise"),
        ("max_batch_size { value: 0 }", "at least 1"),
    ],
)
def test_bad_batching_file_is_a_one_line_error(tmp_path, text, message):
    (tmp_path / "b.config").write_text(text)
    with pytest.raises(BatchingConfigError, match=message):
        read_batching_parameters(tmp_path / "b.config")


# --- over gRPC --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Model "m": version 1 favours class a, version 2 class b."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    repo = ModelRepository(store)
    for favour in (0, 1):
        repo.publish(
            "m",
            export_model(tmp_path_factory.mktemp("export") / "m", favour=favour),
            {"class_names": CLASSES},
        )
    return store


@pytest.fixture(scope="module")
def batched(store, tmp_path_factory):
    handle = start_server(
        store.uri,
        port=0,
        cache_dir=tmp_path_factory.mktemp("cache"),
        poll_interval=60,
        limits=RequestLimits(max_batch=16),
        batching=GENEROUS,
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def unbatched(store, tmp_path_factory):
    handle = start_server(store.uri, port=0, cache_dir=tmp_path_factory.mktemp("cache"), poll_interval=60)
    yield handle
    handle.stop()


def predict(server, images: list[bytes], version: int | None = None):
    """One Predict over a channel of its own (as separate clients do)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    if version is not None:
        request.model_spec.version.value = version
    tensor = tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)])
    request.inputs[vocab.INPUT_KEY].CopyFrom(tensor)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    return (
        response.model_spec.version.value,
        tf.make_ndarray(response.outputs[vocab.OUTPUT_PROBABILITIES]),
        list(tf.make_ndarray(response.outputs[vocab.OUTPUT_CLASSES])),
    )


def test_concurrent_grpc_requests_are_batched_and_answered_as_unbatched(batched, unbatched):
    before = sum(n for size, n in batched.batcher.batch_sizes.items() if size > 1)
    results = concurrently(CLIENTS, lambda i: predict(batched, IMAGES[i : i + 1], version=1))

    assert sum(n for size, n in batched.batcher.batch_sizes.items() if size > 1) > before
    for i, result in enumerate(results):
        version, probabilities, classes = result
        want_version, want_probabilities, want_classes = predict(unbatched, IMAGES[i : i + 1], version=1)
        assert version == want_version == 1
        np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-5, atol=1e-6)
        assert classes == want_classes


def test_bad_request_in_a_batch_fails_alone(batched):
    def work(i):
        return predict(batched, [b"not an image at all"] if i == 5 else IMAGES[i : i + 1])

    results = concurrently(CLIENTS, work)

    assert isinstance(results[5], grpc.RpcError)
    assert results[5].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot process the input" in results[5].details()
    assert all(r[0] == 2 and len(r[1]) == 1 for i, r in enumerate(results) if i != 5)


def test_request_limits_hold_with_batching(batched):
    with pytest.raises(grpc.RpcError) as raised:
        predict(batched, IMAGES * 3)  # 24 images, above the limit of 16 per request
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit of 16" in raised.value.details()


def test_versions_never_share_a_batch(batched):
    results = concurrently(CLIENTS, lambda i: predict(batched, IMAGES[i : i + 1], version=1 + i % 2))
    for i, (version, _, classes) in enumerate(results):
        assert version == 1 + i % 2
        assert classes == [CLASSES[i % 2].encode()]


# --- the command line -------------------------------------------------------------------------


def test_serve_batching_flags_reach_the_server(store, tmp_path, monkeypatch):
    """`serve` blocks until a signal; it is replaced by start_server + one request + stop, so
    the flags go through the real parser and cmd_serve into a real server."""
    (tmp_path / "b.config").write_text("max_batch_size { value: 4 }\nnum_batch_threads { value: 3 }\n")
    seen = {}

    def serve_once(source, options):
        handle = start_server(source, options, port=0, host="127.0.0.1", cache_dir=tmp_path / "cache")
        try:
            seen["parameters"] = handle.batcher.parameters
            seen["answer"] = predict(handle, IMAGES[:2])
        finally:
            handle.stop()

    monkeypatch.setattr(server_module, "serve", serve_once)
    code = main(
        [
            "serve",
            "--engine",
            "builtin",
            "--store",
            store.uri,
            "--enable-batching",
            "--batching-parameters-file",
            str(tmp_path / "b.config"),
            "--batch-timeout-micros",
            "2000",
        ]
    )

    assert code == 0
    assert seen["parameters"] == BatchingParameters(
        max_batch_size=4, batch_timeout_micros=2000, max_enqueued_batches=100, num_batch_threads=3
    )
    assert seen["answer"][0] == 2 and len(seen["answer"][2]) == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-batch-size", "8"], "--max-batch-size needs --enable-batching"),
        (["--enable-batching", "--max-batch-size", "0"], "max_batch_size must be at least 1"),
        (["--enable-batching", "--batching-parameters-file", "missing.config"], "cannot read batching"),
    ],
)
def test_serve_batching_flag_errors_are_one_line(flags, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--engine", "builtin", "--store", str(tmp_path), *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
