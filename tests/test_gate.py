"""The fair champion gate: the served champion scored on this run's test split, with paired statistics.

The champion is scored with the evaluate code; the paired statistics are a bootstrap interval of
the difference and McNemar's exact test. Also the --require-significant rule, class-list checks,
and two runs in a row on different data."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from scipy import stats
from training_helpers import SHAPES, prepare_shapes

from medkfp import paired_stats, vocab
from medkfp.components.evaluate.logic import evaluate
from medkfp.components.push.logic import champion_gate, push
from medkfp.imaging import export_serving_model
from medkfp.metrics import classification_metrics
from medkfp.model_repository import ModelRepository
from medkfp.store import LocalStore

MODEL = "shapes-gate"


# --- paired statistics ---------------------------------------------------------------------------


def predictions(seed: int, n: int = 300, classes: int = 3, right: float = 0.8):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    return truth, np.where(rng.random(n) < right, truth, rng.integers(0, classes, n))


@pytest.mark.parametrize("metric", paired_stats.LABEL_METRICS)
def test_batched_metrics_equal_the_evaluate_steps_metrics(metric):
    truth, predicted = predictions(1)
    predicted[predicted == 2] = 1  # a class never predicted: zero precision, as scikit-learn
    expected = classification_metrics(truth, predicted, ["a", "b", "c"])[metric]
    matrices = paired_stats._confusions(truth[None], predicted[None], 3)
    assert paired_stats.metric_from_confusions(matrices, metric)[0] == pytest.approx(expected)


def test_bootstrap_interval_is_seeded_and_brackets_the_observed_difference():
    truth, good = predictions(2, right=0.9)
    _, worse = predictions(3, right=0.6)
    worse = np.where(np.random.default_rng(4).random(len(truth)) < 0.6, truth, worse)
    first = paired_stats.compare(truth, good, worse, 3, "macro_f1", seed=7)
    again = paired_stats.compare(truth, good, worse, 3, "macro_f1", seed=7)
    assert first == again and first["resamples"] >= 1000
    low, high = first["ci"]
    assert low < first["difference"] < high and low > 0
    observed = (
        classification_metrics(truth, good, ["a", "b", "c"])["macro_f1"]
        - classification_metrics(truth, worse, ["a", "b", "c"])["macro_f1"]
    )
    assert first["difference"] == pytest.approx(observed)
    # McNemar: the discordant images only, a two-sided binomial test at 1/2
    only_good = int(((good == truth) & (worse != truth)).sum())
    only_worse = int(((worse == truth) & (good != truth)).sum())
    assert (first["challenger_only_right"], first["champion_only_right"]) == (only_good, only_worse)
    assert first["p_value"] == pytest.approx(stats.binomtest(only_good, only_good + only_worse).pvalue)
    assert first["p_value"] < 0.001


def test_identical_models_differ_by_nothing():
    truth, predicted = predictions(5)
    same = paired_stats.compare(truth, predicted, predicted, 3, "balanced_accuracy")
    assert same["ci"] == [0.0, 0.0] and same["difference"] == 0.0
    assert same["discordant"] == 0 and same["p_value"] == 1.0


def test_roc_auc_difference_uses_probabilities_and_bad_settings_are_refused():
    truth, predicted = predictions(6, n=120)
    rng = np.random.default_rng(0)
    p = rng.random((120, 3))
    p[np.arange(120), truth] += 1.0
    p /= p.sum(axis=1, keepdims=True)
    flat = np.full_like(p, 1 / 3)
    result = paired_stats.compare(
        truth,
        predicted,
        predicted,
        3,
        "macro_roc_auc",
        n_resamples=1000,
        challenger_probabilities=p,
        champion_probabilities=flat,
    )
    auc = classification_metrics(truth, p.argmax(axis=1), ["a", "b", "c"], p)["macro_roc_auc"]
    assert result["difference"] == pytest.approx(auc - 0.5) and result["ci"][0] > 0
    with pytest.raises(ValueError, match="at least 1000"):
        paired_stats.bootstrap_difference(truth, predicted, predicted, 3, n_resamples=100)
    with pytest.raises(ValueError, match="needs both models' probabilities"):
        paired_stats.bootstrap_difference(truth, predicted, predicted, 3, "macro_roc_auc")


# --- the gate's rule -----------------------------------------------------------------------------


def challenger(macro_f1: float) -> dict:
    return {"metrics": {"macro_f1": macro_f1, "class_names": SHAPES, "per_class": {}}}


def rescored_champion(macro_f1: float, classes=SHAPES) -> dict:
    per_class = {c: {"support": 10} for c in classes}
    return {
        "version": 4,
        "class_names": list(classes),
        "metrics": {"macro_f1": 0.99},
        "rescored": {"macro_f1": macro_f1, "class_names": list(classes), "per_class": per_class},
    }


PAIRED = {"ci": [-0.01, 0.09], "p_value": 0.2, "images": 30}


def test_the_gate_compares_with_the_rescored_champion_not_its_recorded_score():
    gate = champion_gate(challenger(0.9), rescored_champion(0.8), "macro_f1", 0.005, paired=PAIRED)
    assert gate["push"] and gate["champion"] == 0.8 and gate["delta"] == pytest.approx(0.1)
    assert gate["difference_ci"] == [-0.01, 0.09] and gate["p_value"] == 0.2
    assert gate["compared_on"] == "this run's test split (30 images)"
    assert "on the same 30 images" in gate["reason"]


def test_require_significant_needs_the_interval_above_zero():
    gate = champion_gate(
        challenger(0.9), rescored_champion(0.8), "macro_f1", 0.005, paired=PAIRED, require_significant=True
    )
    assert not gate["push"]
    assert gate["reason"].startswith("better than champion v4 but not significantly")
    significant = {**PAIRED, "ci": [0.02, 0.09]}
    assert champion_gate(
        challenger(0.9),
        rescored_champion(0.8),
        "macro_f1",
        0.005,
        paired=significant,
        require_significant=True,
    )["push"]
    # a significant difference still has to clear --min-delta
    assert not champion_gate(
        challenger(0.9), rescored_champion(0.8), "macro_f1", 0.2, paired=significant, require_significant=True
    )["push"]


def test_a_champion_with_other_classes_is_refused_with_a_clear_reason():
    gate = champion_gate(challenger(0.9), rescored_champion(0.1, ["a", "b"]), "macro_f1", 0.0)
    assert not gate["push"]
    assert gate["reason"].startswith("champion v4 predicts classes a, b but this run's data has circles")
    assert "another --name" in gate["reason"]


# --- two runs in a row, on different data ----------------------------------------------------------


def constant_model(export_dir, favour: int, size: int = 32):
    """A SavedModel with medkfp's signatures that predicts class SHAPES[favour] for every image."""
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(SHAPES), activation="softmax"),
        ]
    )
    bias = np.zeros(len(SHAPES), np.float32)
    bias[favour] = 5.0
    model.layers[-1].set_weights([np.zeros((3, len(SHAPES)), np.float32), bias])
    return export_serving_model(model, SHAPES, size, export_dir)


