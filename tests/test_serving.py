"""The gRPC model server and its client, end to end: real TensorFlow, real gRPC, a local store."""

from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import CLASSES, SIZE, encoded, export_model, png, png_bomb, wait_for
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from medkfp import vocab
from medkfp.cli import main
from medkfp.model_repository import ModelRepository
from medkfp.s3server import free_port
from medkfp.serving import client
from medkfp.serving.server import RequestLimits, ServeError, serve, start_server
from medkfp.store import LocalStore

# The module's server refuses messages above this, and more images or pixels than these,
# so the limits are cheap to test.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
LIMITS = RequestLimits(max_image_pixels=200 * 200, max_batch=8)


IMAGES = [png("L", 20, 30, 0), png("RGB", 16, 16, 1), png("RGB", 40, 25, 2)]


def string_tensor(values: list[bytes]):
    return tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny classifier exported with the project's serving signatures, built once."""
    return export_model(tmp_path_factory.mktemp("export") / "m")


@pytest.fixture(scope="module")
def server(tmp_path_factory, export_dir):
    """Model "m" with versions 1 and 2, the stable label on 1 (so default != stable)."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    repo = ModelRepository(store)
    for _ in range(2):
        repo.publish("m", export_dir, {"class_names": CLASSES})
    config = repo.read_config()
    repo.config_entry(config, "m").version_labels[vocab.STABLE_LABEL] = 1
    repo.write_config(config)
    handle = start_server(
        store.uri,
        port=0,
        cache_dir=tmp_path_factory.mktemp("cache"),
        poll_interval=60,
        max_message_bytes=MAX_MESSAGE_BYTES,
        limits=LIMITS,
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def address(server):
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def channel(address):
    with grpc.insecure_channel(address) as channel:
        yield channel


@pytest.fixture(scope="module")
def prediction(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_service(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(images=IMAGES, version=None, label=None, inputs=None):
    """A Predict request for model "m"; `inputs` replaces the image_bytes built from images."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for key, tensor in (inputs or {vocab.INPUT_KEY: string_tensor(images)}).items():
        request.inputs[key].CopyFrom(tensor)
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


# --- raw TF Serving stubs ------------------------------------------------------------------


