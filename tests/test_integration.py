"""End to end: `medkfp run` through kfp.local and a loopback S3 server, then `medkfp serve`.

The server answers Predict / GetModelMetadata / GetModelStatus to a client built only from the
tensorflow-serving-api stubs."""

from __future__ import annotations

import builtins
import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from helpers import write_shapes_folder
from serving_helpers import stub_predict
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from medkfp import vocab
from medkfp.cli import main
from medkfp.serving.client import predict
from medkfp.serving.server import start_server
from medkfp.store import open_store
from medkfp.synth import synth_covid

pytestmark = pytest.mark.integration

SUMMARY_KEYS = {"dataset", "counts", "candidates", "selected", "selection_metric", "pushed", "push_reason"}


def run_cli(*args: str) -> None:
    assert main(list(args)) == 0


def check_summary(summary: dict, dataset: str, class_names) -> None:
    assert SUMMARY_KEYS <= set(summary)
    assert summary["dataset"] == dataset
    counts = summary["counts"]
    assert counts["found"] == counts["accepted"] + counts["rejected"]
    assert counts["train"] + counts["val"] + counts["test"] == counts["accepted"]
    assert [c["name"] for c in summary["candidates"]] == [
        "simple-cnn-none",
        "simple-cnn-undersample",
        "simple-cnn-oversample",
    ]
    for candidate in summary["candidates"]:
        metrics = candidate["metrics"]
        assert metrics["class_names"] == list(class_names)
        assert np.array(metrics["confusion_matrix"]).sum() == counts["test"]
        assert set(metrics["per_class"]) == set(class_names)
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):  # DESIGN.md's added keys
            assert metrics["ci"][key][0] <= metrics[key] <= metrics["ci"][key][1]
        assert set(metrics["calibration"]) == {"ece", "ece_uncalibrated", "temperature"}
    assert summary["selection_metric"] == "macro_f1"
    best = max(c["metrics"]["macro_f1"] for c in summary["candidates"])
    selected = next(c for c in summary["candidates"] if c["name"] == summary["selected"])
    assert selected["metrics"]["macro_f1"] == best


def check_ui_reports(pipeline_root, candidates: int, decision: str) -> None:
    """The HTML artifacts the KFP UI shows: a report per candidate and one comparison table."""
    reports = sorted(p for p in pipeline_root.rglob("report") if p.is_file())
    assert len(reports) == candidates
    for report in reports:
        html = report.read_text()
        assert html.count("data:image/png;base64,") == 3  # heat map, reliability diagram, curves
        assert "95% CI" in html and "<h2>Calibration</h2>" in html
    comparisons = [p for p in pipeline_root.rglob("comparison") if p.is_file()]
    assert len(comparisons) == 1 and decision in comparisons[0].read_text()
    assert "\u2713 selected" in comparisons[0].read_text()


def run_covid(tmp_path, pipeline_root: str) -> None:
    """The integration run of the COVID set in tmp_path/data, its summary to tmp_path/summary.json."""
    run_cli(
        "run",
        "--dataset",
        vocab.COVID,
        "--source",
        str(tmp_path / "data"),
        "--epochs",
        "12",
        "--image-size",
        "48",
        "--summary",
        str(tmp_path / "summary.json"),
        "--pipeline-root",
        str(tmp_path / pipeline_root),
    )