def evaluation_of(dataset: dict, store, model_key: str, name: str) -> dict:
    """The evaluate step's result for a SavedModel already in the run's store."""
    candidate = {**vocab.Candidate("simple-cnn", "none").to_dict(), "name": name}
    trained = {
        "candidate": candidate,
        "model_key": model_key,
        "model_uri": store.uri_for(model_key),
        "history": {},
        "devices": ["CPU:0"],
    }
    return evaluate(dataset, trained)


@pytest.fixture(scope="module")
def two_runs(trained_shapes, tmp_path_factory):
    """Run 1 pushes a weak model (always 'plain'); run 2, on fewer and partly edited images,
    brings the trained simple-cnn as challenger. Both runs share one store."""
    trained_store, _, _, trained = trained_shapes
    root = tmp_path_factory.mktemp("gate")
    store = LocalStore(root / "store")
    first = prepare_shapes(root / "run-1", str(store.root), per_class=30, run_id="run-1")
    weak_key = vocab.candidate_key("run-1", "constant", "model")
    store.upload_dir(constant_model(root / "constant", SHAPES.index("plain")), weak_key)
    weak = evaluation_of(first.dataset, store, weak_key, "constant-plain")
    run1 = push([weak], first.ingested, first.dataset, str(store.root), model_name=MODEL)

    # new data: 24 images per class instead of 30; the random draws shift, so many are redrawn
    second_root = root / "run-2"
    second = prepare_shapes(second_root, str(store.root), per_class=24, run_id="run-2")
    good_key = vocab.candidate_key("run-2", "trained", "model")
    trained_store.download_dir(trained["model_key"], root / "trained")
    store.upload_dir(root / "trained", good_key)
    good = evaluation_of(second.dataset, store, good_key, "simple-cnn-none")
    return store, first, second, run1, good


def test_first_run_pushes_and_records_its_data_snapshot(two_runs):
    store, first, _, run1, _ = two_runs
    assert run1["pushed"]["version"] == 1 and run1["push_reason"] == "no champion yet"
    assert run1["gate"]["difference_ci"] is None and run1["data_changes"]["since"] is None
    metadata = ModelRepository(store).metadata(MODEL, 1)
    assert metadata["snapshot"] == first.ingested["snapshot"]
    assert metadata["snapshot"]["files"] == 90
    card = store.get_text(f"models/{MODEL}/1/MODEL_CARD.md")
    assert f"snapshot {first.ingested['snapshot']['id']}: 90 files" in card


