"""The evaluate step and `medkfp evaluate`: test-split metrics, the HTML report, external validation.

Metrics go through the serving signature; the report has curves, a heat map and tables; external
validation scores a published model."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from helpers import write_shapes_folder
from training_helpers import SHAPES

from medkfp.cli import main
from medkfp.components.evaluate.logic import evaluate
from medkfp.metrics import metrics_from_confusion_matrix
from medkfp.model_repository import ModelRepository
from medkfp.report import candidate_report
from medkfp.store import LocalStore

PNG = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


@pytest.fixture(scope="module")
def scored(trained_shapes, tmp_path_factory):
    _, _, dataset, model = trained_shapes
    report = tmp_path_factory.mktemp("report") / "report.html"
    return evaluate(dataset, model, report_path=report), report


def test_evaluate_scores_the_test_split(trained_shapes, scored):
    _, _, dataset, model = trained_shapes
    result, _ = scored
    metrics = result["metrics"]
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == dataset["splits"]["test"]["count"]
    assert metrics["class_names"] == ["circles", "plain", "stripes"]
    assert metrics["macro_f1"] >= 0.8, metrics
    assert set(metrics["per_class"]["plain"]) == {
        "precision",
        "recall",
        "f1",
        "specificity",
        "support",
        "roc_auc",
        "ci",
    }
    assert 0.5 < metrics["macro_roc_auc"] <= 1.0  # from the served probabilities
    assert result["history"] == model["history"] and result["model_uri"] == model["model_uri"]
    json.dumps(result)


def test_report_has_curves_heat_map_and_per_class_table(scored):
    result, report = scored
    html = report.read_text()
    pngs = embedded_pngs(html)
    # confusion matrix, reliability diagram, curves
    assert len(pngs) == 3 and all(p.startswith(PNG) for p in pngs)
    for name in SHAPES:
        assert f"<td>{name}</td>" in html
    assert "recall (sensitivity)" in html and "specificity" in html
    metrics = result["metrics"]
    assert f"{metrics['macro_f1']:.4f}" in html
    lo, hi = metrics["ci"]["macro_f1"]
    assert f"[{lo:.3f}, {hi:.3f}]" in html  # the interval beside its score
    lo, hi = metrics["per_class"]["plain"]["ci"]["recall"]
    assert f"[{lo:.3f}, {hi:.3f}]" in html
    assert "<h2>Calibration</h2>" in html and f"{metrics['calibration']['temperature']:.4f}" in html


def test_evaluation_carries_intervals_and_calibration_of_the_served_probabilities(scored):
    metrics = scored[0]["metrics"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = metrics["ci"][key]
        assert 0.0 <= lo <= metrics[key] <= hi <= 1.0
    for m in metrics["per_class"].values():
        for key in ("recall", "specificity"):
            assert m["ci"][key][0] <= m[key] <= m["ci"][key][1]
    calibration = metrics["calibration"]
    assert set(calibration) == {"ece", "ece_uncalibrated", "temperature"}  # DESIGN.md
    assert calibration["temperature"] > 0
    assert 0.0 <= calibration["ece"] <= 1.0 and 0.0 <= calibration["ece_uncalibrated"] <= 1.0
    bins = scored[0]["reliability"]["calibrated"]
    assert sum(b["count"] for b in bins) == sum(m["support"] for m in metrics["per_class"].values())


def test_report_of_a_published_confusion_matrix_without_history():
    metrics = metrics_from_confusion_matrix([[5, 1], [2, 8]], ["benign", "malignant"])
    html = candidate_report({"metrics": metrics}, title="Study <table>")
    assert "Study &lt;table&gt;" in html  # titles are escaped
    assert len(embedded_pngs(html)) == 1  # no training curves without a history


@pytest.fixture(scope="module")
def published(trained_shapes, tmp_path_factory):
    """The trained candidate published as version 1 of `shapes` in a repository of its own."""
    store, ingested, _, model = trained_shapes
    tmp = tmp_path_factory.mktemp("published")
    store.download_dir(model["model_key"], tmp / "saved_model")
    repository = ModelRepository(LocalStore(tmp / "repo"))
    metadata = {"dataset": ingested["dataset"], "class_names": SHAPES, "candidate": model["candidate"]}
    repository.publish("shapes", tmp / "saved_model", metadata)
    return tmp / "repo" / "models" / "shapes" / "1", tmp / "saved_model"


def test_external_validation_of_a_published_version(published, tmp_path, capsys):
    version_dir, _ = published
    source = write_shapes_folder(tmp_path / "elsewhere", per_class=5, seed=7)
    report = tmp_path / "external.html"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(version_dir),
                "--source",
                str(source),
                "--json",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "imagefolder"  # from the version's metadata
    assert result["counts"]["accepted"] == 15 and result["candidate"]["name"] == "simple-cnn-none"
    metrics = result["metrics"]
    assert metrics["class_names"] == SHAPES
    assert np.array(metrics["confusion_matrix"]).sum() == 15
    assert metrics["accuracy"] >= 0.6, metrics
    assert "External validation of" in report.read_text() and len(embedded_pngs(report.read_text())) == 1


def test_external_validation_of_a_bare_saved_model_prints_a_table(published, tmp_path, capsys):
    _, saved_model = published
    source = write_shapes_folder(tmp_path / "elsewhere", per_class=4, seed=8)
    assert main(["evaluate", "--model", str(saved_model), "--source", str(source)]) == 0
    out = capsys.readouterr().out
    assert "12 images scored, 0 rejected" in out
    assert all(re.search(rf"^  {name} +precision", out, re.M) for name in SHAPES)


def test_external_validation_errors_are_one_line(published, tmp_path, capsys):
    version_dir, saved_model = published
    source = write_shapes_folder(tmp_path / "other", per_class=4, seed=9)
    (source / "plain").rename(source / "squares")
    assert main(["evaluate", "--model", str(version_dir), "--source", str(source)]) == 2
    error = capsys.readouterr().err
    assert "class(es) squares that the model" in error and error.count("\n") == 1
    # without metadata the source names the classes, and their number must match
    (source / "squares" / "plain-0.png").rename(source / "plain-0.png")
    for path in (source / "squares").iterdir():
        path.unlink()
    (source / "squares").rmdir()
    assert main(["evaluate", "--model", str(saved_model), "--source", str(source)]) == 2
    assert "predicts 3 classes but the data has 2" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--source", str(source)]) == 2
    assert "is not a SavedModel" in capsys.readouterr().err