def test_covid_run_through_s3_then_served_over_grpc(tmp_path, s3_env, capsys):
    synth_covid(tmp_path / "data", per_class=40, size=96, seed=1)
    synth_covid(tmp_path / "unseen", per_class=2, size=96, seed=99)
    summary_path = tmp_path / "summary.json"
    run_covid(tmp_path, "kfp")
    summary = json.loads(summary_path.read_text())
    check_summary(summary, vocab.COVID, vocab.COVID_CLASSES)
    assert summary["counts"]["accepted"] == 160
    assert summary["pushed"] == {
        "model_name": vocab.COVID,
        "version": 1,
        "uri": f"s3://medkfp/models/{vocab.COVID}/1",
    }
    assert summary["push_reason"] == "no champion yet"
    assert all(c["model_uri"].startswith("s3://medkfp/runs/") for c in summary["candidates"])
    assert summary["champion"] is None and summary["gate"]["push"] is True
    for candidate in summary["candidates"]:
        assert candidate["metrics"]["macro_roc_auc"] is not None
        assert candidate["config"]["epochs"] == 12 and candidate["devices"]
    check_ui_reports(tmp_path / "kfp", 3, f"Pushed {vocab.COVID} v1")

    root = tmp_path / "unseen" / vocab.COVID_ROOT
    unseen = [(p.read_bytes(), c) for c in vocab.COVID_CLASSES for p in (root / c / "images").glob("*.png")]
    images = [data for data, _ in unseen]
    server = start_server("s3://medkfp", port=0)
    try:
        address = f"127.0.0.1:{server.port}"
        # the project's client
        result = predict(address, vocab.COVID, images)
        assert result["version"] == 1
        for p in result["predictions"]:
            assert p["class"] in vocab.COVID_CLASSES
            assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        right = sum(p["class"] == truth for p, (_, truth) in zip(result["predictions"], unseen))
        assert right >= 6, result

        # a client made only of tensorflow-serving-api stubs gets the same answers
        with grpc.insecure_channel(address) as channel:
            for spec in ({"version": 1}, {"label": vocab.STABLE_LABEL}, {}):
                response = stub_predict(channel, vocab.COVID, images, **spec)
                probabilities = tf.make_ndarray(response.outputs[vocab.OUTPUT_PROBABILITIES])
                classes = tf.make_ndarray(response.outputs[vocab.OUTPUT_CLASSES])
                assert probabilities.shape == (8, 4)
                np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
                assert [c.decode() for c in classes] == [p["class"] for p in result["predictions"]]
                assert response.model_spec.version.value == 1

            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            request.model_spec.name = vocab.COVID
            metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            metadata.metadata["signature_def"].Unpack(signatures)
            serving = signatures.signature_def[vocab.SIGNATURE]
            assert serving.inputs[vocab.INPUT_KEY].dtype == tf.string.as_datatype_enum
            assert set(serving.outputs) == {vocab.OUTPUT_PROBABILITIES, vocab.OUTPUT_CLASSES}

            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = vocab.COVID
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
            assert [(s.version, s.state) for s in status.model_version_status] == [
                (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            ]

        # and `medkfp predict --json` prints the same classes
        capsys.readouterr()
        paths = [str(p) for c in vocab.COVID_CLASSES for p in (root / c / "images").glob("*.png")]
        run_cli("predict", "--server", address, "--model", vocab.COVID, "--json", *paths)
        printed = json.loads(capsys.readouterr().out)
        assert [p["class"] for p in printed["predictions"]] == [p["class"] for p in result["predictions"]]
    finally:
        server.stop()

    # external validation of the pushed version on the unseen set agrees with the server
    run_cli(
        "evaluate",
        "--model",
        f"s3://medkfp/models/{vocab.COVID}/1",
        "--source",
        str(tmp_path / "unseen"),
        "--json",
        "--report",
        str(tmp_path / "external.html"),
    )
    external = json.loads(capsys.readouterr().out)
    assert external["dataset"] == vocab.COVID and external["counts"]["accepted"] == 8
    assert round(external["metrics"]["accuracy"] * 8) == right
    assert (tmp_path / "external.html").is_file()

    # the same run again trains the same model: the champion gate keeps v1
    run_covid(tmp_path, "kfp2")
    again = json.loads(summary_path.read_text())
    assert again["pushed"] is None
    assert again["push_reason"].startswith("not better than champion v1")
    selected = next(c for c in summary["candidates"] if c["name"] == summary["selected"])
    assert again["champion"]["version"] == 1
    assert again["gate"]["champion"] == selected["metrics"]["macro_f1"]
    assert again["gate"]["challenger"] < again["gate"]["champion"] + again["gate"]["min_delta"]


def test_imagefolder_run_on_a_local_store(tmp_path):
    folder = write_shapes_folder(tmp_path / "Shapes", per_class=30, size=32)
    (folder / "plain" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    store = tmp_path / "store"
    summary_path = tmp_path / "summary.json"
    original_print = builtins.print
    run_cli(
        "run",
        "--dataset",
        vocab.IMAGEFOLDER,
        "--source",
        str(folder),
        "--image-size",
        "32",
        "--epochs",
        "12",
        "--store",
        str(store),
        "--summary",
        str(summary_path),
        "--pipeline-root",
        str(tmp_path / "kfp"),
    )
    assert builtins.print is original_print  # kfp.local's indenting print() does not leak
    summary = json.loads(summary_path.read_text())
    check_summary(summary, vocab.IMAGEFOLDER, ["circles", "plain", "stripes"])
    assert summary["counts"]["rejected"] == 1
    assert summary["pushed"]["model_name"] == "shapes"

    server = start_server(str(store), port=0)
    try:
        images = [(folder / c / f"{c}-0.png").read_bytes() for c in ("circles", "plain", "stripes")]
        result = predict(f"127.0.0.1:{server.port}", "shapes", images)
        assert [p["class"] for p in result["predictions"]] == ["circles", "plain", "stripes"]
    finally:
        server.stop()


def test_grid_file_with_weights_from_the_store_and_gate_options(tmp_path, s3_env):
    """A grid file mixing a frozen MobileNetV2 (backbone weights from s3://) with a class-weighted
    small CNN, selected by balanced accuracy behind a recall floor: every run-level option
    travels through kfp.local into the steps."""
    import keras

    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg"
    )
    backbone.save_weights(tmp_path / "mobilenetv2.weights.h5")
    open_store("s3://medkfp").put_file("weights/mobilenetv2.weights.h5", tmp_path / "mobilenetv2.weights.h5")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "- {architecture: mobilenetv2, balancing: oversample, batch_size: 8, dense_units: 32}\n"
        "- {architecture: simple-cnn, balancing: class_weight, batch_size: 8, learning_rate: 0.003}\n"
    )
    folder = write_shapes_folder(tmp_path / "Shapes", per_class=12, size=32)
    summary_path = tmp_path / "summary.json"
    weights = "s3://medkfp/weights/{architecture}.weights.h5"
    run_cli(
        "run",
        "--dataset",
        vocab.IMAGEFOLDER,
        "--source",
        str(folder),
        "--grid",
        str(grid),
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--weights",
        weights,
        "--freeze-backbone",
        "--selection-metric",
        "balanced_accuracy",
        "--min-recall",
        "circles=0.0",
        "--summary",
        str(summary_path),
        "--pipeline-root",
        str(tmp_path / "kfp"),
    )
    summary = json.loads(summary_path.read_text())
    configs = {c["name"]: c["config"] for c in summary["candidates"]}
    assert configs["mobilenetv2-oversample"]["weights"] == weights
    assert configs["mobilenetv2-oversample"]["freeze_backbone"] is True
    small = configs["simple-cnn-class_weight"]
    assert (small["weights"], small["freeze_backbone"]) == ("none", False)  # no backbone to load
    assert {(c["epochs"], c["image_size"]) for c in configs.values()} == {(2, 32)}
    assert summary["image_size"] == 32 and summary["selection_metric"] == "balanced_accuracy"
    best = max(summary["candidates"], key=lambda c: c["metrics"]["balanced_accuracy"])
    assert summary["selected"] == best["name"]
    assert summary["gate"]["min_recall"]["circles"]["floor"] == 0.0
    assert summary["pushed"]["version"] == 1 and summary["push_reason"] == "no champion yet"
    check_ui_reports(tmp_path / "kfp", 2, "Pushed shapes v1")