def test_second_run_rescores_the_champion_on_its_own_split_and_pushes_when_significant(two_runs, tmp_path):
    store, _, second, _, good = two_runs
    summary = push(
        [good],
        second.ingested,
        second.dataset,
        str(store.root),
        model_name=MODEL,
        require_significant=True,
        comparison_path=tmp_path / "push.html",
    )
    json.dumps(summary)
    test_count = summary["counts"]["test"]
    assert test_count == second.dataset["splits"]["test"]["count"]
    rescored = summary["champion"]["rescored"]
    # the champion's full metrics on THIS run's test split
    assert sum(m["support"] for m in rescored["per_class"].values()) == test_count
    assert np.asarray(rescored["confusion_matrix"]).sum() == test_count
    assert rescored["per_class"]["plain"]["recall"] == 1.0  # it always says "plain"
    gate = summary["gate"]
    assert gate["champion"] == rescored["macro_f1"] and gate["challenger"] == good["metrics"]["macro_f1"]
    assert gate["delta"] == pytest.approx(gate["challenger"] - gate["champion"])
    low, high = gate["difference_ci"]
    assert low <= gate["delta"] <= high
    # the decision follows from the statistics: better by min_delta, interval above zero
    assert (gate["push"], low > 0, gate["delta"] >= gate["min_delta"]) == (True, True, True)
    assert 0 <= gate["p_value"] < 0.05
    assert summary["pushed"]["version"] == 2 and summary["push_reason"].startswith("better than champion v1")
    # what changed since the data that trained the champion: 6 images fewer per class
    changes = summary["data_changes"]
    assert changes["since"]["version"] == 1 and changes["removed"] == 18 and changes["added"] == 0
    assert {c: v["removed"] for c, v in changes["per_class"].items()} == dict.fromkeys(SHAPES, 6)
    page = (tmp_path / "push.html").read_text()
    assert "Challenger vs champion on the same images" in page and "McNemar exact p-value" in page
    assert "champion v1" in page and page.count("<img") >= 2


def test_the_same_model_again_is_not_pushed_and_the_reason_shows_the_statistics(two_runs):
    store, _, second, _, good = two_runs
    summary = push([good], second.ingested, second.dataset, str(store.root), model_name=MODEL)
    gate = summary["gate"]
    assert summary["pushed"] is None and gate["champion"] == gate["challenger"]
    assert gate["difference_ci"] == [0.0, 0.0] and gate["p_value"] == 1.0
    assert summary["push_reason"].startswith("not better than champion v2")
    assert "difference 95% CI [+0.0000, +0.0000], McNemar p=1" in summary["push_reason"]
    assert summary["data_changes"]["note"] == "same images as the champion's data"


def test_a_served_model_with_other_classes_is_not_rescored_and_not_replaced(two_runs, tmp_path):
    store, _, second, _, good = two_runs
    other = tmp_path / "other"
    keras_model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    export_serving_model(keras_model, ["cats", "dogs"], 8, other)
    ModelRepository(store).publish(
        "shapes-other",
        other,
        {
            "dataset": "imagefolder",
            "class_names": ["cats", "dogs"],
            "metrics": {"macro_f1": 0.5},
            "candidate": {"name": "x"},
            "run_id": "elsewhere",
        },
    )
    summary = push([good], second.ingested, second.dataset, str(store.root), model_name="shapes-other")
    assert summary["pushed"] is None and summary["champion"]["rescored"] is None
    assert summary["push_reason"].startswith("champion v1 predicts classes cats, dogs but this run's data")


@pytest.mark.integration
def test_two_pipeline_runs_in_a_row_on_new_data(tmp_path):
    """`medkfp run` twice through kfp.local on one store, the second on new images with
    --require-significant: its summary rescores the champion on its own test split."""
    from helpers import write_shapes_folder

    from medkfp.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("- {architecture: simple-cnn, balancing: none, batch_size: 8, learning_rate: 0.003}\n")
    store = str(tmp_path / "store")
    common = [
        "--dataset",
        vocab.IMAGEFOLDER,
        "--name",
        MODEL,
        "--grid",
        str(grid),
        "--image-size",
        "32",
        "--store",
        store,
    ]
    first = write_shapes_folder(tmp_path / "week-1", per_class=12, seed=1)
    assert (
        main(
            [
                "run",
                *common,
                "--source",
                str(first),
                "--epochs",
                "1",
                "--summary",
                str(tmp_path / "1.json"),
                "--pipeline-root",
                str(tmp_path / "kfp-1"),
            ]
        )
        == 0
    )
    second = write_shapes_folder(tmp_path / "week-2", per_class=30, seed=2)
    assert (
        main(
            [
                "run",
                *common,
                "--source",
                str(second),
                "--epochs",
                "12",
                "--require-significant",
                "--summary",
                str(tmp_path / "2.json"),
                "--pipeline-root",
                str(tmp_path / "kfp-2"),
            ]
        )
        == 0
    )
    run1, run2 = (json.loads((tmp_path / f"{i}.json").read_text()) for i in (1, 2))
    assert run1["pushed"]["version"] == 1
    rescored = run2["champion"]["rescored"]
    assert sum(m["support"] for m in rescored["per_class"].values()) == run2["counts"]["test"]
    gate = run2["gate"]
    assert gate["champion"] == rescored["macro_f1"] and gate["require_significant"] is True
    low, _ = gate["difference_ci"]
    assert 0 <= gate["p_value"] <= 1
    expected = gate["delta"] >= gate["min_delta"] and low > 0
    assert (run2["pushed"] is not None) == expected == gate["push"], run2["push_reason"]
    assert run2["data_changes"]["since"]["version"] == 1 and run2["data_changes"]["changed"] > 0