def test_predict_classifies_png_batch(prediction):
    response = prediction.Predict(predict_request(), timeout=30)

    probabilities = tf.make_ndarray(response.outputs[vocab.OUTPUT_PROBABILITIES])
    classes = tf.make_ndarray(response.outputs[vocab.OUTPUT_CLASSES])
    assert probabilities.shape == (len(IMAGES), len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert [c.decode() for c in classes] == [CLASSES[i] for i in probabilities.argmax(axis=1)]
    # Neither version nor label: the highest loaded version, not the stable one.
    assert response.model_spec.name == "m"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == vocab.SIGNATURE


def test_predict_by_version_and_label(prediction):
    by_version = prediction.Predict(predict_request(version=1), timeout=30)
    by_label = prediction.Predict(predict_request(label=vocab.STABLE_LABEL), timeout=30)

    assert by_version.model_spec.version.value == 1
    assert by_label.model_spec.version.value == 1


def test_predict_honours_output_filter(prediction):
    request = predict_request()
    request.output_filter.append(vocab.OUTPUT_CLASSES)

    response = prediction.Predict(request, timeout=30)

    assert list(response.outputs) == [vocab.OUTPUT_CLASSES]


def test_predict_other_signature(prediction):
    images = np.zeros((2, SIZE, SIZE, 3), np.float32)
    request = predict_request(inputs={"images": tf.make_tensor_proto(images)})
    request.model_spec.signature_name = "serving_float"

    response = prediction.Predict(request, timeout=30)

    assert tf.make_ndarray(response.outputs[vocab.OUTPUT_PROBABILITIES]).shape == (2, 3)
    assert response.model_spec.signature_name == "serving_float"


def test_metadata_lists_signature_defs(prediction):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "m"

    response = prediction.GetModelMetadata(request, timeout=30)

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    serving_default = signature_map.signature_def[vocab.SIGNATURE]
    image_bytes = serving_default.inputs[vocab.INPUT_KEY]
    assert image_bytes.dtype == tf.string.as_datatype_enum
    assert [d.size for d in image_bytes.tensor_shape.dim] == [-1]
    assert set(serving_default.outputs) == {vocab.OUTPUT_PROBABILITIES, vocab.OUTPUT_CLASSES}
    assert "serving_float" in signature_map.signature_def
    assert (response.model_spec.name, response.model_spec.version.value) == ("m", 2)


def test_status_reports_loaded_versions(model_service):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "m"

    every = model_service.GetModelStatus(request, timeout=30).model_version_status
    request.model_spec.version.value = 1
    one = model_service.GetModelStatus(request, timeout=30).model_version_status

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert sorted(s.version for s in every) == [1, 2]
    assert all(s.state == available and s.status.error_code == 0 for s in every)
    assert [s.version for s in one] == [1]


def test_unknown_model_version_or_label_is_not_found(prediction, model_service):
    unknown_model = predict_request()
    unknown_model.model_spec.name = "nope"
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"

    cases = [
        (prediction.Predict, unknown_model, "served models: m"),
        (prediction.Predict, predict_request(version=9), "loaded versions: 1, 2"),
        (prediction.Predict, predict_request(label="canary"), "labels: stable"),
        (model_service.GetModelStatus, status, "'nope' is not served"),
    ]
    for call, request, message in cases:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert message in error.details()


def test_bad_input_is_invalid_argument(prediction):
    floats = tf.make_tensor_proto(np.zeros(2, np.float32))
    cases = [
        (predict_request(images=[b"not an image"]), "cannot process the input"),
        (predict_request(inputs={"pixels": string_tensor(IMAGES)}), "expects inputs ['image_"),
        (predict_request(inputs={vocab.INPUT_KEY: floats}), "must be string, got float32"),
    ]
    for request, message in cases:
        error = rpc_error(prediction.Predict, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details()


def test_request_tensors_are_read_as_tf_reads_them():
    """The server reads request tensors with numpy: every encoding gives tf.make_ndarray's array."""
    from medkfp.serving.handlers import _to_ndarray
    from medkfp.serving.models import InputSpec

    strings = InputSpec.of(tf.TensorSpec([None], tf.string))
    floats = InputSpec.of(tf.TensorSpec([None, 2, 3], tf.float32))
    padded = tensor_pb2.TensorProto(dtype=tf.string.as_datatype_enum, string_val=[b"a", b"b"])
    padded.tensor_shape.dim.add().size = 4  # TF repeats the last value
    cases = [
        (string_tensor(IMAGES), strings),
        (tf.make_tensor_proto([], dtype=tf.string, shape=[0]), strings),
        (padded, strings),
        (tf.make_tensor_proto(np.arange(12, dtype=np.float32).reshape(2, 2, 3)), floats),
        (
            tensor_pb2.TensorProto(
                dtype=tf.float32.as_datatype_enum,
                float_val=[1.5] * 6,
                tensor_shape={"dim": [{"size": 1}, {"size": 2}, {"size": 3}]},
            ),
            floats,
        ),
    ]
    for proto, spec in cases:
        expected, array = tf.make_ndarray(proto), _to_ndarray(proto, spec)
        assert (array.dtype, array.shape) == (expected.dtype, expected.shape)
        assert array.tolist() == expected.tolist()


def test_request_above_size_limit_is_refused(prediction):
    error = rpc_error(prediction.Predict, predict_request(images=[b"x" * MAX_MESSAGE_BYTES]))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_image_and_batch_limits_are_invalid_argument(prediction):
    cases = [
        (
            predict_request(images=[IMAGES[0], png("L", 300, 200, 3)]),
            "image 1 of the request is 300x200 pixels, above this server's limit of 40000 pixels",
        ),
        (predict_request(images=IMAGES[:1] * 9), "holds 9 items, above this server's limit of 8"),
    ]
    for request, message in cases:
        error = rpc_error(prediction.Predict, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details()


def test_decompression_bomb_is_refused_before_decoding(prediction):
    bomb = png_bomb(10_000, 10_000)  # ~100 KB on the wire, 300 MB as pixels
    started = time.monotonic()

    error = rpc_error(prediction.Predict, predict_request(images=[bomb]))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000x10000 pixels" in error.details()
    assert time.monotonic() - started < 2.0


def test_graph_refusals_are_one_line(prediction):
    error = rpc_error(prediction.Predict, predict_request(images=[encoded("GIF")]))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "model m version 2 signature 'serving_default' cannot process the input: "
        "the image is not PNG, JPEG or BMP: send the file bytes of a PNG or JPEG image"
    )


def test_concurrent_requests(address):
    errors = []

    def work():
        try:
            for _ in range(3):
                assert client.predict(address, "m", IMAGES[:1])["version"] == 2
        except Exception as e:  # collected: an assert in a thread would go unnoticed
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_taken_port_is_a_clear_error(server, tmp_path):
    with pytest.raises(ServeError, match="in use"):
        start_server(str(tmp_path / "empty-store"), port=server.port)


# --- client ----------------------------------------------------------------------------------


def test_client_predict(address):
    latest = client.predict(address, "m", IMAGES)
    pinned = client.predict(address, "m", IMAGES, version=1)
    stable = client.predict(address, "m", IMAGES[:1], label=vocab.STABLE_LABEL)

    assert (latest["model"], latest["version"]) == ("m", 2)
    assert len(latest["predictions"]) == len(IMAGES)
    for prediction in latest["predictions"]:
        assert prediction["class"] in CLASSES
        assert len(prediction["probabilities"]) == len(CLASSES)
        assert sum(prediction["probabilities"]) == pytest.approx(1.0, rel=1e-5)
    assert pinned["version"] == 1
    assert stable["version"] == 1


def test_client_writes_the_tensor_tf_builds():
    # predict() fills its request field by field; the server must get what TF would send.
    for values in ([], IMAGES[:1], IMAGES):
        request = predict_pb2.PredictRequest()
        client.set_string_tensor(request.inputs[vocab.INPUT_KEY], values)
        assert request.inputs[vocab.INPUT_KEY] == string_tensor(values)
    with pytest.raises(TypeError):
        client.set_string_tensor(tensor_pb2.TensorProto(), ["not bytes"])


def test_client_batches_keep_one_version(address, monkeypatch):
    monkeypatch.setattr(client, "BATCH_IMAGES", 2)

    result = client.predict(address, "m", IMAGES * 2, label=vocab.STABLE_LABEL)

    assert result["version"] == 1
    assert len(result["predictions"]) == 2 * len(IMAGES)


def test_client_metadata_and_status(address):
    metadata = client.model_metadata(address, "m", version=1)
    status = client.model_status(address, "m")

    assert metadata["version"] == 1
    inputs = metadata["signatures"][vocab.SIGNATURE]["inputs"]
    assert inputs == {vocab.INPUT_KEY: {"dtype": "DT_STRING", "shape": [-1]}}
    assert status == [
        {"version": v, "state": "AVAILABLE", "error_code": "OK", "error_message": ""} for v in (1, 2)
    ]


def test_client_rest_response_shape(address):
    result = client.predict(address, "m", IMAGES[:2])

    rest = client.rest_response(result)

    assert list(rest) == ["predictions"]
    assert rest["predictions"] == [
        {"classes": p["class"], "probabilities": p["probabilities"]} for p in result["predictions"]
    ]


def test_client_retries_unavailable_with_backoff(monkeypatch):
    sleeps = []
    monkeypatch.setattr(client.time, "sleep", sleeps.append)

    with pytest.raises(client.ServingError, match="cannot reach model server") as info:
        client.predict("127.0.0.1:1", "m", IMAGES[:1], timeout=2, retries=3, backoff=0.1)

    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_client_does_not_retry_other_errors(address, monkeypatch):
    sleeps = []
    monkeypatch.setattr(client.time, "sleep", sleeps.append)

    with pytest.raises(client.ServingError):
        client.predict(address, "m", [b"not an image"], retries=3)

    assert sleeps == []


def test_predict_command_outputs(address, tmp_path, capsys):
    paths = []
    for i, image in enumerate(IMAGES):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(image)
    args = ["predict", "--server", address, "--model", "m", *map(str, paths)]
    capsys.readouterr()

    assert main([*args, "--label", vocab.STABLE_LABEL, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main([*args, "--rest-json", "--retries", "0"]) == 0
    rest = json.loads(capsys.readouterr().out)

    assert printed["version"] == 1
    assert [p["image"] for p in printed["predictions"]] == [str(p) for p in paths]
    assert list(rest) == ["predictions"] and len(rest["predictions"]) == len(IMAGES)
    assert set(rest["predictions"][0]) == {vocab.OUTPUT_CLASSES, vocab.OUTPUT_PROBABILITIES}


def test_predict_command_errors_are_one_line(address, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"not an image")
    capsys.readouterr()

    assert main(["predict", "--server", address, "--model", "m", str(tmp_path / "x.png")]) == 2

    err = capsys.readouterr().err
    assert err.startswith("medkfp: error: model m version 2 signature 'serving_default' cannot process")
    assert err.count("\n") == 1


def test_client_errors_are_one_line(address, monkeypatch):
    with pytest.raises(client.ServingError, match="'nope' is not served") as info:
        client.predict(address, "nope", IMAGES[:1])
    assert info.value.code == grpc.StatusCode.NOT_FOUND

    monkeypatch.setattr(client, "BACKOFF_SECONDS", 0.01)
    with pytest.raises(client.ServingError, match="cannot reach model server at 127.0.0.1:1:"):
        client.model_status("127.0.0.1:1", "m")


def test_normalize_address():
    assert client.normalize_address("localhost") == "localhost:8500"
    assert client.normalize_address("grpc://h:9000/") == "h:9000"
    assert client.normalize_address("::1") == "[::1]:8500"
    assert client.normalize_address("[::1]:9") == "[::1]:9"


# --- reloading -------------------------------------------------------------------------------


def available(address: str, model: str = "m") -> list[int]:
    return [s["version"] for s in client.model_status(address, model) if s["state"] == "AVAILABLE"]


def test_new_versions_are_picked_up_without_failing_requests(export_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="medkfp.serving.models")
    store = LocalStore(tmp_path / "store")
    repo = ModelRepository(store)
    repo.publish("m", export_dir, {"class_names": CLASSES})
    cache = tmp_path / "cache"
    with start_server(store.uri, port=0, cache_dir=cache, poll_interval=0.2) as handle:
        address = f"127.0.0.1:{handle.port}"
        seen, errors, done = set(), [], threading.Event()

        def keep_predicting():
            while not done.is_set():
                try:
                    seen.add(client.predict(address, "m", IMAGES[:1])["version"])
                except Exception as e:  # any failure during a swap is a bug
                    errors.append(e)

        worker = threading.Thread(target=keep_predicting)
        worker.start()
        try:
            assert client.predict(address, "m", IMAGES[:1])["version"] == 1
            repo.publish("m", export_dir, {"class_names": CLASSES})
            wait_for(lambda: client.predict(address, "m", IMAGES[:1])["version"] == 2)

            # models.config keeps two versions: publishing 3 drops version 1.
            repo.publish("m", export_dir, {"class_names": CLASSES})
            wait_for(lambda: available(address) == [2, 3])
        finally:
            done.set()
            worker.join()
        assert errors == []
        assert seen <= {1, 2, 3}
        assert not (cache / "m" / "1").exists()
        assert "loaded model m version 3" in caplog.text
        assert "unloaded model m version 1" in caplog.text
        assert client.model_status(address, "m", version=1)[0]["state"] == "END"

        # A version that cannot load, or a broken config, leaves the loaded set serving.
        broken = tmp_path / "broken"
        shutil.copytree(export_dir, broken)
        for data in (broken / "variables").glob("variables.data-*"):
            data.write_bytes(b"truncated")
        repo.publish("m", broken, {"class_names": CLASSES})
        wait_for(lambda: "cannot load model m version 4" in caplog.text)
        [failed] = client.model_status(address, "m", version=4)
        assert failed["state"] == "END" and failed["error_code"] == "UNKNOWN"
        assert failed["error_message"]
        store.put_text("models/models.config", "this is { not a config")
        wait_for(lambda: "cannot reload models.config" in caplog.text)
        assert available(address) == [2, 3]
        assert client.predict(address, "m", IMAGES[:1])["version"] == 3
        assert client.predict(address, "m", IMAGES[:1], label=vocab.STABLE_LABEL)["version"] == 3


def test_serve_blocks_until_stopped(export_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    ModelRepository(store).publish("m", export_dir, {"class_names": CLASSES})
    port = free_port()
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=serve,
        kwargs=dict(store_uri=store.uri, port=port, host="127.0.0.1", ready_event=ready, stop_event=stop),
    )
    thread.start()
    try:
        assert ready.wait(30)
        assert client.predict(f"127.0.0.1:{port}", "m", IMAGES[:1])["version"] == 1
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
